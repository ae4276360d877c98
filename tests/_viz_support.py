"""Shared inputs of test_viz.py and test_report.py: a tiny random GPT-2 and two real pruning runs.

Built once per test session (the first test module that asks builds it) and cached here,
so that both modules look at the same runs: a selective run and its random baseline
(``run.baseline``), made with :func:`unlearn_lens.selective_prune` and
:func:`unlearn_lens.random_baseline`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

torch.set_num_threads(1)

NAMES = ["total", "count", "items", "value", "result", "index", "buffer", "config"]
CODE = [
    f"def {name}_{i}(x, y):\n    if x > {i}:\n        return x * {i} + y\n    return [{name} for {name} in range(y)]\n"
    for i, name in enumerate(NAMES * 5)
] + [f"for i in range({i}):\n    print(i, {NAMES[i % 8]}[i])\n" for i in range(40)]
PROSE = [
    f"The {who} walked slowly to the old market on day {i}, where she bought fresh bread and some apples."
    for i, who in enumerate(["teacher", "farmer", "doctor", "painter", "sailor", "writer", "baker", "child"] * 5)
] + [f"In the morning the {w} river was calm, and the birds sang over the quiet fields." for w in NAMES * 5]


@dataclass
class Tiny:
    """A tiny model, its texts and a selective run with its random baseline (also ``run.baseline``)."""

    model_dir: Path
    model: Any
    code: list[str]
    prose: list[str]
    config: Any
    run: Any
    random_run: Any

    @property
    def runs(self) -> dict[str, Any]:
        return {"selective": self.run, "random": self.random_run}


_CACHE: dict[str, Tiny] = {}


def build_model_dir(path: Path) -> Path:
    """Save a random 2-layer GPT-2 (ReLU MLP, d_mlp 64, 4 heads of 8) with a locally trained tokenizer."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(CODE + PROSE, vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok._tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(tokenizer),
        n_layer=2,
        n_embd=32,
        n_head=4,
        n_inner=64,
        activation_function="relu",
        n_positions=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    GPT2LMHeadModel(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny(tmp_path_factory: Any) -> Tiny:
    """The shared tiny model and runs (built on first use)."""
    if "tiny" not in _CACHE:
        import unlearn_lens as ul

        model_dir = build_model_dir(tmp_path_factory.mktemp("viz-gpt2"))
        model = ul.load_model(str(model_dir), device="cpu")
        config = ul.PruneConfig(mlp_frac=0.1, attn_frac=0.02, n_steps=2, collect_tokens=500, eval_tokens=500)
        run = ul.selective_prune(model, CODE, PROSE, config, progress=False)
        random_run = ul.random_baseline(model, CODE, PROSE, run, progress=False)
        run.baseline = random_run
        _CACHE["tiny"] = Tiny(model_dir, model, CODE, PROSE, config, run, random_run)
    return _CACHE["tiny"]


def forget_falling(run: Any, levels: tuple[float, ...] = (0.8, 0.3)) -> Any:
    """A copy of ``run`` whose forget top-1 after step i is ``levels[i - 1]`` times its unpruned value.

    The tiny model is untrained, so pruning it never halves forget top-1 and the headline
    point (retain where forget falls to 50 %) is never reached. This copy keeps everything
    else as measured (retain, masks, scores, the baseline) and only moves forget top-1, so
    that the headline is reached between steps 1 and 2.
    """
    f0 = run.base.forget.top1
    history = [run.history[0]] + [
        dataclasses.replace(s, forget=dataclasses.replace(s.forget, top1=f0 * level))
        for s, level in zip(run.history[1:], levels, strict=True)
    ]
    return dataclasses.replace(run, history=history)


def interpolated_retain(run: Any, level: float = 0.5) -> float | None:
    """Relative retain top-1 where relative forget top-1 first falls to ``level``, computed here from the steps."""
    f0, r0 = run.base.forget.top1, run.base.retain.top1
    points = [(s.forget.top1 / f0, s.retain.top1 / r0) for s in run.history]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 > level >= x1:
            return y0 + (y1 - y0) * (x0 - level) / (x0 - x1)
    return None
