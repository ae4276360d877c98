"""``compat="taker"``: the reference implementation's rows, statistics, scores, units per step and heads.

The reference formulas are written out here from their definitions (sample variance in
the field called std, rms = sqrt(var_s^2 + mean^2), statistics cast to the model's dtype,
freq as an integer count over the token count in float32), and compared with what the
package computes from its streamed statistics.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CODE, PROSE, _tokenizer

import unlearn_lens as ul
from unlearn_lens.compat import COMPAT_MODES, rules, units_per_step
from unlearn_lens.data import as_token_set, as_token_sets, token_budgets
from unlearn_lens.models import attn_hook_name, mlp_hook_name, model_dims
from unlearn_lens.pipeline import run_tokens
from unlearn_lens.report.tables import summary_table_text
from unlearn_lens.scoring import Scores, head_scores

EPS = {"mlp": 1e-3, "attn": 1e-4}


def _counted_activations(model, tokens: ul.TokenSet) -> dict[str, torch.Tensor]:
    """Every MLP and attention activation at the counted positions.

    Returns:
        ``{"mlp": [n layer d_mlp], "attn": [n layer head d_head]}``, n the counted positions.
    """
    dims = model_dims(model)
    seen: dict[str, list[torch.Tensor]] = {"mlp": [None] * dims.n_layers, "attn": [None] * dims.n_layers}

    def keep(kind, layer):
        def fn(activation, hook):
            seen[kind][layer] = activation.detach()

        return fn

    hooks = [(mlp_hook_name(l), keep("mlp", l)) for l in range(dims.n_layers)]
    hooks += [(attn_hook_name(l), keep("attn", l)) for l in range(dims.n_layers)]
    model.run_with_hooks(tokens.tokens, fwd_hooks=hooks)
    return {kind: torch.stack([a[tokens.valid] for a in acts], dim=1) for kind, acts in seen.items()}


def _reference_importance(x: torch.Tensor, method: str, dtype: torch.dtype) -> torch.Tensor:
    """One dataset's importance by the reference's definitions, from the activations ``x`` ``[n, *units]``."""
    n = x.shape[0]
    x64 = x.double()  # the reference accumulates in float64, then casts each summary to the model's dtype
    if method == "freq":
        return (x > 0).to(torch.int32).sum(0) / n  # an int32 count over an int: float32
    if method == "abs":
        positive = (x64 * (x64 > 0)).mean(0).to(dtype)
        negative = (x64 * (x64 <= 0)).mean(0).to(dtype)
        return positive + negative.abs()
    if method == "sqrt":
        return x64.abs().sqrt().mean(0).to(dtype)
    var_s = x64.var(0, correction=1).to(dtype)
    if method == "std":
        return var_s
    assert method == "rms"
    return torch.sqrt(var_s**2 + x64.mean(0).to(dtype) ** 2)


def _reference_scores(forget: torch.Tensor, retain: torch.Tensor, method: str, eps: float) -> torch.Tensor:
    dtype = torch.float32  # the tiny model's dtype
    if method == "mean":
        return (forget.double().mean(0).to(dtype) - retain.double().mean(0).to(dtype)).abs()
    return _reference_importance(forget, method, dtype) / (_reference_importance(retain, method, dtype) + eps)


@pytest.fixture(scope="module")
def reference_data(gpt2):
    tokens = {
        name: as_token_set(gpt2, texts, seq_len=32, max_tokens=400, compat="taker")
        for name, texts in (("forget", CODE), ("retain", PROSE))
    }
    stats = {name: ul.collect_stats(gpt2, t, progress=False) for name, t in tokens.items()}
    acts = {name: _counted_activations(gpt2, t) for name, t in tokens.items()}
    return stats, acts


@pytest.mark.parametrize("method", ["abs", "freq", "rms", "std", "sqrt", "mean"])
def test_reference_scores_equal_a_hand_computation(reference_data, method):
    stats, acts = reference_data
    assert stats["forget"].meta["dtype"] == "float32"
    got = ul.score(stats["forget"], stats["retain"], scoring=method, compat="taker")
    assert got.config["compat"] == "taker" and got.config["dtype"] == "float32"
    for kind in ("mlp", "attn"):
        expected = _reference_scores(acts["forget"][kind], acts["retain"][kind], method, EPS[kind])
        assert got.of(kind).dtype == torch.float64
        torch.testing.assert_close(got.of(kind).float(), expected, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["std", "rms"])
def test_textbook_std_and_rms_are_not_the_references(reference_data, method):
    stats, acts = reference_data
    textbook = ul.score(stats["forget"], stats["retain"], scoring=method)
    expected = _reference_scores(acts["forget"]["mlp"], acts["retain"]["mlp"], method, EPS["mlp"])
    assert not torch.allclose(textbook.mlp.float(), expected, rtol=1e-3)
    assert "compat" not in textbook.config


def test_reference_scores_are_refused_for_wanda(reference_data):
    stats, _ = reference_data
    with pytest.raises(ul.UnlearnLensError, match="no scoring 'wanda'"):
        ul.score(stats["forget"], stats["retain"], scoring="wanda", compat="taker", output_norms={})
    with pytest.raises(ul.UnlearnLensError, match="compat must be one of"):
        ul.score(stats["forget"], stats["retain"], compat="reference")


def test_rows_hold_one_text_each_with_no_added_bos(gpt2):
    texts = CODE[:6]
    shipped = [gpt2.tokenizer(t, add_special_tokens=False)["input_ids"][:32] for t in texts]
    assert gpt2.tokenizer(texts[0])["input_ids"][0] == gpt2.tokenizer.bos_token_id  # the loaded tokenizer adds one
    tokens = as_token_set(gpt2, texts, seq_len=32, compat="taker")
    assert len(tokens) == len(texts) and tokens.n_tokens == sum(len(ids) for ids in shipped)
    for row, valid, ids in zip(tokens.tokens, tokens.valid, shipped):
        assert bool(valid[0]) and int(valid.sum()) == len(ids)  # the first position counts
        assert row[: len(ids)].tolist() == ids  # no BOS in front
    stats = ul.collect_stats(gpt2, texts, seq_len=32, max_tokens=None, compat="taker", progress=False)
    assert stats.n_tokens == sum(len(ids) for ids in shipped)
    packed = as_token_set(gpt2, texts, seq_len=32)  # the default: BOS-led rows, BOS not counted
    assert not packed.valid[:, 0].any() and bool((packed.tokens[:, 0] == gpt2.tokenizer.bos_token_id).all())


def test_rows_keep_and_count_a_prefix_the_tokenizer_ships_with(tmp_path):
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    tok = _tokenizer()  # a prefix like OPT's </s>, added by the tokenizer itself
    tok._tokenizer.post_processor = TemplateProcessing(single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)])
    tok.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    texts = PROSE[:5]
    lengths = [len(tok(t)["input_ids"]) for t in texts]
    (tokens,) = token_budgets(tok, texts, [None], seq_len=64, compat="taker")
    assert tokens.n_tokens == sum(lengths) and bool(tokens.valid[:, 0].all())
    assert tokens.tokens[:, 0].tolist() == [0] * len(texts)


def test_rows_are_cut_to_the_row_length_and_budgets_share_no_text(gpt2):
    texts = [" ".join(CODE)] + PROSE[:4]  # one text longer than a row
    collect, held = as_token_sets(gpt2, texts, [40, None], seq_len=32, compat="taker")
    assert collect.n_tokens == 40 and collect.valid[0].all() and int(collect.valid[1].sum()) == 8
    assert collect.spans[0].truncated and held.spans[0].first == 2  # the cut text is used by no other budget
    assert held.n_tokens == sum(
        min(len(gpt2.tokenizer(t, add_special_tokens=False)["input_ids"]), 32) for t in texts[2:]
    )


def _scores(mlp: torch.Tensor, attn: torch.Tensor, compat: str = "none") -> Scores:
    config = {} if compat == "none" else {"compat": compat, "dtype": "float32"}
    return Scores(mlp.double(), attn.double(), config=config)


@pytest.mark.parametrize("frac", [0.019, 0.05, 0.29, 0.5])
def test_units_per_step_are_floored(frac):
    gen = torch.Generator().manual_seed(0)
    mlp, attn = torch.rand(2, 50, generator=gen), torch.rand(2, 4, 8, generator=gen)
    for compat, count in (("taker", lambda n: int(frac * n)), ("none", lambda n: round(frac * n))):
        masks = ul.select(_scores(mlp, attn), mlp_frac=frac, attn_frac=frac, compat=compat)
        assert masks.n_mlp == count(100) == units_per_step(frac, 100, compat) and masks.n_attn == count(64)
        heads = ul.select(_scores(mlp, attn), mlp_frac=frac, attn_frac=frac, heads=True, compat=compat)
        assert heads.n_attn == 8 * count(8)
        per_layer = ul.select(_scores(mlp, attn), mlp_frac=frac, per_layer=True, compat=compat)
        assert per_layer.mlp_counts() == [count(50)] * 2
    assert int(0.29 * 100) == 28  # the float product, floored as the reference floors it
    assert ul.select(_scores(mlp, attn, "taker"), mlp_frac=0.29).n_mlp == 28  # the scores' own rules by default


def test_units_already_pruned_are_not_counted_again():
    mlp = torch.arange(100.0).view(2, 50)
    first = ul.select(_scores(mlp, torch.zeros(2, 4, 8)), mlp_frac=0.019, compat="taker")
    second = ul.select(_scores(mlp, torch.zeros(2, 4, 8)), mlp_frac=0.019, exclude=first, compat="taker")
    assert first.mlp.view(-1).nonzero().view(-1).tolist() == [99] and second.mlp.view(-1)[98]


def test_head_aggregation_follows_the_references_mode_names():
    attn = torch.tensor([[[1.0, 2.0, 4.0, 9.0], [3.0, 3.0, 3.0, 3.0]]])  # one layer, two heads of four neurons
    assert head_scores(attn, "mean", "taker").tolist() == [[3.0, 3.0]]  # its "mean": the median, interpolated
    assert head_scores(attn, "median", "taker").tolist() == [[4.0, 3.0]]  # its "median": the mean
    assert head_scores(attn, "mean").tolist() == [[4.0, 3.0]] and head_scores(attn, "median").tolist() == [[2.0, 3.0]]
    chosen = ul.select(_scores(torch.zeros(1, 4), attn, "taker"), mlp_frac=0, attn_frac=0.5, heads=True)
    assert chosen.attn[0, 0].all() and not chosen.attn[0, 1].any()  # tie at 3.0: the lower index
    textbook = ul.select(_scores(torch.zeros(1, 4), attn), mlp_frac=0, attn_frac=0.5, heads=True, head_agg="median")
    assert textbook.attn[0, 1].all() and not textbook.attn[0, 0].any()
    drawn = ul.viz.head_map(_scores(torch.zeros(1, 4), attn, "taker"), agg="mean").data[0]  # as the scores were ranked
    assert torch.tensor(drawn.z).allclose(torch.tensor([[3.0, 3.0]]).log10().double())


def test_config_records_and_checks_the_mode():
    cfg = ul.PruneConfig(compat="taker", scoring="std")
    assert cfg.to_dict()["compat"] == "taker" and ul.PruneConfig.from_dict(cfg.to_dict()) == cfg
    old = {k: v for k, v in ul.PruneConfig().to_dict().items() if k != "compat"}  # a run from before the field
    assert ul.PruneConfig.from_dict(old).compat == "none" and set(COMPAT_MODES) == {"none", "taker"}
    with pytest.raises(ul.UnlearnLensError, match="compat must be one of"):
        ul.PruneConfig(compat="paper")
    with pytest.raises(ul.UnlearnLensError, match="no scoring 'wanda'"):
        ul.PruneConfig(compat="taker", attn_scoring="wanda")
    assert not rules("none").text_per_row and rules("taker").reference_scores


# --- the loop, on the demo model -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo():
    model = ul.load_model("demo", device="cpu")
    forget, retain = ul.load_texts("demo:code"), ul.load_texts("demo:prose")
    budgets = [1500, 1000]
    rows = {
        name: ul.TokenSet.concat(as_token_sets(model, texts, budgets, compat="taker"))
        for name, texts in (("forget", forget), ("retain", retain))
    }
    return model, forget, retain, rows


def _run(demo, scoring: str, compat: str, data: str = "rows") -> ul.PruneRun:
    model, forget, retain, rows = demo
    cfg = ul.PruneConfig(
        mlp_frac=0.0625,  # 256 of 4096 MLP neurons and 64 of 1024 attention neurons: floor and round agree
        attn_frac=0.0625,
        n_steps=1,
        scoring=scoring,
        collect_tokens=1500,
        eval_tokens=1000,
        batch_size=16,
        compat=compat,
    )
    forget_texts, retain_texts = (rows["forget"], rows["retain"]) if data == "rows" else (forget, retain)
    return ul.selective_prune(model, forget_texts, retain_texts, cfg, progress=False)


def test_the_loop_under_compat_records_it_and_counts_every_position(demo, tmp_path):
    run = _run(demo, "abs", "taker", data="texts")  # from texts: packed one text per row
    assert run.config.compat == "taker" and run.scores.config["compat"] == "taker"
    assert run.forget_stats.n_tokens == 1500 and run.final.n_mlp == 256 and run.final.n_attn == 64
    run.save(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "results.json").read_text())["run"]["config"]["compat"] == "taker"
    assert ul.PruneRun.load(tmp_path / "run").config.compat == "taker"
    assert "compat (rules)" in summary_table_text(run) and "compat" not in summary_table_text(_run(demo, "abs", "none"))


def test_a_dataset_of_few_long_texts_is_refused_with_the_reason(demo):
    model, forget, retain, _ = demo  # 25 files a side: under the reference's rules, one row of each
    cfg = ul.PruneConfig(collect_tokens=20_000, eval_tokens=20_000, compat="taker")
    with pytest.raises(ul.UnlearnLensError, match="each text is one row of at most seq_len tokens"):
        ul.selective_prune(model, forget, retain, cfg, progress=False)


# Which masks the reference's rules change, on the same rows: abs, freq and sqrt have the same
# definitions in both modes (float32 rounding aside), so their masks agree; std and rms do not.
# Attention neurons under std agree as well: var_f / (var_r + eps) ranks units as the square of
# std_f / std_r does wherever eps is small next to the variances, as it is for them (1e-4).
@pytest.mark.parametrize(
    ("scoring", "same_mlp", "same_attn"),
    [("abs", True, True), ("freq", True, True), ("sqrt", True, True), ("std", False, True), ("rms", False, False)],
)
def test_masks_differ_from_the_textbook_ones_only_where_the_definitions_do(demo, scoring, same_mlp, same_attn):
    textbook, reference = _run(demo, scoring, "none"), _run(demo, scoring, "taker")  # the same rows and positions
    assert reference.forget_stats.n_tokens == textbook.forget_stats.n_tokens == 1500
    assert (reference.final.n_mlp, reference.final.n_attn) == (textbook.final.n_mlp, textbook.final.n_attn)
    assert torch.equal(reference.masks.mlp, textbook.masks.mlp) == same_mlp
    assert torch.equal(reference.masks.attn, textbook.masks.attn) == same_attn


# --- the command line ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def code_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("compat-data") / "code.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in CODE))
    return path


def _cli_args(command, gpt2_dir, code_file, out, *extra):
    return [
        command,
        "--model",
        str(gpt2_dir),
        "--forget",
        str(code_file),
        "--retain",
        "demo:prose",
        "--mlp-frac",
        "0.1",
        "--n-steps",
        "1",
        "--collect-tokens",
        "300",
        "--eval-tokens",
        "200",
        "--seq-len",
        "32",
        "--compat",
        "taker",
        "--out",
        str(out),
        "--quiet",
        "--no-report",
        *extra,
    ]


def test_cli_prune_and_sweep_take_the_mode(gpt2, gpt2_dir, code_file, tmp_path, capsys):
    from unlearn_lens.checks.sweep import Sweep, sweep
    from unlearn_lens.cli import main

    assert main(_cli_args("prune", gpt2_dir, code_file, tmp_path / "run", "--baseline", "none")) == 0
    assert "compat (rules)" in capsys.readouterr().out
    run = ul.PruneRun.load(tmp_path / "run")
    assert run.config.compat == "taker" and run.final.n_mlp == int(0.1 * 128) and run.forget_stats.n_tokens == 300
    statistics, evaluation = run_tokens(run, gpt2, "forget")  # read again one text per row: the checksums agree
    assert statistics.n_tokens == 300 and bool(statistics.valid[:, 0].all())
    args = _cli_args(
        "sweep", gpt2_dir, code_file, tmp_path / "sweep", "--ablations", "zero", "--scorings", "abs", "std"
    )
    assert main(args) == 0
    assert [c.run.config.compat for c in Sweep.load(tmp_path / "sweep").cells] == ["taker", "taker"]
    with pytest.raises(ul.UnlearnLensError, match="no scoring 'wanda'"):  # refused before any cell runs
        sweep(gpt2, CODE, PROSE, ul.PruneConfig(compat="taker"), ablations=["zero"], scorings=["abs", "wanda"])
