"""Shared inputs of test_viz.py and test_report.py: a tiny random GPT-2 and two real pruning runs.

Built once per test session (the first test module that asks builds it) and cached here,
so that both modules look at the same runs.
"""

from __future__ import annotations

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
    """A tiny model, its texts and a selective run with its random baseline."""

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
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok._tokenizer, bos_token="<|endoftext|>",
                                        eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tokenizer), n_layer=2, n_embd=32, n_head=4, n_inner=64,
                     activation_function="relu", n_positions=64, bos_token_id=tokenizer.bos_token_id,
                     eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny(tmp_path_factory: Any) -> Tiny:
    """The shared tiny model and runs (built on first use)."""
    if "tiny" not in _CACHE:
        import unlearn_lens as ul

        model_dir = build_model_dir(tmp_path_factory.mktemp("viz-gpt2"))
        model = ul.load_model(str(model_dir), device="cpu")
        config = ul.PruneConfig(ff_frac=0.1, attn_frac=0.02, n_steps=2, collect_tokens=500, eval_tokens=500)
        run = ul.selective_prune(model, CODE, PROSE, config, progress=False)
        random_run = ul.selective_prune(model, CODE, PROSE, config, baseline="random", reference=run, progress=False)
        _CACHE["tiny"] = Tiny(model_dir, model, CODE, PROSE, config, run, random_run)
    return _CACHE["tiny"]
