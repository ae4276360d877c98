"""Reliability of long runs and their inputs: checkpoints, locks, threads, tolerances, long texts, messages."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import threading
import tracemalloc

import pytest
import test_cli
import torch
from conftest import CODE, PROSE
from safetensors.torch import load_file, save_file
from test_cli import _args

import unlearn_lens as ul
import unlearn_lens.checkpoint as checkpoint
import unlearn_lens.pipeline as pipeline
from unlearn_lens.cli import main
from unlearn_lens.sources import iter_texts

data_dir = test_cli.data_dir  # the command line tests' data files, as a fixture of this module too


def _one_line_error(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("unlearn-lens: error: ") and "Traceback" not in err, err
    return err


# --- 5. a corrupt checkpoint is refused before any work --------------------------------------------------------


def _corrupt(tensors: dict[str, torch.Tensor], how: str) -> str:
    """Spoil one tensor of a checkpoint's tokens; return the name of the tensor."""
    if how == "id outside the vocabulary":
        tensors["forget_eval.tokens"][0, 3] = 10**6
        return "forget_eval.tokens"
    if how == "negative id":
        tensors["retain_collect.tokens"][1, 2] = -1
        return "retain_collect.tokens"
    if how == "valid of another shape":
        tensors["retain_eval.valid"] = tensors["retain_eval.valid"][:, :-3].contiguous()
        return "retain_eval.valid"
    if how == "valid not bool-like":
        tensors["forget_collect.valid"] = tensors["forget_collect.valid"].to(torch.int64) * 3
        return "forget_collect.valid"
    if how == "float tokens":
        tensors["forget_collect.tokens"] = tensors["forget_collect.tokens"].float()
        return "forget_collect.tokens"
    assert how == "one-dimensional tokens"
    tensors["retain_eval.tokens"] = tensors["retain_eval.tokens"].reshape(-1).contiguous()
    return "retain_eval.tokens"


CORRUPTIONS = [
    "id outside the vocabulary",
    "negative id",
    "valid of another shape",
    "valid not bool-like",
    "float tokens",
    "one-dimensional tokens",
]


def test_resume_refuses_a_checkpoint_with_corrupt_tokens(gpt2, gpt2_dir, data_dir, tmp_path, capsys, interrupt_at_step):
    out = tmp_path / "cut"
    interrupt_at_step(2)
    assert main(_args(gpt2_dir, data_dir, out, "--baseline", "none")) == 130
    capsys.readouterr()
    good = tmp_path / "cut.partial"
    for i, how in enumerate(CORRUPTIONS):
        ckpt = tmp_path / f"bad{i}.partial"
        shutil.copytree(good, ckpt)
        tensors = load_file(ckpt / "tokens.safetensors")
        name = _corrupt(tensors, how)
        save_file(tensors, ckpt / "tokens.safetensors", metadata={"format": "unlearn_lens.Checkpoint"})
        assert main(["prune", "--resume", str(ckpt), "--quiet", "--no-report"]) == 2, how
        err = _one_line_error(capsys.readouterr().err)
        assert "tokens.safetensors" in err and repr(name) in err, (how, err)
        assert not (tmp_path / f"bad{i}").exists()
        with pytest.raises(ul.UnlearnLensError, match=name):  # the library refuses it before any work as well
            ul.selective_prune(gpt2, checkpoint=ckpt, progress=False)
        with pytest.raises(ul.UnlearnLensError, match=name):
            checkpoint.checkpoint_tokens(ckpt, model=gpt2)
    # a checkpoint that another run holds is not resumed a second time
    held, release = threading.Event(), threading.Event()

    def hold():
        with checkpoint.checkpoint_lock(good):
            held.set()
            release.wait(60)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(60)
        assert main(["prune", "--resume", str(good), "--quiet", "--no-report"]) == 2
        assert f"in use by process {os.getpid()}" in _one_line_error(capsys.readouterr().err)
    finally:
        release.set()
        thread.join(60)


# --- 12. a resumed run keeps the baseline settings it was started with -------------------------------------------


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


