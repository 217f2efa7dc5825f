"""Tests for local datasets: loading, token caching, packing, sharding and resumable batches."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("datasets")

from farsync.data.corpus import load_text_files  # noqa: E402
from farsync.data.local import (  # noqa: E402
    LocalDataError,
    LocalDataset,
    WindowBatches,
    check_local_dataset,
    load_local_dataset,
    resolve_data_files,
    tokenize_local_dataset,
)
from farsync.data.tokenizer import ByteTokenizer, train_bpe  # noqa: E402

pytestmark = pytest.mark.usefixtures("private_cache")
"""Tokenizers and token caches go to each test's own directory (see tests/conftest.py)."""

DOCS = ["first document: héllo\n", "second one\nwith two lines\n", "third, 日本\n"]


@pytest.fixture
def text_dir(tmp_path: Path) -> Path:
    root = tmp_path / "texts"
    (root / "a").mkdir(parents=True)
    (root / "a.txt").write_text(DOCS[0], encoding="utf-8")
    (root / "a" / "b.md").write_text(DOCS[1], encoding="utf-8")
    (root / "c.py").write_text(DOCS[2], encoding="utf-8")
    (root / "skip.csv").write_text("not picked up")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.txt").write_text("hidden")
    return root


def _jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def _window_set(windows: torch.Tensor) -> list[tuple[int, ...]]:
    return sorted(tuple(row.tolist()) for row in windows)


def test_text_directory_bytes_match_the_corpus_reader(text_dir: Path, tmp_path: Path) -> None:
    # Execute
    tokens = tokenize_local_dataset(text_dir, ByteTokenizer(), cache_dir=tmp_path / "cache")
    corpus = load_text_files(text_dir, val_percent=0)
    # Assert
    visible = [tokens for path, tokens in corpus.train_files if not path.startswith(".")]
    assert tokens.dtype == torch.uint8 and len(visible) == 3 == len(corpus.train_files) - 1
    assert torch.equal(tokens, torch.cat(visible))  # same files in the same order, hidden ones skipped
    assert bytes(tokens.tolist()).decode("utf-8") == DOCS[0] + DOCS[1] + DOCS[2]


