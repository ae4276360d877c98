"""The command line on a local model directory and local text files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import CODE, PROSE

import unlearn_lens as ul
from unlearn_lens.cli import main


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    (path / "code.jsonl").write_text("".join(json.dumps({"content": t}) + "\n" for t in CODE))
    (path / "prose").mkdir()
    for i, t in enumerate(PROSE):
        (path / "prose" / f"{i:02d}.txt").write_text(t)
    return path


def _args(gpt2_dir, data_dir, out, *extra):
    return ["prune", "--model", str(gpt2_dir), "--forget", str(data_dir / "code.jsonl"), "--text-field", "content",
            "--retain", str(data_dir / "prose"), "--ff-frac", "0.1", "--steps", "2", "--collect-tokens", "300",
            "--eval-tokens", "300", "--seq-len", "32", "--out", str(out), "--quiet", "--no-report", *extra]


def test_prune_writes_results(gpt2_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(gpt2_dir, data_dir, out)) == 0
    printed = capsys.readouterr().out
    assert "separability area" in printed and "selective" in printed and "random" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["version"] == ul.__version__ and results["config"]["ff_frac"] == 0.1
    sel = results["runs"]["selective"]
    assert len(sel["steps"]) == 3 and sel["steps"][2]["mlp_counts"] == ul.PruneRun.from_dict(sel).final.mlp_counts
    assert results["runs"]["random"]["steps"][1]["new_mlp"] == sel["steps"][1]["new_mlp"]
    masks = ul.Masks.load(out / "masks.safetensors", dims=ul.ModelDims(**results["dims"]))
    assert masks.n_mlp == sel["steps"][-1]["n_mlp"] == 2 * round(0.1 * 128)
    forget = ul.ActivationStats.load(out / "forget_stats.safetensors")
    assert forget.n_tokens == 300
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))


def test_separate_text_fields(gpt2_dir, data_dir, tmp_path, capsys):
    (tmp_path / "prose.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in PROSE))
    out = tmp_path / "run"
    args = _args(gpt2_dir, data_dir, out, "--baseline", "none")
    args[args.index("--retain") + 1] = str(tmp_path / "prose.jsonl")
    args[args.index("--text-field")] = "--forget-field"
    assert main(args) == 2 and not out.exists()  # the retain file has no "text" column
    assert "no text field 'text'" in capsys.readouterr().err
    assert main(args + ["--retain-field", "body"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert (results["forget_field"], results["retain_field"]) == ("content", "body")
    assert results["runs"]["selective"]["steps"][0]["retain"]["n_tokens"] == 300
    # the report reads each dataset back with its own column for the neuron cards
    page = ul.write_report(out, load_model_from_results=True, n_cards=1, card_tokens=200,
                           device="cpu").read_text(encoding="utf-8")
    assert page.count('<div class="ul-card"') == 1 and "Top 5 contexts on retain" in page


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--ff-frac", "1.5"], "ff_frac must be a fraction in [0, 1]"),
        (["--text-field", "body"], "no text field 'body'"),
        (["--scoring", "freq", "--steps", "0"], "n_steps must be at least 1"),
    ],
)
def test_bad_input_is_one_clear_error_and_no_output(gpt2_dir, data_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert main(_args(gpt2_dir, data_dir, out, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_missing_model_and_data(gpt2_dir, data_dir, tmp_path, capsys):
    assert main(["prune", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    args = _args(gpt2_dir, data_dir, tmp_path / "o")
    args[args.index("--retain") + 1] = str(tmp_path / "missing.txt")
    assert main(args) == 2
    assert "missing.txt" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("")
    args[args.index("--retain") + 1] = str(tmp_path / "empty.txt")
    assert main(args) == 2
    assert "no non-empty texts" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "unlearn_lens", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and ul.__version__ in out.stdout
