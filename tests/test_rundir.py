"""A run directory is input from someone else: every file is checked before any work or any text is shown."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cli import _args, data_dir  # noqa: F401 - data_dir is a fixture

import unlearn_lens as ul
from unlearn_lens.cli import main

SECRET = "TOP-SECRET-LINE the run never used this file " * 40


@pytest.fixture(scope="module")
def run_dir(gpt2_dir, data_dir, tmp_path_factory):  # noqa: F811
    """A small run made by the command line: statistics, scores, masks and one random baseline."""
    out = tmp_path_factory.mktemp("rundir") / "run"
    assert main(_args(gpt2_dir, data_dir, out, "--ablation", "mean")) == 0
    return out


@pytest.fixture
def copy(run_dir, tmp_path):
    """A fresh copy of the run directory, to edit."""
    path = tmp_path / "run"
    shutil.copytree(run_dir, path)
    return path


def _edit(path: Path, change) -> None:
    data = json.loads((path / "results.json").read_text())
    change(data)
    (path / "results.json").write_text(json.dumps(data))


def _refused(path: Path, capsys, *extra: str) -> str:
    """Run ``report`` on ``path``: it must exit 2 with one line naming the problem, and no traceback."""
    assert main(["report", str(path), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def _last(data: dict) -> dict:
    return data["run"]["history"][-1]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d["run"]["dims"].update(n_layers=-1), "run.dims.n_layers"),
        (lambda d: d["run"]["dims"].update(d_mlp=10**12), "run.dims.d_mlp"),
        (lambda d: d["run"]["dims"].update(n_layers=4000, d_mlp=900_000), "more than"),
        (lambda d: d["baseline"]["info"].update(baseline_seed="x"), "baseline.info.baseline_seed"),
        (lambda d: d["baseline"]["info"].update(baseline_seed="../../x"), "baseline.info.baseline_seed"),
        (lambda d: d["run"]["info"].update(forget=5), "run.info.forget"),
        (lambda d: d["run"]["info"].update(forget_shares="abc"), "run.info.forget_shares"),
        (lambda d: d["run"]["info"].update(forget_shares=[0.5, 0.5]), "2 shares for 1 sources"),
        (lambda d: _last(d).update(mlp_counts=[1]), "run.history[2].mlp_counts: expected 2 values"),
        (lambda d: _last(d).update(new_mlp=[0, 0]), "run.history[2].mlp_counts: not the previous"),
        (lambda d: _last(d)["forget"].update(top1=7), "run.history[2].forget.top1"),
        (lambda d: d["run"].update(history=[]), "run.history"),
        (lambda d: d["run"].update(fingerprint="/home/someone/model"), "run.fingerprint"),
    ],
)
def test_every_field_of_results_json_is_checked(copy, capsys, change, field):
    _edit(copy, change)
    with pytest.raises(ul.UnlearnLensError, match="results.json"):
        ul.PruneRun.load(copy)
    assert field in _refused(copy, capsys, "--no-cards")


def test_step_records_must_agree_with_the_masks(copy, capsys):
    def move_a_unit(data):  # counts that still add up, but not what the masks hold
        step = _last(data)
        new, counts = step["new_mlp"], step["mlp_counts"]
        i, j = (0, 1) if new[0] > 0 else (1, 0)
        new[i], new[j], counts[i], counts[j] = new[i] - 1, new[j] + 1, counts[i] - 1, counts[j] + 1

    _edit(copy, move_a_unit)
    assert "does not hold the units the run's last step records" in _refused(copy, capsys, "--no-cards")


def _other_model(gpt2_dir: Path, path: Path) -> Path:
    """A model of the test model's config with other (random) weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(7)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(gpt2_dir)).save_pretrained(path)
    AutoTokenizer.from_pretrained(gpt2_dir).save_pretrained(path)
    return path


