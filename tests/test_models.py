"""Loading models of several architectures and checking their hooks."""

from __future__ import annotations

import pytest
import torch
from conftest import CODE, LEGACY_FIXTURES, PROSE

import unlearn_lens as ul
from unlearn_lens.models import attn_hook_name, mlp_hook_name


@pytest.mark.parametrize(
    "fixture, dims",
    [
        ("gpt2", ul.ModelDims(2, 64, 4, 8)),
        ("neox", ul.ModelDims(2, 64, 4, 8)),
        ("llama", ul.ModelDims(2, 48, 4, 8)),
        ("native_gpt2", ul.ModelDims(2, 64, 4, 8)),
        ("native_gated", ul.ModelDims(2, 48, 4, 8)),
        *((name, ul.ModelDims(2, 64 if name == "legacy_gpt2" else 48, 4, 8)) for name in LEGACY_FIXTURES),
    ],
)
def test_unit_shapes_read_from_hooks(request, fixture, dims):
    model = request.getfixturevalue(fixture)
    assert ul.ModelDims.of(model) == dims
    assert mlp_hook_name(1) == "blocks.1.mlp.hook_post"
    assert attn_hook_name(0) == "blocks.0.attn.hook_z"


def test_bridge_passes_through(gpt2):
    assert ul.load_model(gpt2) is gpt2


if LEGACY_FIXTURES:  # TransformerLens 3.x only (.ci/run also runs these files under 3.9)

    @pytest.mark.parametrize("fixture", LEGACY_FIXTURES)
    def test_legacy_hooked_transformer_passes_through(request, fixture):
        model = request.getfixturevalue(fixture)
        assert ul.load_model(model) is model
        tokens = ul.tokenize_texts(model.tokenizer, CODE[:4], seq_len=24)
        config = ul.PruneConfig(
            mlp_frac=0.1,
            attn_frac=0.05,
            n_steps=2,
            ablation="mean",
            collect_tokens=300,
            eval_tokens=300,
            seq_len=24,
            stop_at_forget=None,
        )
        run = ul.selective_prune(model, CODE[:24], CODE[24:48], config)
        assert int(run.masks.mlp.sum()) == 2 * round(0.1 * run.masks.mlp.numel())
        assert int(run.masks.attn.sum()) == 2 * round(0.05 * run.masks.attn.numel())
        assert run.history[0].forget.n_tokens == 300
        assert torch.isfinite(model(tokens.tokens)).all()


def test_loaded_model_runs_on_text(gpt2):
    tokens = ul.tokenize_texts(gpt2.tokenizer, CODE[:2], seq_len=16)
    logits = gpt2(tokens.tokens)
    assert logits.shape == (*tokens.tokens.shape, len(gpt2.tokenizer))
    assert torch.isfinite(logits).all()


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ul.UnlearnLensError, match="does not exist"):
        ul.load_model(tmp_path / "no-such-model")


def test_directory_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(ul.UnlearnLensError, match="no config.json"):
        ul.load_model(tmp_path)


def test_unknown_dtype(gpt2_dir):
    with pytest.raises(ul.UnlearnLensError, match="unknown dtype"):
        ul.load_model(gpt2_dir, dtype="float13")


class _NoZ:
    """A model-like object whose hook_dict lacks the attention hook."""

    def __init__(self, model):
        self.cfg = model.cfg
        self.hook_dict = {k: v for k, v in model.hook_dict.items() if "attn.hook_z" not in k}


def test_missing_hook_names_the_hook_and_model(gpt2):
    with pytest.raises(ul.UnlearnLensError, match=r"no hook 'blocks\.0\.attn\.hook_z'"):
        ul.load_model(_NoZ(gpt2))


def test_not_a_transformerlens_model():
    with pytest.raises(ul.UnlearnLensError, match="not a TransformerLens model"):
        ul.load_model(torch.nn.Linear(2, 2))


