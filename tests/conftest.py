"""Shared fixtures: tiny random models of several architectures, built locally, and small texts."""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

CODE = [
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i * i)\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "import os\npath = os.path.join(root, name)\nif os.path.exists(path):\n    os.remove(path)\n",
    "while n > 1:\n    n = n // 2 if n % 2 == 0 else 3 * n + 1\n",
    "values = [x ** 2 for x in data if x > 0]\nresult = sum(values) / len(values)\n",
    "try:\n    f = open(name)\nexcept OSError as exc:\n    raise RuntimeError(exc)\n",
    "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
] * 6
PROSE = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Selective pruning removes the neurons that matter most for one task.",
    "A long walk in the morning clears the mind before a busy day of work.",
    "Researchers study how language models store facts about the world.",
    "The library opens at nine and closes late on Thursdays and Fridays.",
    "She wrote a letter to her grandmother about the summer in the mountains.",
    "Rain fell over the city all night, and the streets were quiet at dawn.",
    "Good documentation explains what a tool does and how to use it well.",
] * 6


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    torch.manual_seed(0)


def _tokenizer(vocab_size: int = 320):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(CODE + PROSE, vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok._tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    """A byte-level BPE tokenizer trained here, saved and reloaded as a Hugging Face tokenizer."""
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("tokenizer")
    _tokenizer().save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def _save(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory, tokenizer) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    cfg = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_inner=64,
        activation_function="relu",
        bos_token_id=0,
        eos_token_id=0,
    )
    return _save(GPT2LMHeadModel(cfg), tokenizer, tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="session")
def neox_dir(tmp_path_factory, tokenizer) -> Path:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(2)
    cfg = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        rotary_pct=0.25,
        bos_token_id=0,
        eos_token_id=0,
        hidden_act="gelu",
    )
    return _save(GPTNeoXForCausalLM(cfg), tokenizer, tmp_path_factory.mktemp("neox"))


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory, tokenizer) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=False,
    )
    return _save(LlamaForCausalLM(cfg), tokenizer, tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def gpt2(gpt2_dir):
    import unlearn_lens as ul

    return ul.load_model(gpt2_dir, device="cpu")


@pytest.fixture(scope="session")
def neox(neox_dir):
    import unlearn_lens as ul

    return ul.load_model(neox_dir, device="cpu")


@pytest.fixture(scope="session")
def llama(llama_dir):
    import unlearn_lens as ul

    return ul.load_model(llama_dir, device="cpu")


# TransformerLens configs of the tiny native and legacy models: GPT-2-like by default,
# Llama-like (gated SiLU MLP, grouped-query attention, rotary, RMSNorm) with GATED.
GATED = dict(
    n_key_value_heads=2,
    d_mlp=48,
    act_fn="silu",
    gated_mlp=True,
    normalization_type="RMS",
    positional_embedding_type="rotary",
    rotary_dim=8,
)


def _tl_config(tokenizer, **overrides) -> dict:
    return (
        dict(
            n_layers=2,
            d_model=32,
            n_ctx=64,
            d_head=8,
            n_heads=4,
            d_mlp=64,
            d_vocab=len(tokenizer),
            act_fn="relu",
            normalization_type="LN",
            seed=0,
        )
        | overrides
    )


def _native(tokenizer, **overrides):
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_native(_tl_config(tokenizer, **overrides), tokenizer=tokenizer)


@pytest.fixture(scope="session")
def native_gpt2(tokenizer):
    """TL-native GPT-2-like model: LayerNorm, learned positions, ReLU MLP, biases."""
    return _native(tokenizer)


@pytest.fixture(scope="session")
def native_gated(tokenizer):
    """TL-native Llama-like model: gated SiLU MLP, grouped-query attention, rotary, RMSNorm."""
    return _native(tokenizer, **GATED)


try:  # TransformerLens 3.x still ships the legacy HookedTransformer; 4.x does not
    from transformer_lens import HookedTransformer as _HookedTransformer
except ImportError:
    _HookedTransformer = None


def _legacy(tokenizer, **overrides):
    from transformer_lens import HookedTransformerConfig

    model = _HookedTransformer(HookedTransformerConfig(**_tl_config(tokenizer, **overrides)), tokenizer=tokenizer)
    with torch.no_grad():  # non-zero output biases, so folding means into them is exercised
        for block in model.blocks:
            block.mlp.b_out.normal_(0, 0.1)
            block.attn.b_O.normal_(0, 0.1)
    return model.eval()


@pytest.fixture(scope="session")
def legacy_gpt2(tokenizer):
    """Legacy HookedTransformer (TransformerLens 3.x), GPT-2-like."""
    return _legacy(tokenizer)


@pytest.fixture(scope="session")
def legacy_gated(tokenizer):
    """Legacy HookedTransformer, Llama-like: gated SiLU MLP, grouped-query attention, rotary, RMSNorm."""
    return _legacy(tokenizer, **GATED)


LEGACY_FIXTURES = ["legacy_gpt2", "legacy_gated"] if _HookedTransformer is not None else []
MODEL_FIXTURES = ["gpt2", "neox", "llama", "native_gpt2", "native_gated", *LEGACY_FIXTURES]


@pytest.fixture(params=MODEL_FIXTURES)
def any_model(request):
    return request.getfixturevalue(request.param)


def file_module(path: Path, name: str):
    """The Python file ``path`` (a script, a docs extension) imported as module ``name``, outside the package.

    The module is registered in ``sys.modules`` while it runs, as dataclasses look their module up there.
    """
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def chromium() -> str:
    """The headless Chromium the browser tests drive: ``$CHROMIUM``, or ``chromium`` on the PATH.

    Without one the browser tests fail under CI (``$CI`` set) and are skipped elsewhere, saying why.
    """
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None and Path("/usr/bin/chromium").exists():
        path = "/usr/bin/chromium"
    if path is None:
        message = (
            "headless Chromium is needed to check the pages in a browser: install it "
            "(Debian: apt-get install -y chromium) or point $CHROMIUM at the binary"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def our_hooks(model) -> int:
    """Forward hooks currently registered on the model's hook points."""
    points = {id(hp): hp for hp in model.hook_dict.values()}  # aliases share one HookPoint
    return sum(len(hp._forward_hooks) for hp in points.values())


@pytest.fixture
def interrupt_at_step(monkeypatch):
    """``interrupt_at_step(n)`` makes the pruning loop raise KeyboardInterrupt as it evaluates step n.

    ``monkeypatch.undo()`` in the test disarms it.
    """
    import unlearn_lens.pipeline as pipeline

    def arm(n: int) -> None:
        real, calls = pipeline._prune_and_evaluate, []

        def interrupting(*args, **kwargs):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(pipeline, "_prune_and_evaluate", interrupting)

    return arm
