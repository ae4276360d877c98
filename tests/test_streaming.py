"""Sources read lazily to the token budget: endless Hub streams, big local files, the Hub cache, bad paths.

No network is used: the Hub branch of the text loader is driven through a stand-in for
``datasets.load_dataset`` that serves an endless stream and counts the rows it hands
out, and the Hub branch of the model loader through a Hugging Face cache laid out in a
temporary directory with ``HF_HUB_OFFLINE=1``, the path a user with network takes
after the first download.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import count

import pytest
from conftest import CODE, PROSE

import unlearn_lens as ul
from unlearn_lens.cli import main
from unlearn_lens.sources import iter_texts


class EndlessDataset:
    """An endless streaming dataset: rows ``{"text": ..., "id": i}`` cycling through ``texts``."""

    def __init__(self, texts, features=("text", "id"), drop_field_at=None):
        self.texts = texts
        self.features = {name: None for name in features}
        self.drop_field_at = drop_field_at
        self.served = 0

    def __iter__(self):
        for i in count():
            self.served += 1
            row = {"text": f"{self.texts[i % len(self.texts)]} # {i}", "id": i}
            if i == self.drop_field_at:
                del row["text"]
            yield row


@pytest.fixture
def hub(monkeypatch):
    """Stand-in for the Hub: ``datasets.load_dataset(name, config, split=..., streaming=True)``."""
    import datasets

    opened = {}
    calls = []

    def load_dataset(name, config=None, *, split="train", streaming=False, **kwargs):
        calls.append((name, config, split, streaming))
        if split not in ("train",):
            raise ValueError(f"Unknown split \"{split}\". Should be one of ['train'].")
        features = ("content", "id") if "other-field" in name else ("text", "id")
        ds = EndlessDataset(CODE if "code" in name else PROSE, features, drop_field_at=5 if "holes" in name else None)
        opened.setdefault(name, []).append(ds)
        return ds

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return opened, calls


def _args(gpt2_dir, out, forget="org/endless-code", retain="org/endless-prose", *extra):
    return [
        "prune",
        "--model",
        str(gpt2_dir),
        "--forget",
        forget,
        "--retain",
        retain,
        "--mlp-frac",
        "0.1",
        "--n-steps",
        "2",
        "--collect-tokens",
        "300",
        "--eval-tokens",
        "200",
        "--seq-len",
        "32",
        "--out",
        str(out),
        "--quiet",
        "--no-report",
        *extra,
    ]


def test_endless_hub_streams_finish_with_bounded_reads(gpt2_dir, tmp_path, hub):
    opened, calls = hub
    assert main(_args(gpt2_dir, tmp_path / "a")) == 0
    assert all(streaming for *_, streaming in calls)
    served = {name: [ds.served for ds in sets] for name, sets in opened.items()}
    # 500 tokens need a few dozen short rows; reading stops within one chunk of 64 texts after that
    assert all(0 < n <= 64 * 3 for counts in served.values() for n in counts), served
    info = json.loads((tmp_path / "a" / "results.json").read_text())["run"]["info"]
    assert info["forget_tokens"] == info["retain_tokens"] == 500
    assert 0 < info["forget_texts_read"] <= served["org/endless-code"][0]
    # which texts gave the statistics and which the evaluation: consecutive, none shared
    texts = info["texts"]["forget"]
    assert texts["shared_texts"] == 0 and [r["tokens"] for r in texts["statistics"] + texts["evaluation"]] == [300, 200]
    assert texts["statistics"][0]["texts"][0] == 0
    assert texts["statistics"][0]["texts"][1] == texts["evaluation"][0]["texts"][0]
    assert texts["evaluation"][0]["texts"][1] <= info["forget_texts_read"]
    # the same command gives the same run
    assert main(_args(gpt2_dir, tmp_path / "b")) == 0
    steps = [json.loads((tmp_path / d / "results.json").read_text())["run"]["history"] for d in ("a", "b")]
    assert [s["forget"] for s in steps[0]] == [s["forget"] for s in steps[1]]


def test_shuffled_stream_is_seeded_and_bounded(gpt2_dir, tmp_path, hub):
    opened, _ = hub
    assert main(_args(gpt2_dir, tmp_path / "a", "org/endless-code", "org/endless-prose", "--shuffle-buffer", "50")) == 0
    assert max(ds.served for sets in opened.values() for ds in sets) <= 50 + 64 * 3
    info = json.loads((tmp_path / "a" / "results.json").read_text())["run"]["info"]
    assert (info["shuffle_seed"], info["shuffle_buffer"]) == (0, 50)
    # rows read from the source: the buffer's fill and what the budgets took, no more than were served
    assert 50 < info["forget_rows_read"] <= opened["org/endless-code"][0].served
    texts = [f"text {i}" for i in range(200)]
    a = list(iter_texts(texts, shuffle_seed=1, buffer_size=20))
    assert (
        a
        == list(iter_texts(texts, shuffle_seed=1, buffer_size=20))
        != list(iter_texts(texts, shuffle_seed=2, buffer_size=20))
    )
    assert sorted(a) == sorted(texts) and a != texts


def test_hub_config_split_and_fields(gpt2_dir, tmp_path, hub, capsys):
    _, calls = hub
    stream = iter_texts("org/endless-code:python", text_field="text")
    assert calls[-1] == ("org/endless-code", "python", "train", True)
    assert next(stream).startswith(CODE[0]) and stream.n_rows == 1
    cases = [
        (
            _args(gpt2_dir, tmp_path / "o", "org/endless-code", "org/endless-prose", "--split", "validation"),
            "split 'validation'",
        ),
        (
            _args(gpt2_dir, tmp_path / "o", "org/other-field-code"),
            "has no text field 'text'; its fields are ['content', 'id']",
        ),
        (_args(gpt2_dir, tmp_path / "o", "org/holes-code"), "has no text field 'text'; its fields are ['id']"),
    ]
    for args, message in cases:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
        assert not (tmp_path / "o").exists()


def test_local_files_are_read_lazily(gpt2, tmp_path):
    """Rows read for a budget do not grow with the size of the file."""
    reads = []
    for n_rows in (500, 50_000):
        path = tmp_path / f"rows-{n_rows}.jsonl"
        path.write_text("".join(json.dumps({"text": f"{PROSE[i % len(PROSE)]} {i}"}) + "\n" for i in range(n_rows)))
        stream = iter_texts(path)
        tokens = ul.tokenize_texts(gpt2.tokenizer, stream, seq_len=32, max_tokens=300)
        assert tokens.n_tokens == 300 and tokens.n_texts <= stream.n_texts
        reads.append(stream.n_rows)
    assert reads[0] == reads[1] <= 64


def test_bad_paths_fail_before_any_work(gpt2_dir, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "code.txt").write_text("\n".join(CODE))
    (tmp_path / "prose.txt").write_text("\n".join(PROSE))
    base = _args(gpt2_dir, tmp_path / "out", str(tmp_path / "code.txt"), str(tmp_path / "prose.txt"))
    for out, message in ((tmp_path / "file.txt", "is a file"), (tmp_path / "file.txt" / "run", "is not writable")):
        args = list(base)
        args[args.index("--out") + 1] = str(out)
        assert main(args) == 2
        assert message in capsys.readouterr().err
    args = list(base)
    args[args.index("--seq-len") + 1] = "1000"
    assert main(args) == 2
    assert "longer than the context of model" in capsys.readouterr().err and not (tmp_path / "out").exists()


def _hub_cache(tmp_path, model_dir):
    """A Hugging Face cache holding ``test-org/tiny-gpt2`` as a download would leave it."""
    snapshot = tmp_path / "hub" / "models--test-org--tiny-gpt2" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for file in model_dir.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    return tmp_path


def test_hub_model_id_loads_from_the_cache_offline(gpt2_dir, tmp_path):
    home = _hub_cache(tmp_path, gpt2_dir)
    env = {
        **os.environ,
        "HF_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    code = (
        "import unlearn_lens as ul\n"
        "m = ul.load_model('test-org/tiny-gpt2', device='cpu')\n"
        "print(ul.ModelDims.of(m).to_dict())\n"
        "try:\n    ul.load_model('test-org/not-downloaded', device='cpu')\n"
        "except ul.UnlearnLensError as exc:\n    print('ERROR', exc)\n"
        "try:\n    ul.load_texts('test-org/not-downloaded-data', limit=1)\n"
        "except ul.UnlearnLensError as exc:\n    print('DATA', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "{'n_layers': 2, 'd_mlp': 64, 'n_heads': 4, 'd_head': 8}" in out.stdout
    assert "ERROR could not load model 'test-org/not-downloaded' as a Hub id" in out.stdout
    assert (
        "DATA could not load dataset 'test-org/not-downloaded-data' (split 'train') from the Hub "
        "(is the network reachable?)"
    ) in out.stdout


def test_bad_rows_and_short_sources_on_the_command_line(gpt2_dir, tmp_path, capsys, caplog):
    """Each bad file gives one error line, exit 2 and no output; empty rows are skipped; a short source warns."""
    prose = tmp_path / "prose.jsonl"
    prose.write_text("".join(json.dumps({"text": f"{PROSE[i % len(PROSE)]} {i}"}) + "\n" for i in range(60)))
    rows = [json.dumps({"text": f"{CODE[i % len(CODE)]} # {i}"}).encode() for i in range(60)]
    files = {
        "bad-utf8.jsonl": b"\n".join(rows[:5] + [b'{"text": "caf\xe9 \xff"}'] + rows[5:]) + b"\n",
        "null-text.jsonl": b"\n".join(rows[:7] + [b'{"other": "x"}'] + rows[7:]) + b"\n",
        "number-text.jsonl": b"\n".join(rows[:3] + [b'{"text": 12}'] + rows[3:]) + b"\n",
        "gaps.jsonl": b"".join(row + b"\n\n" + b'{"text": "  "}\n' for row in rows),
        "short.jsonl": b"\n".join(rows[:9]) + b"\n",
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    cases = [
        ("bad-utf8.jsonl", "is not valid UTF-8 text"),
        ("null-text.jsonl", "row 8 of dataset"),
        ("number-text.jsonl", "has a int, not text"),
    ]
    for name, message in cases:
        assert main(_args(gpt2_dir, tmp_path / "out", str(tmp_path / name), str(prose))) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and err.startswith("unlearn-lens: error:"), err
        assert not (tmp_path / "out").exists()
    # an empty row every other line: skipped, and the rows read say so
    assert main(_args(gpt2_dir, tmp_path / "gaps", str(tmp_path / "gaps.jsonl"), str(prose))) == 0
    info = json.loads((tmp_path / "gaps" / "results.json").read_text())["run"]["info"]
    assert info["forget_tokens"] == 500 and info["forget_rows_read"] == 2 * info["forget_texts_read"] - 1
    # a source shorter than its budgets: the run goes on, and says how many tokens it really used
    assert main(_args(gpt2_dir, tmp_path / "short", str(tmp_path / "short.jsonl"), str(prose))) == 0
    err = caplog.text
    info = json.loads((tmp_path / "short" / "results.json").read_text())["run"]["info"]
    used = info["texts"]["forget"]["evaluation"][0]["tokens"]
    assert 0 < used < 200 and f"the forget dataset ran out: evaluation uses {used:,} tokens, not eval_tokens=200" in err


def test_globs_and_hub_data_files(tmp_path, monkeypatch):
    """Data files named by a glob are streamed; hf:// paths go to the same reader (network not needed to route)."""
    for part in range(3):
        (tmp_path / f"part-{part}.jsonl").write_text(
            "".join(json.dumps({"code": f"x = {part * 10 + i}"}) + "\n" for i in range(10))
        )
    texts = ul.load_texts(str(tmp_path / "part-*.jsonl"), text_field="code")
    assert len(texts) == 30 and "x = 25" in texts
    with pytest.raises(ul.UnlearnLensError, match="has no text field 'text'; its fields are \\['code'\\]"):
        iter_texts(str(tmp_path / "part-*.jsonl"))
    with pytest.raises(ul.UnlearnLensError, match="cannot tell the format"):
        iter_texts("hf://datasets/org/name/data/*.bin")
    import datasets

    seen = []

    def load_dataset(kind, data_files=None, split=None, streaming=False):
        seen.append((kind, data_files, split, streaming))
        return EndlessDataset(CODE)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    stream = iter_texts("hf://datasets/org/code/data/train-*.parquet")
    assert next(stream).startswith(CODE[0])
    assert seen == [("parquet", "hf://datasets/org/code/data/train-*.parquet", "train", True)]
    iter_texts("hf://datasets/org/pile/train/*.jsonl.zst")
    assert seen[-1][0] == "json"
