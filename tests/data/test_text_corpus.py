"""Tests for text corpus loading and the train/validation split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from farsync.data import is_validation_file, load_stdlib_corpus, load_text_files


def _write_tree(root: Path, count: int) -> None:
    for index in range(count):
        package = root / f"pkg{index % 3}"
        package.mkdir(exist_ok=True)
        (package / f"module_{index}.py").write_text(f"value_{index} = {index}\n" * 5)
    (root / "notes.md").write_text("# notes\n")
    (root / "image.bin").write_bytes(b"\x00\x01")
    (root / "empty.txt").write_text("")


def test_split_is_by_file_deterministic_and_disjoint(tmp_path: Path) -> None:
    # Prepare
    _write_tree(tmp_path, 60)
    # Execute
    first = load_text_files(tmp_path, val_percent=20)
    second = load_text_files(tmp_path, val_percent=20)
    # Assert
    train_paths = [path for path, _ in first.train_files]
    assert train_paths == sorted(train_paths) == [path for path, _ in second.train_files]
    assert first.val_paths == second.val_paths and first.val_paths
    assert set(train_paths).isdisjoint(first.val_paths)
    assert len(train_paths) + len(first.val_paths) == 61  # 60 modules + notes.md; .bin and empty skipped
    assert all(is_validation_file(path, 20) for path in first.val_paths)
    total = sum((tmp_path / path).stat().st_size for path in train_paths + first.val_paths)
    assert first.train_tokens().numel() + first.val_tokens.numel() == total


def test_train_tokens_are_the_file_bytes(tmp_path: Path) -> None:
    # Prepare
    (tmp_path / "a.txt").write_bytes(b"hello ")
    (tmp_path / "b.txt").write_bytes(b"world")
    # Execute
    corpus = load_text_files(tmp_path, val_percent=0)
    # Assert
    assert bytes(corpus.train_tokens().tolist()) == b"hello world"
    assert corpus.train_tokens().dtype == torch.uint8
    assert corpus.val_tokens.numel() == 0


def test_single_file_holds_out_its_tail(tmp_path: Path) -> None:
    # Prepare
    file = tmp_path / "data.log"
    file.write_bytes(bytes(range(100)))
    # Execute
    corpus = load_text_files(file, val_percent=10)
    # Assert
    assert bytes(corpus.train_tokens().tolist()) == bytes(range(90))
    assert bytes(corpus.val_tokens.tolist()) == bytes(range(90, 100))


def test_max_bytes_takes_a_sorted_prefix(tmp_path: Path) -> None:
    # Prepare
    for name in ("c.txt", "a.txt", "b.txt"):
        (tmp_path / name).write_bytes(b"x" * 10)
    # Execute
    corpus = load_text_files(tmp_path, val_percent=0, max_bytes=25)
    # Assert
    assert [path for path, _ in corpus.train_files] == ["a.txt", "b.txt"]


def test_missing_and_empty_paths_name_the_path(tmp_path: Path) -> None:
    # Prepare
    missing = tmp_path / "nowhere"
    empty = tmp_path / "empty"
    empty.mkdir()
    # Execute / Assert
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_text_files(missing)
    with pytest.raises(ValueError, match="empty"):
        load_text_files(empty)


def test_stdlib_corpus_is_nonempty_python_source() -> None:
    # Prepare / Execute
    corpus = load_stdlib_corpus(max_bytes=2_000_000)
    # Assert
    assert corpus.train_files and corpus.val_tokens.numel() > 0
    assert all(path.endswith(".py") and "site-packages" not in path for path, _ in corpus.train_files)
    assert corpus.num_train_bytes + corpus.val_tokens.numel() <= 2_000_000
    assert b"def " in bytes(corpus.train_tokens()[:200_000].tolist())