@pytest.mark.parametrize("name", ["means.safetensors", "scores.safetensors", "forget_stats.safetensors"])
def test_a_file_of_another_model_is_refused_by_name(copy, gpt2_dir, data_dir, tmp_path, capsys, name):  # noqa: F811
    other = tmp_path / "other-run"
    assert main(_args(_other_model(gpt2_dir, tmp_path / "other"), data_dir, other, "--ablation", "mean")) == 0
    shutil.copy(other / name, copy / name)
    err = _refused(copy, capsys, "--no-cards")
    assert name in err and "another model" in err


def test_a_file_of_another_run_of_the_same_model_is_refused(copy, gpt2_dir, data_dir, tmp_path, capsys):  # noqa: F811
    other = tmp_path / "other-run"
    assert main(_args(gpt2_dir, data_dir, other, "--ablation", "mean", "--seed", "3")) == 0
    shutil.copy(other / "initial_scores.safetensors", copy / "initial_scores.safetensors")
    assert "not the one this run wrote" in _refused(copy, capsys, "--no-cards")


def test_files_record_a_fingerprint_not_a_machine_path(run_dir, gpt2_dir):
    from unlearn_lens.models import model_fingerprint
    from unlearn_lens.rundir import file_fingerprint

    data = json.loads((run_dir / "results.json").read_text())
    fingerprint = model_fingerprint(ul.load_model(str(gpt2_dir), device="cpu"))
    assert data["run"]["fingerprint"] == fingerprint and data["run"]["model"] == gpt2_dir.name
    for path in run_dir.glob("*.safetensors"):
        assert file_fingerprint(path)[0] == fingerprint, path.name
        assert str(gpt2_dir) not in path.read_bytes()[:4096].decode("latin-1"), path.name


def test_a_run_directory_cannot_make_the_report_show_a_file_it_did_not_use(copy, gpt2_dir, tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)

    def point_at_the_secret(data):
        for _, run in [("run", data["run"]), ("baseline", data["baseline"])]:
            run["info"].update(forget=str(secret), forget_field="text")

    _edit(copy, point_at_the_secret)
    err = _refused(copy, capsys, "--model", str(gpt2_dir))
    assert str(secret) in err and "checksum" in err
    written = [p for p in copy.iterdir() if p.suffix in (".html", ".json")]
    assert all("TOP-SECRET" not in p.read_text() for p in written)
    assert not (copy / "report.html").exists()