def test_token_cache_is_reused_and_keyed_on_file_identity(
    text_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare
    cache = tmp_path / "cache"
    caplog.set_level(logging.INFO, logger="farsync.data.local")
    first = tokenize_local_dataset(text_dir, ByteTokenizer(), cache_dir=cache)
    # Execute
    caplog.clear()
    again = tokenize_local_dataset(text_dir, ByteTokenizer(), cache_dir=cache)
    reused = "reusing cached tokens" in caplog.text
    (text_dir / "c.py").write_text(DOCS[2] + "more\n", encoding="utf-8")
    changed = tokenize_local_dataset(text_dir, ByteTokenizer(), cache_dir=cache)
    # Assert
    assert reused and torch.equal(first, again)
    assert changed.numel() == first.numel() + 5
    assert len(list(cache.glob("tokens-*.npy"))) == 2


def test_jsonl_with_text_field_and_bpe_puts_eos_between_documents(tmp_path: Path) -> None:
    # Prepare
    data = _jsonl(tmp_path / "d.jsonl", [{"id": i, "body": doc} for i, doc in enumerate(DOCS)])
    tokenizer = train_bpe(DOCS * 10, vocab_size=280, cache_dir=tmp_path / "cache")
    # Execute
    tokens = tokenize_local_dataset(data, tokenizer, text_field="body", cache_dir=tmp_path / "cache")
    # Assert
    expected = [token for doc in DOCS for token in [*tokenizer.encode(doc), 0]]
    assert tokens.dtype == torch.int16 and tokens.tolist() == expected


def test_parquet_files_are_read(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    # Prepare
    pq.write_table(pa.table({"content": DOCS[:2]}), tmp_path / "part-0.parquet")
    pq.write_table(pa.table({"content": DOCS[2:]}), tmp_path / "part-1.parquet")
    # Execute
    files = check_local_dataset(tmp_path / "*.parquet", text_field="content")
    tokens = tokenize_local_dataset(
        tmp_path / "*.parquet", ByteTokenizer(), text_field="content", cache_dir=tmp_path / "cache"
    )
    # Assert
    assert files.data_format == "parquet" and [p.name for p in files.files] == [
        "part-0.parquet",
        "part-1.parquet",
    ]
    assert bytes(tokens.tolist()).decode("utf-8") == "".join(DOCS)
    with pytest.raises(LocalDataError, match=r"has no column 'text' \(columns: content\)"):
        check_local_dataset(tmp_path / "part-0.parquet")


def test_missing_text_field_empty_and_missing_paths_are_named(tmp_path: Path) -> None:
    # Prepare
    data = _jsonl(tmp_path / "d.jsonl", [{"body": "x"}])
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.txt").write_text("a")
    _jsonl(tmp_path / "mixed" / "b.jsonl", [{"text": "b"}])
    # Execute / Assert
    with pytest.raises(LocalDataError, match=r"'.*d.jsonl' have no field 'text' \(fields: body\)"):
        check_local_dataset(data)
    with pytest.raises(LocalDataError, match=r"dataset path '.*nope' does not exist; expected a local file"):
        check_local_dataset(tmp_path / "nope")
    with pytest.raises(LocalDataError, match="is empty"):
        check_local_dataset(tmp_path / "empty.txt")
    with pytest.raises(LocalDataError, match=r"mixes formats \(json, text\)"):
        check_local_dataset(tmp_path / "mixed")
    with pytest.raises(LocalDataError, match="matches no files"):
        check_local_dataset(tmp_path / "*.parquet")
    with pytest.raises(LocalDataError, match="unknown data format 'csv'; allowed: auto, text, json, parquet"):
        check_local_dataset(data, data_format="csv")
    assert resolve_data_files(tmp_path / "mixed", data_format="json").files == (
        (tmp_path / "mixed" / "b.jsonl"),
    )


def test_non_string_text_values_are_refused(tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "d.jsonl", [{"text": "ok"}, {"text": 5}])
    with pytest.raises(LocalDataError, match="record 1 has a int in field 'text'"):
        tokenize_local_dataset(data, ByteTokenizer(), cache_dir=tmp_path / "cache")


def _numbers_dataset(tmp_path: Path, count: int, **kwargs: Any) -> LocalDataset:
    # ``count`` printable ASCII bytes (no newline), so byte tokens are exactly the file's bytes.
    data = tmp_path / "numbers.txt"
    data.write_bytes(bytes(i % 90 + 32 for i in range(count)))
    return load_local_dataset(data, ByteTokenizer(), cache_dir=tmp_path / "cache", **kwargs)


def test_packing_split_and_sharding(tmp_path: Path) -> None:
    # Execute
    dataset = _numbers_dataset(tmp_path, 1001, context_length=10, val_fraction=0.1, num_workers=3)
    again = _numbers_dataset(tmp_path, 1001, context_length=10, val_fraction=0.1, split_seed=0)
    shards = [dataset.worker_ids(rank, 3) for rank in range(3)]
    blocks = [dataset.worker_ids(rank, 3, "contiguous") for rank in range(3)]
    # Assert: windows of 11 tokens, stride 10, every token after the first a target exactly once.
    windows = dataset.windows
    assert windows.shape == (100, 11)
    assert torch.equal(windows[1, 0], windows[0, -1]) and torch.equal(
        windows[:, 1:].flatten(), dataset.tokens[1:]
    )
    assert dataset.val_ids.numel() == 10 and dataset.train_ids.numel() == 90
    assert sorted(torch.cat([dataset.train_ids, dataset.val_ids]).tolist()) == list(range(100))
    assert torch.equal(again.val_ids, dataset.val_ids)
    other_seed = _numbers_dataset(tmp_path, 1001, context_length=10, val_fraction=0.1, split_seed=1)
    assert not torch.equal(other_seed.val_ids, dataset.val_ids)
    for ranks in (shards, blocks):
        assert [ids.numel() for ids in ranks] == [30, 30, 30]
        assert sorted(torch.cat(ranks).tolist()) == dataset.train_ids.tolist()
    assert torch.equal(shards[1], dataset.train_ids[1::3])
    assert torch.equal(blocks[1], dataset.train_ids[30:60])


def test_too_little_data_names_the_problem(tmp_path: Path) -> None:
    with pytest.raises(
        LocalDataError, match="has 50 tokens, too few for one window of context_length \\+ 1 = 65"
    ):
        _numbers_dataset(tmp_path, 50, context_length=64)
    with pytest.raises(
        LocalDataError, match="gives 4 training windows of 11 tokens .* fewer than the 8 workers"
    ):
        _numbers_dataset(tmp_path, 51, context_length=10, val_fraction=0.2, num_workers=8)
    dataset = _numbers_dataset(tmp_path, 51, context_length=10, val_fraction=0.2)
    with pytest.raises(LocalDataError, match="only 4 training windows of 11 tokens for 5 workers"):
        dataset.worker_ids(0, 5)


def test_window_batches_read_each_window_once_per_epoch(tmp_path: Path) -> None:
    # Prepare
    dataset = _numbers_dataset(tmp_path, 1001, context_length=10, val_fraction=0.1)
    batches = dataset.train_batches(rank=0, num_workers=2, batch_size=4, seed=3)
    mine = dataset.windows[dataset.worker_ids(0, 2)]
    # Execute: 45 windows per epoch; 45 batches of 4 = 4 epochs exactly.
    drawn = [next(batches) for _ in range(45)]
    # Assert
    x, y = drawn[0]
    assert x.shape == y.shape == (4, 10) and x.dtype == torch.long and torch.equal(x[:, 1:], y[:, :-1])
    rows = torch.cat([torch.cat([x, y[:, -1:]], dim=1) for x, y in drawn])
    for epoch in range(4):
        assert _window_set(rows[epoch * 45 : (epoch + 1) * 45]) == _window_set(mine.long())
    assert not torch.equal(rows[:45], rows[45:90])  # a fresh order each epoch
    assert batches.epoch == 4 and batches.batches_drawn == 45


@pytest.mark.parametrize("stop_after", [3, 11, 12])
def test_window_batches_resume_exactly(tmp_path: Path, stop_after: int) -> None:
    # Prepare: 45 windows and batches of 4, so batch 11 straddles the first epoch boundary.
    dataset = _numbers_dataset(tmp_path, 1001, context_length=10, val_fraction=0.1)
    original = dataset.train_batches(0, 2, batch_size=4, seed=11)
    for _ in range(stop_after):
        next(original)
    state = json.loads(json.dumps(original.state_dict()))  # plain ints: survives JSON
    expected = [next(original) for _ in range(15)]
    # Execute
    resumed = dataset.train_batches(0, 2, batch_size=4, seed=999)
    resumed.load_state_dict(state)
    actual = [next(resumed) for _ in range(15)]
    # Assert
    for (x_expected, y_expected), (x_actual, y_actual) in zip(expected, actual, strict=True):
        assert torch.equal(x_expected, x_actual) and torch.equal(y_expected, y_actual)
    assert resumed.state_dict() == original.state_dict()
    assert state["index"] == (stop_after * 4) % 45 and state["epoch"] == (stop_after * 4) // 45


def test_window_batches_refuse_a_state_for_other_windows() -> None:
    state = WindowBatches(torch.zeros(5, 4, dtype=torch.uint8), 2, seed=0).state_dict()
    with pytest.raises(LocalDataError, match="batch state is for 5 windows but this worker has 6"):
        WindowBatches(torch.zeros(6, 4, dtype=torch.uint8), 2, seed=0).load_state_dict(state)


def test_eval_batches_cover_validation_windows_in_order(tmp_path: Path) -> None:
    # Prepare
    dataset = _numbers_dataset(tmp_path, 1001, context_length=10, val_fraction=0.1)
    # Execute
    full = list(dataset.eval_batches(batch_size=4))
    limited = list(dataset.eval_batches(batch_size=2, max_batches=2))
    # Assert
    assert [x.shape[0] for x, _ in full] == [4, 4, 2]
    expected = dataset.windows[dataset.val_ids].long()
    assert torch.equal(torch.cat([x for x, _ in full]), expected[:, :-1])
    assert torch.equal(torch.cat([y for _, y in full]), expected[:, 1:])
    chosen = torch.cat([x for x, _ in limited])
    assert chosen.shape == (4, 10)
    assert torch.equal(chosen[0], expected[0, :-1]) and torch.equal(chosen[-1], expected[-1, :-1])
    no_val = _numbers_dataset(tmp_path, 1001, context_length=10, val_fraction=0.0)
    with pytest.raises(LocalDataError, match="no validation windows"):
        next(iter(no_val.eval_batches(4)))