def test_a_device_map_spreads_the_layers_and_everything_still_runs(gpt2, gpt2_dir, tmp_path):
    """Layers placed by a device map (one block offloaded to disk): statistics, evaluation and hooks as before."""
    import inspect

    from transformer_lens.model_bridge import TransformerBridge

    # TransformerLens 4 offloads to disk; 3.9 has device maps but no offload folder
    disk = "offload_folder" in inspect.signature(TransformerBridge.boot_transformers).parameters
    device_map = {
        "transformer.wte": "cpu",
        "transformer.wpe": "cpu",
        "transformer.h.0": "cpu",
        "transformer.h.1": "disk" if disk else "cpu",
        "transformer.ln_f": "cpu",
        "lm_head": "cpu",
    }
    folder = {"offload_folder": tmp_path / "offload"} if disk else {}
    spread = ul.load_model(gpt2_dir, device_map=device_map, **folder)
    assert getattr(spread.original_model, "hf_device_map", device_map) == device_map
    tokens = ul.tokenize_texts(gpt2.tokenizer, CODE, seq_len=16, max_tokens=300)
    a = ul.collect_stats(gpt2, tokens, progress=False)
    b = ul.collect_stats(spread, tokens, progress=False)
    c = ul.collect_stats(spread, tokens, progress=False, fused=True)  # the in-place reduction, as on CUDA
    for kind in ("mlp", "attn"):
        for other in (b, c):
            assert torch.allclose(getattr(a, kind).mean, getattr(other, kind).mean, rtol=1e-5, atol=1e-7)
            assert torch.allclose(getattr(a, kind).std, getattr(other, kind).std, rtol=1e-5, atol=1e-7)
    prose = ul.tokenize_texts(gpt2.tokenizer, PROSE, seq_len=16, max_tokens=300)
    masks = ul.select(ul.score(a, ul.collect_stats(gpt2, prose, progress=False)), mlp_frac=0.2)
    with ul.pruned(gpt2, masks, ablation="mean", means=a):
        x = ul.evaluate(gpt2, tokens, progress=False)
    with ul.pruned(spread, masks, ablation="mean", means=a):
        y = ul.evaluate(spread, tokens, progress=False)
    assert x.n_tokens == y.n_tokens and x.top1 == y.top1 and x.loss == pytest.approx(y.loss, rel=1e-5)
    if disk:
        with pytest.raises(ul.UnlearnLensError, match="offloaded .* prune with hooks"):
            ul.prune_weights_(spread, masks)
    with pytest.raises(ul.UnlearnLensError, match="device or device_map, not both"):
        ul.load_model(gpt2_dir, device="cpu", device_map="auto")


def test_device_map_on_the_command_line(gpt2_dir, tmp_path, capsys):
    import json

    from unlearn_lens.cli import main

    for name, texts in (("code", CODE), ("prose", PROSE)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts * 3))
    args = [
        "prune",
        "--model",
        str(gpt2_dir),
        "--forget",
        str(tmp_path / "code.jsonl"),
        "--retain",
        str(tmp_path / "prose.jsonl"),
        "--n-steps",
        "1",
        "--collect-tokens",
        "300",
        "--eval-tokens",
        "300",
        "--seq-len",
        "32",
        "--mlp-frac",
        "0.1",
        "--baseline",
        "none",
        "--quiet",
        "--no-report",
    ]
    placement = json.dumps({"transformer": "cpu", "lm_head": "cpu"})
    assert main([*args, "--device-map", placement, "--out", str(tmp_path / "spread")]) == 0
    assert main([*args, "--device", "cpu", "--out", str(tmp_path / "one")]) == 0
    spread, one = ul.PruneRun.load(tmp_path / "spread"), ul.PruneRun.load(tmp_path / "one")
    assert spread.masks == one.masks and spread.final.forget.top1 == one.final.forget.top1
    with pytest.raises(SystemExit) as exc:  # argparse's own error line and status
        main([*args, "--device-map", "{not json", "--out", str(tmp_path / "bad")])
    assert exc.value.code == 2 and "--device-map: not a JSON object" in capsys.readouterr().err
