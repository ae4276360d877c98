"""Text sources and token packing."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CODE, PROSE

import unlearn_lens as ul


def test_list_source_drops_empty_texts():
    assert ul.load_texts(["a", "", "  ", "b"]) == ["a", "b"]


def test_limit():
    assert ul.load_texts(PROSE, limit=3) == PROSE[:3]
    with pytest.raises(ul.UnlearnLensError, match="limit"):
        ul.load_texts(PROSE, limit=0)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_local_files(tmp_path, suffix):
    import datasets

    rows = [{"body": t, "id": i} for i, t in enumerate(PROSE[:5])]
    path = tmp_path / f"data{suffix}"
    ds = datasets.Dataset.from_list(rows)
    if suffix == ".jsonl":
        ds.to_json(path, lines=True)
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix == ".csv":
        ds.to_csv(path)
    else:
        ds.to_parquet(path)
    assert ul.load_texts(str(path), text_field="body") == PROSE[:5]
    with pytest.raises(ul.UnlearnLensError, match=r"no text field 'text'.*\['body', 'id'\]"):
        ul.load_texts(str(path))


def test_txt_file_and_folder(tmp_path):
    (tmp_path / "a.txt").write_text(CODE[0])
    (tmp_path / "b.txt").write_text(CODE[1])
    assert ul.load_texts(str(tmp_path / "a.txt")) == [CODE[0]]
    assert ul.load_texts(str(tmp_path)) == [CODE[0], CODE[1]]


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(ul.UnlearnLensError, match="does not exist"):
        ul.load_texts(str(tmp_path / "nope.txt"))
    (tmp_path / "empty.txt").write_text("   \n")
    with pytest.raises(ul.UnlearnLensError, match="no non-empty texts"):
        ul.load_texts(str(tmp_path / "empty.txt"))
    with pytest.raises(ul.UnlearnLensError, match="no non-empty texts"):
        ul.load_texts([])


def test_corrupt_jsonl(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(ul.UnlearnLensError, match="bad.jsonl"):
        ul.load_texts(str(path))


def test_packing(tokenizer):
    texts = PROSE[:4]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    stream = [i for seq in ids for i in (*seq, tokenizer.eos_token_id)]
    packed = ul.tokenize_texts(tokenizer, texts, seq_len=16)
    assert packed.tokens.shape[1] == 16
    assert (packed.tokens[:, 0] == tokenizer.bos_token_id).all()
    assert not packed.valid[:, 0].any()
    assert packed.n_tokens == len(stream)
    assert packed.tokens[:, 1:][packed.valid[:, 1:]].tolist() == stream
    # only the last row is padded
    assert packed.valid[:-1, 1:].all()


def test_packing_budget_and_split(tokenizer):
    packed = ul.tokenize_texts(tokenizer, CODE, seq_len=32, max_tokens=200)
    assert packed.n_tokens == 200
    head, tail = packed.split(70)
    assert head.n_tokens == 70 and tail.n_tokens == 130
    assert len(head) + len(tail) == len(packed) + 1  # the row at the boundary is shared
    assert torch.equal(head.valid[-1] | tail.valid[0], packed.valid[len(head) - 1])
    with pytest.raises(ul.UnlearnLensError, match="seq_len"):
        ul.tokenize_texts(tokenizer, CODE, seq_len=1)
    with pytest.raises(ul.UnlearnLensError, match="empty dataset"):
        ul.tokenize_texts(tokenizer, [], seq_len=8)


def test_budgets_are_packed_from_texts_of_their_own(tokenizer):
    texts = [f"{CODE[i % len(CODE)]} # {i}" for i in range(40)]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts]  # + EOS
    from unlearn_lens.data import token_budgets

    first, second, rest = token_budgets(tokenizer, texts, [100, 60, None], seq_len=16)
    assert (first.n_tokens, second.n_tokens) == (100, 60)
    # the first budget ends inside text k; the second starts at text k + 1, with that text's first token
    k = next(i for i in range(len(texts)) if sum(lengths[: i + 1]) >= 100)
    assert first.text_ranges() == [{"source": "the given texts", "texts": [0, k + 1], "tokens": 100}]
    assert second.text_ranges()[0]["texts"][0] == k + 1 and first.n_texts == k + 1
    expected = tokenizer(texts[k + 1], add_special_tokens=False)["input_ids"][:5]
    assert second.tokens[0, 1:6].tolist() == expected
    assert rest.text_ranges()[0]["texts"] == [second.text_ranges()[0]["texts"][1], 40]
    assert rest.n_tokens == sum(lengths[rest.text_ranges()[0]["texts"][0] :])
    # a token set split inside a text names that text on both sides
    whole = ul.tokenize_texts(tokenizer, texts, seq_len=16)
    cut = sum(lengths[:3]) + 2
    head, tail = whole.split(cut)
    assert head.text_ranges()[0]["texts"] == [0, 4] and tail.text_ranges()[0]["texts"] == [3, 40]
    assert head.text_ranges()[0]["tokens"] + tail.text_ranges()[0]["tokens"] == whole.n_tokens
    head, tail = whole.split(sum(lengths[:3]))  # on a text boundary: nothing shared
    assert head.text_ranges()[0]["texts"] == [0, 3] and tail.text_ranges()[0]["texts"] == [3, 40]


def test_batches_cover_all_rows(tokenizer):
    packed = ul.tokenize_texts(tokenizer, CODE, seq_len=16)
    rows = torch.cat([b.tokens for b in packed.batches(3)])
    assert torch.equal(rows, packed.tokens)


def test_loading_leaves_the_datasets_settings_alone(tmp_path):
    """load_texts quiets `datasets` for its own call only: the user's verbosity and progress bars stay as set."""
    import datasets
    from datasets.utils import logging as ds_logging

    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in PROSE[:4]))
    before = (ds_logging.get_verbosity(), datasets.utils.are_progress_bars_disabled())
    try:
        for verbosity, bars_off in ((ds_logging.INFO, False), (ds_logging.DEBUG, True)):
            ds_logging.set_verbosity(verbosity)
            (datasets.utils.disable_progress_bars if bars_off else datasets.utils.enable_progress_bars)()
            assert ul.load_texts(str(path)) == PROSE[:4]
            assert ds_logging.get_verbosity() == verbosity
            assert datasets.utils.are_progress_bars_disabled() == bars_off
    finally:
        ds_logging.set_verbosity(before[0])
        (datasets.utils.disable_progress_bars if before[1] else datasets.utils.enable_progress_bars)()


