"""unlearn_lens: machine unlearning by selective pruning on TransformerLens models.

Record how strongly every MLP neuron and attention neuron fires on a *forget*
dataset and on a *retain* dataset, score each unit by how much more it matters
for forget than for retain, prune the most forget-specific units step by step,
and measure that forget performance collapses while retain performance holds
(Pochinkov & Schoots, 2024, arXiv:2403.01267).

Typical use::

    import unlearn_lens as ul

    model = ul.load_model("demo")
    run = ul.selective_prune(model, ul.load_texts("demo:code"), ul.load_texts("demo:prose"),
                             ul.PruneConfig(ff_frac=0.05, n_steps=5))
    print(run.summary())
"""

from __future__ import annotations

__version__ = "0.1.0"

from unlearn_lens import viz  # figures; plotly is imported on first use
from unlearn_lens.data import TokenSet, load_texts, tokenize_texts
from unlearn_lens.demo import demo_texts
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.evaluate import EvalResult, evaluate
from unlearn_lens.masks import Masks, random_masks, random_masks_like, select
from unlearn_lens.models import ModelDims, attn_hook_name, load_model, mlp_hook_name, model_dims
from unlearn_lens.pipeline import PruneConfig, PruneRun, StepRecord, selective_prune, separability_area
from unlearn_lens.pruning import PruningHandle, add_pruning, prune_weights_, pruned, save_pruned
from unlearn_lens.report import write_report
from unlearn_lens.scoring import SCORING_METHODS, Scores, head_scores, load_scores, save_scores, score
from unlearn_lens.stats import ActivationStats, RunningStats, collect_stats

__all__ = [
    "SCORING_METHODS",
    "ActivationStats",
    "EvalResult",
    "Masks",
    "ModelDims",
    "PruneConfig",
    "PruneRun",
    "PruningHandle",
    "RunningStats",
    "Scores",
    "StepRecord",
    "TokenSet",
    "UnlearnLensError",
    "__version__",
    "add_pruning",
    "attn_hook_name",
    "collect_stats",
    "demo_texts",
    "evaluate",
    "head_scores",
    "load_model",
    "load_scores",
    "load_texts",
    "mlp_hook_name",
    "model_dims",
    "prune_weights_",
    "pruned",
    "random_masks",
    "random_masks_like",
    "save_pruned",
    "save_scores",
    "score",
    "select",
    "selective_prune",
    "separability_area",
    "tokenize_texts",
    "viz",
    "write_report",
]
