"""unlearn_lens: machine unlearning by selective pruning on TransformerLens models.

Record how strongly every MLP neuron and attention neuron fires on a *forget*
dataset and on a *retain* dataset, score each unit by how much more it matters
for forget than for retain, prune the most forget-specific units step by step,
and measure that forget performance collapses while retain performance holds
(Pochinkov & Schoots, 2024, arXiv:2403.01267).

Typical use::

    import unlearn_lens as ul

    model = ul.load_model("demo")
    forget, retain = ul.load_texts("demo:code"), ul.load_texts("demo:prose")
    run = ul.selective_prune(model, forget, retain, ul.PruneConfig(mlp_frac=0.05, n_steps=5))
    run.baseline = ul.random_baseline(model, forget, retain, run)
    print(run.retain_at_forget(0.5), run.baseline.retain_at_forget(0.5))

The stages compose by nesting, the TransformerLens way::

    with ul.pruned(model, run.masks, run.ablation):
        stats = ul.collect_stats(model, forget)
        result = ul.evaluate(model, retain)

A run's ablation is one value, ``run.ablation`` (an :class:`Ablation`); by hand,
``ul.pruned(model, masks, ablation="mean", means=retain_stats)`` builds the same.
"""

from __future__ import annotations

from unlearn_lens._version import __version__

# models and data
from unlearn_lens.models import UNIT_KINDS, ModelDims, hook_name, load_model
from unlearn_lens.data import TokenSet, token_budgets, tokenize_texts
from unlearn_lens.sources import load_texts

# statistics, scores and masks
from unlearn_lens.stats import ActivationStats, collect_stats
from unlearn_lens.masks import Masks
from unlearn_lens.scoring import Scores, random_masks, score, select

# ablation, pruning and evaluation
from unlearn_lens.ablations import Ablation, ActivationHistogram, ActivationSample, collect_ablation_values
from unlearn_lens.pruning import prune_weights_, pruned, save_pruned
from unlearn_lens.evaluate import EvalResult, evaluate

# the iterative loop and its record
from unlearn_lens.results import PruneConfig, PruneRun
from unlearn_lens.pipeline import random_baseline, selective_prune

# looking at results
from unlearn_lens.report import cards, viz, write_report

from unlearn_lens.errors import UnlearnLensError

__all__ = [
    "__version__",
    # models and data
    "UNIT_KINDS",
    "ModelDims",
    "hook_name",
    "load_model",
    "TokenSet",
    "load_texts",
    "tokenize_texts",
    "token_budgets",
    # statistics, scores and masks
    "ActivationStats",
    "collect_stats",
    "Masks",
    "Scores",
    "random_masks",
    "score",
    "select",
    # ablation, pruning and evaluation
    "Ablation",
    "ActivationHistogram",
    "ActivationSample",
    "collect_ablation_values",
    "prune_weights_",
    "pruned",
    "save_pruned",
    "EvalResult",
    "evaluate",
    # the iterative loop and its record
    "PruneConfig",
    "PruneRun",
    "random_baseline",
    "selective_prune",
    # looking at results
    "cards",
    "viz",
    "write_report",
    # errors
    "UnlearnLensError",
]