def test_atomic_writes_never_touch_the_umask(tmp_path, monkeypatch):
    """The process umask is read by no one (reading it means setting it, which races other threads)."""
    import os
    import stat

    from unlearn_lens._io import atomic_dir, write_text

    old = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda *a: pytest.fail("os.umask was called"))
        write_text(tmp_path / "a.txt", "hello")
        with atomic_dir(tmp_path / "d") as tmp:
            write_text(tmp / "b.txt", "inside")
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o750
    assert (tmp_path / "d" / "b.txt").read_text() == "inside"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "d"]


def test_mixed_sources_share_every_budget(gpt2):
    from unlearn_lens.data import mix_token_sets
    from unlearn_lens.sources import iter_texts

    a = ul.tokenize_texts(gpt2.tokenizer, CODE, seq_len=16)
    b = ul.tokenize_texts(gpt2.tokenizer, PROSE, seq_len=16)
    mixed = mix_token_sets(gpt2, [a, b], [3, 1], [200, 100])
    collect, held = mixed.split(200)
    stream_a, stream_b = a.tokens[a.valid], b.tokens[b.valid]
    # statistics: 150 tokens of a then 50 of b; evaluation: the next 75 of a, then the next 25 of b
    assert torch.equal(collect.tokens[collect.valid], torch.cat([stream_a[:150], stream_b[:50]]))
    assert torch.equal(held.tokens[held.valid], torch.cat([stream_a[150:225], stream_b[50:75]]))
    streams = [iter_texts(CODE), iter_texts(PROSE)]
    lazy = mix_token_sets(gpt2, streams, None, [200, 100], seq_len=16)
    assert lazy.n_tokens == 300 and 0 < lazy.n_texts <= sum(s.n_texts for s in streams)
    # each source's statistics and evaluation parts are packed from texts of their own
    collect, held = lazy.split(200)
    assert [(r["source"], r["tokens"]) for r in collect.text_ranges()] == [("the given texts", 100)] * 2
    assert [r["tokens"] for r in held.text_ranges()] == [50, 50]
    for before, after in zip(collect.text_ranges(), held.text_ranges()):
        assert before["texts"][1] == after["texts"][0]
    with pytest.raises(ul.UnlearnLensError, match="one positive share per source"):
        mix_token_sets(gpt2, [a, b], [1], [10])
    with pytest.raises(ul.UnlearnLensError, match="where its share of the budgets"):
        mix_token_sets(gpt2, [a, CODE[:1]], None, [400, 400], seq_len=16)
