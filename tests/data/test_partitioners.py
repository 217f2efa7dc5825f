"""Tests for the partitioners, with hand-made labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from farsync.data import TextCorpus, dirichlet, file_class, iid, pathological, shard_text


def _assert_exact_cover(parts: list[np.ndarray], num_items: int) -> None:
    merged = np.concatenate(parts)
    assert np.array_equal(np.sort(merged), np.arange(num_items))


def _mean_largest_label_share(parts: list[np.ndarray], labels: np.ndarray) -> float:
    shares = [np.bincount(labels[part]).max() / part.size for part in parts]
    return float(np.mean(shares))


def test_iid_covers_each_item_once_with_balanced_sizes() -> None:
    # Prepare / Execute
    parts = iid(103, 10, seed=1)
    # Assert
    _assert_exact_cover(parts, 103)
    assert {part.size for part in parts} == {10, 11}
    assert [p.tolist() for p in parts] == [p.tolist() for p in iid(103, 10, seed=1)]


def test_dirichlet_small_alpha_is_skewed_and_large_alpha_is_not() -> None:
    # Prepare
    labels = np.repeat(np.arange(10), 200)
    # Execute
    skewed = dirichlet(labels, 10, alpha=0.05, seed=0)
    uniform = dirichlet(labels, 10, alpha=1000.0, seed=0)
    # Assert
    _assert_exact_cover(skewed, labels.size)
    _assert_exact_cover(uniform, labels.size)
    assert _mean_largest_label_share(skewed, labels) > 0.5
    assert _mean_largest_label_share(uniform, labels) < 0.2


def test_dirichlet_respects_min_size() -> None:
    # Prepare
    labels = np.repeat(np.arange(5), 40)
    # Execute
    parts = dirichlet(labels, 8, alpha=0.3, seed=2, min_size=5)
    # Assert
    assert min(part.size for part in parts) >= 5
    _assert_exact_cover(parts, labels.size)


def test_pathological_gives_each_part_at_most_two_labels() -> None:
    # Prepare: 200 shards of 10 items, each inside one label.
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 200))
    # Execute
    parts = pathological(labels, 100, shards_per_part=2, seed=0)
    # Assert
    _assert_exact_cover(parts, labels.size)
    assert all(np.unique(labels[part]).size <= 2 for part in parts)
    assert all(part.size == 20 for part in parts)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: dirichlet(np.zeros(10, dtype=np.int64), 2, alpha=0.0, seed=0), "alpha"),
        (lambda: iid(10, 0, seed=0), "num_parts"),
        (lambda: iid(3, 4, seed=0), "more parts than items"),
        (lambda: dirichlet(np.zeros(3, dtype=np.int64), 4, alpha=1.0, seed=0), "more parts than items"),
        (lambda: pathological(np.zeros(10, dtype=np.int64), 6, shards_per_part=2), "shards"),
        (lambda: dirichlet(np.zeros(10), 2, alpha=1.0, seed=0), "integer"),
    ],
)
def test_partitioner_errors(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]


def _toy_corpus() -> TextCorpus:
    files = [(f"pkg{i % 7}/file{i}.py", torch.full((1000,), i, dtype=torch.uint8)) for i in range(40)]
    return TextCorpus(train_files=files, val_tokens=torch.zeros(0, dtype=torch.uint8))


def test_shard_text_iid_keeps_every_byte_and_balances() -> None:
    # Prepare
    corpus = _toy_corpus()
    # Execute
    shards = shard_text(corpus, 4, scheme="iid", seed=0, chunk_size=250)
    # Assert
    assert all(shard.dtype == torch.uint8 and shard.ndim == 1 for shard in shards)
    assert [shard.numel() for shard in shards] == [10_000] * 4
    assert torch.equal(torch.sort(torch.cat(shards)).values, torch.sort(corpus.train_tokens()).values)


def test_shard_text_dirichlet_concentrates_file_classes() -> None:
    # Prepare
    corpus = _toy_corpus()
    classes = np.array([file_class(path, 10) for path, _ in corpus.train_files])
    # Execute
    shards = shard_text(corpus, 4, scheme="dirichlet", alpha=0.05, seed=0, chunk_size=250)
    # Assert
    assert sum(shard.numel() for shard in shards) == 40_000
    dominant = []
    for shard in shards:
        shard_classes = classes[shard.long().numpy()]
        dominant.append(np.bincount(shard_classes).max() / shard_classes.size)
    assert np.mean(dominant) > 0.5


def test_shard_text_rejects_unknown_scheme() -> None:
    with pytest.raises(ValueError, match="scheme"):
        shard_text(_toy_corpus(), 2, scheme="zipf")  # type: ignore[arg-type]