@pytest.mark.parametrize("baseline", [["--baseline", "none"], ["--baseline-seeds", "2"]])
def test_resume_keeps_the_baseline_settings(baseline, gpt2_dir, data_dir, tmp_path, capsys, interrupt_at_step):
    args = _args(gpt2_dir, data_dir, tmp_path / "full", *baseline)
    assert main(args) == 0
    interrupt_at_step(2)
    assert main([a if a != str(tmp_path / "full") else str(tmp_path / "cut") for a in args]) == 130
    capsys.readouterr()
    assert main(["prune", "--resume", str(tmp_path / "cut.partial"), "--quiet", "--no-report"]) == 0
    full, cut = (tmp_path / "full", tmp_path / "cut")
    assert sorted(p.name for p in cut.iterdir()) == sorted(p.name for p in full.iterdir())
    results = [_without_timings(json.loads((d / "results.json").read_text())) for d in (full, cut)]
    assert results[0] == results[1]
    for file in full.glob("*.safetensors"):
        assert (cut / file.name).read_bytes() == file.read_bytes(), file.name


# --- 13. one process at a time writes a checkpoint ---------------------------------------------------------------


def test_a_second_prune_on_the_same_checkpoint_is_refused_at_once(gpt2_dir, data_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    started, release = threading.Event(), threading.Event()
    real = pipeline._evaluate_both

    def held(*args, **kwargs):  # the first run waits at step 0, before its checkpoint is written
        if threading.current_thread().name == "first":
            started.set()
            assert release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_evaluate_both", held)
    codes = []
    first = threading.Thread(name="first", target=lambda: codes.append(main(_args(gpt2_dir, data_dir, out))))
    first.start()
    try:
        assert started.wait(120)
        assert main(_args(gpt2_dir, data_dir, out)) == 2
        err = _one_line_error(capsys.readouterr().err)
        assert f"in use by process {os.getpid()}" in err and "run.partial" in err
    finally:
        release.set()
        first.join(120)
    assert codes == [0] and (out / "results.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no lock file is left behind


def test_a_lock_file_left_by_a_crashed_run_is_not_a_lock(gpt2_dir, data_dir, tmp_path):
    out = tmp_path / "run"
    (tmp_path / "run.partial.lock").write_text("999999999\n")  # the pid of a process that is gone
    assert main(_args(gpt2_dir, data_dir, out, "--baseline", "none")) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_the_lock_leaves_no_folder_behind_a_refused_run(gpt2_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "run"  # folders the run would create
    assert main(_args(gpt2_dir, data_dir, out, "--mlp-frac", "1.5")) == 2
    assert "mlp_frac" in _one_line_error(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_checkpoint_lock_is_reentrant_in_one_thread_only(tmp_path):
    ckpt = tmp_path / "x.partial"
    with checkpoint.checkpoint_lock(ckpt):
        assert (tmp_path / "x.partial.lock").read_text().strip() == str(os.getpid())
        with checkpoint.checkpoint_lock(ckpt):  # the command line holds it around selective_prune
            pass
        assert (tmp_path / "x.partial.lock").is_file()
        errors = []

        def other():
            try:
                with checkpoint.checkpoint_lock(ckpt):
                    pass
            except ul.UnlearnLensError as exc:
                errors.append(str(exc))

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        assert len(errors) == 1 and f"process {os.getpid()}" in errors[0]
    assert not (tmp_path / "x.partial.lock").exists()
    with checkpoint.checkpoint_lock(ckpt):  # free again
        pass


# --- 14. a model with pruning hooks belongs to the thread that added them -----------------------------------------


def test_pruned_claims_the_model_for_its_thread(gpt2):
    from conftest import our_hooks

    masks = ul.Masks.empty(ul.ModelDims.of(gpt2))
    masks.mlp[0, :5] = True
    tokens = ul.tokenize_texts(gpt2.tokenizer, PROSE[:4], seq_len=32)
    plain = ul.evaluate(gpt2, tokens, progress=False)
    entered, done = threading.Event(), threading.Event()
    inside = []

    def prune_and_wait():
        with ul.pruned(gpt2, masks):
            entered.set()
            assert done.wait(60)
            inside.append(ul.evaluate(gpt2, tokens, progress=False))  # its own thread still measures

    thread = threading.Thread(target=prune_and_wait)
    thread.start()
    try:
        assert entered.wait(60)
        with pytest.raises(ul.UnlearnLensError, match="in use by another thread"):
            ul.evaluate(gpt2, tokens, progress=False)
        with pytest.raises(ul.UnlearnLensError, match="in use by another thread"):
            ul.collect_stats(gpt2, tokens, progress=False)
        hooks = our_hooks(gpt2)
        with pytest.raises(ul.UnlearnLensError, match="in use by another thread"):
            ul.pruned(gpt2, masks)
        assert our_hooks(gpt2) == hooks  # the refused handle left no hook
    finally:
        done.set()
        thread.join(60)
    assert inside and inside[0] != plain
    assert our_hooks(gpt2) == 0 and ul.evaluate(gpt2, tokens, progress=False) == plain  # released on exit
    handle = ul.pruned(gpt2, masks)  # a handle without `with` holds the model until remove()
    errors = []
    thread = threading.Thread(target=lambda: errors.append(_refused(gpt2, tokens)))
    thread.start()
    thread.join()
    handle.remove()
    thread = threading.Thread(target=lambda: errors.append(_refused(gpt2, tokens)))
    thread.start()
    thread.join()
    assert errors == [True, False]


def _refused(model, tokens) -> bool:
    try:
        ul.evaluate(model, tokens, progress=False)
    except ul.UnlearnLensError:
        return True
    return False


# --- 15. the unpruned model's scores are compared with a tolerance ----------------------------------------------


def test_baseline_compares_the_unpruned_scores_with_a_tolerance(gpt2, caplog):
    cfg = ul.PruneConfig(mlp_frac=0.1, n_steps=1, collect_tokens=200, eval_tokens=200, seq_len=32)
    run = ul.selective_prune(gpt2, CODE, PROSE, cfg, progress=False)
    base = run.history[0]

    def reference(**change):
        forget = dataclasses.replace(base.forget, **change)
        return dataclasses.replace(run, history=[dataclasses.replace(base, forget=forget), *run.history[1:]])

    warned = "scores differently"
    for change, warns in [
        ({"loss": base.forget.loss * (1 + 1e-15), "perplexity": base.forget.perplexity * (1 - 1e-15)}, False),
        ({"top1": base.forget.top1 * (1 + 1e-13)}, False),
        ({"loss": base.forget.loss * (1 + 1e-6)}, True),
        ({"n_tokens": base.forget.n_tokens + 1}, True),
    ]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="unlearn_lens"):
            ul.random_baseline(gpt2, CODE, PROSE, reference(**change), progress=False)
        assert (warned in caplog.text) is warns, change


# --- 16. top-k above the vocabulary is refused -----------------------------------------------------------------------


def test_topk_above_the_vocabulary_is_refused(gpt2, gpt2_dir, data_dir, tmp_path, capsys, monkeypatch):
    d_vocab = gpt2.cfg.d_vocab
    assert ul.evaluate(gpt2, PROSE[:2], topk=d_vocab, progress=False).topk == 1.0  # k = vocabulary is fine
    with pytest.raises(ul.UnlearnLensError, match=f"topk.*{d_vocab}"):
        ul.evaluate(gpt2, PROSE[:2], topk=d_vocab + 1, progress=False)
    work = []
    monkeypatch.setattr(pipeline._Data, "split", lambda *a, **k: work.append(1))
    with pytest.raises(ul.UnlearnLensError, match="topk"):
        ul.selective_prune(gpt2, CODE, PROSE, ul.PruneConfig(topk=100_000), progress=False)
    assert not work  # refused before the texts were even split
    monkeypatch.undo()
    out = tmp_path / "run"
    assert main(_args(gpt2_dir, data_dir, out, "--topk", "100000")) == 2
    err = _one_line_error(capsys.readouterr().err)
    assert "100000" in err or "100,000" in err
    assert not out.exists() and not (tmp_path / "run.partial").exists()


# --- 17. a long text is tokenised in bounded pieces --------------------------------------------------------------


def _long_text(n_bytes: int) -> str:
    lines, size, i = [], 0, 0
    while size < n_bytes:
        line = f"    value_{i % 97} = compute(data[{i}], scale={i % 13}) + offset_{i % 7}\n"
        if i % 5 == 0:
            line = f"def function_{i}(a, b):\n" + line
        lines.append(line)
        size += len(line)
        i += 1
    return "".join(lines)


def test_a_long_text_is_tokenised_in_bounded_memory(tokenizer):
    text = _long_text(4_000_000)
    tracemalloc.start()
    try:
        parts = ul.token_budgets(tokenizer, [text], [2000, 2000], seq_len=32)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16_000_000, f"{peak:,} bytes traced for a {len(text):,}-character text"
    assert [p.n_tokens for p in parts] == [2000, 0]  # the rest of a cut text feeds no other budget
    assert parts[0].spans[0].truncated and parts[0].spans[0].ends == (2000,)
    # the pieces give the tokens of one pass over the text: they are cut where the tokenizer splits anyway
    for size in (250_000, 180_000):
        for words in (text[:size], text[:size].replace("\n", " ")):  # cut at line breaks, or between words
            ids = tokenizer(words, add_special_tokens=False)["input_ids"]
            (part,) = ul.token_budgets(tokenizer, [words], [None], seq_len=32)
            assert part.tokens[part.valid].tolist() == ids + [tokenizer.eos_token_id]


def test_one_long_text_cannot_feed_both_budgets(gpt2, gpt2_dir, data_dir, tmp_path, capsys):
    text = _long_text(300_000)
    cfg = ul.PruneConfig(mlp_frac=0.1, n_steps=1, collect_tokens=300, eval_tokens=300, seq_len=32)
    with pytest.raises(ul.UnlearnLensError, match="one text cannot feed both") as exc:
        ul.selective_prune(gpt2, [text], PROSE, cfg, progress=False)
    assert "give more text" not in str(exc.value)
    (tmp_path / "long.txt").write_text(text)
    args = _args(gpt2_dir, data_dir, tmp_path / "run")
    args[args.index("--forget") + 1] = str(tmp_path / "long.txt")
    assert main(args) == 2
    err = _one_line_error(capsys.readouterr().err)
    assert "one text cannot feed both" in err and "long.txt" in err and "give more text" not in err


# --- 18. messages ----------------------------------------------------------------------------------------------------


def test_an_empty_jsonl_file_says_so(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text("\n  \n")
    for name in ("empty.jsonl", "blank.jsonl"):
        with pytest.raises(ul.UnlearnLensError) as exc:
            ul.load_texts(tmp_path / name)
        message = str(exc.value)
        assert "no non-empty texts" in message and name in message and not message.rstrip().endswith(":"), message


def test_a_local_glob_that_matches_nothing_says_so(tmp_path):
    pattern = str(tmp_path / "nothing" / "*.jsonl")
    with pytest.raises(ul.UnlearnLensError) as exc:
        iter_texts(pattern)
    message = str(exc.value)
    assert "matched no file" in message and pattern in message and "network" not in message, message


def test_an_empty_partial_directory_is_not_called_a_checkpoint(gpt2_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    (tmp_path / "run.partial").mkdir()  # left by a run stopped before step 0 was recorded
    assert main(_args(gpt2_dir, data_dir, out, "--baseline", "none")) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    (tmp_path / "other.partial").mkdir()
    (tmp_path / "other.partial" / "notes.txt").write_text("mine")
    assert main(_args(gpt2_dir, data_dir, tmp_path / "other", "--baseline", "none")) == 2
    err = _one_line_error(capsys.readouterr().err)
    assert "not a checkpoint" in err and "--resume" not in err
    assert (tmp_path / "other.partial" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "argv, named",
    [
        (["prune", "--ff-frac", "0.5"], "--ff-frac"),
        (["prune", "--mlp-frac", "x"], "--mlp-frac"),
        (["prune", "--ablation", "bogus"], "bogus"),
        (["check"], "RUN_DIR"),
        (["nonsense"], "nonsense"),
    ],
)
def test_argument_errors_are_one_line(argv, named, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    err = _one_line_error(captured.err)
    assert named in err and "usage" not in err and not captured.out


def test_help_is_unchanged(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["prune", "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("usage: unlearn-lens prune")