def test_check_refuses_data_files_changed_since_the_run(gpt2_dir, data_dir, tmp_path, capsys):  # noqa: F811
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    out = tmp_path / "run"
    assert main(_args(gpt2_dir, data, out)) == 0
    (data / "code.jsonl").write_text((data / "code.jsonl").read_text().replace("return", "yield"))
    assert main(["check", str(out), "--relearn-steps", "1", "--no-report", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "code.jsonl" in err and "checksum" in err and not (out / "checks.json").exists()


def test_check_refuses_a_negative_number_of_texts(run_dir, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    code = main(
        ["check", str(out), "--forget-members", "x.txt", "--forget-nonmembers", "y.txt", "--n-texts", "-3"]
        + ["--no-relearn", "--no-report", "--quiet"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "n_texts must be a positive integer" in err and "Traceback" not in err


def test_a_format2_run_rereads_its_sources_only_when_trusted(tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(Path(__file__).parent / "fixtures" / "format2-run", old)
    err = _refused(old, capsys)
    assert "--trust-sources" in err and "no checksum" in err and not (old / "report.html").exists()


# --- fuzzing: whatever is changed, loading gives the same run or one UnlearnLensError ----------------------


def _leaves(data, path=()):
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(data, list) and data:
        for i, v in enumerate(data):
            yield from _leaves(v, (*path, i))
    yield path


_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**62), 2**62),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(-3, 3), max_size=5),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
)


def _content(run: ul.PruneRun) -> dict:
    """What a loaded run holds: its record, and every tensor."""
    tensors = {"masks": run.masks.mlp, "masks.attn": run.masks.attn}
    for i, b in enumerate(run.random_runs()):
        tensors[f"baseline{i}"] = torch.cat([b.masks.mlp.flatten(), b.masks.attn.flatten()])
    for name in ("forget_stats", "retain_stats"):
        stats = getattr(run, name)
        tensors[name] = torch.cat([stats.mlp.mean.flatten(), stats.attn.mean.flatten()])
    tensors["scores"] = torch.cat([run.scores.mlp.flatten(), run.scores.attn.flatten()])
    tensors["means"] = run.ablation.means.mlp.mean
    return {"record": json.dumps(run.to_dict(), sort_keys=True, default=str), "tensors": tensors}


def _same(a: dict, b: dict) -> bool:
    return a["record"] == b["record"] and all(torch.equal(a["tensors"][k], b["tensors"][k]) for k in a["tensors"])


_FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_FUZZ
@given(data=st.data())
def test_fuzzed_results_json_loads_or_is_one_clear_error(run_dir, data):
    original = json.loads((run_dir / "results.json").read_text())
    leaves = [p for p in _leaves(original) if p]
    # half the draws change the fields that shape what is allocated and read (dims, counts, data sources)
    shaping = [p for p in leaves if {"dims", "info", "mlp_counts", "attn_counts", "new_mlp", "files"} & set(p)]
    where = data.draw(st.sampled_from(shaping) if data.draw(st.booleans()) else st.sampled_from(leaves))
    value = data.draw(_VALUES)
    mutated = json.loads(json.dumps(original))
    target = mutated
    for key in where[:-1]:
        target = target[key]
    if data.draw(st.booleans()) and isinstance(target, dict):
        del target[where[-1]]
    else:
        target[where[-1]] = value
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run"
        shutil.copytree(run_dir, path)
        (path / "results.json").write_text(json.dumps(mutated))
        try:
            ul.PruneRun.load(path)
        except ul.UnlearnLensError:
            pass


@_FUZZ
@given(data=st.data())
def test_fuzzed_tensor_files_load_the_same_run_or_are_one_clear_error(run_dir, data):
    reference = _content(ul.PruneRun.load(run_dir))
    files = sorted(p.name for p in run_dir.glob("*.safetensors"))
    name = data.draw(st.sampled_from(files))
    raw = bytearray((run_dir / name).read_bytes())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run"
        shutil.copytree(run_dir, path)
        if data.draw(st.booleans()):
            raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
        else:  # one byte, in the tensors' data more often than in the header
            header = 8 + int.from_bytes(raw[:8], "little")
            at = data.draw(st.integers(header, len(raw) - 1) | st.integers(0, len(raw) - 1))
            raw[at] = data.draw(st.integers(0, 255))
        (path / name).write_bytes(bytes(raw))
        try:
            loaded = ul.PruneRun.load(path)
        except ul.UnlearnLensError:
            return
        assert _same(_content(loaded), reference), name


def test_a_run_continues_or_is_compared_only_on_its_own_model(gpt2_dir, tmp_path):
    from conftest import CODE, PROSE

    model = ul.load_model(str(gpt2_dir), device="cpu")
    other = ul.load_model(str(_other_model(gpt2_dir, tmp_path / "other")), device="cpu")
    config = ul.PruneConfig(mlp_frac=0.1, n_steps=2, collect_tokens=200, eval_tokens=200, seq_len=24)
    run = ul.selective_prune(model, CODE, PROSE, config, progress=False, checkpoint=tmp_path / "ckpt")
    with pytest.raises(ul.UnlearnLensError, match="another model"):
        ul.random_baseline(other, CODE, PROSE, run, progress=False)
    with pytest.raises(ul.UnlearnLensError, match="another model"):
        ul.selective_prune(other, progress=False, checkpoint=tmp_path / "ckpt")
    assert ul.random_baseline(model, CODE, PROSE, run, progress=False).strategy == "random"
