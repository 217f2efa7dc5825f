"""Tests for the batch iterators and validation windows."""

from __future__ import annotations

import pytest
import torch

from farsync.data import ArrayBatches, TokenBatches, eval_batches


def test_token_batches_shift_targets_by_one() -> None:
    # Prepare
    tokens = torch.arange(200, dtype=torch.uint8)
    # Execute
    x, y = next(TokenBatches(tokens, batch_size=4, context_length=16, seed=0))
    # Assert
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.long
    assert torch.equal(y, x + 1)
    assert int(y.max()) <= 199


def test_token_batches_resume_yields_identical_next_batches() -> None:
    # Prepare
    tokens = torch.randint(0, 256, (5_000,), dtype=torch.uint8)
    original = TokenBatches(tokens, batch_size=3, context_length=32, seed=7)
    for _ in range(5):
        next(original)
    state = original.state_dict()
    expected = [next(original) for _ in range(4)]
    # Execute
    resumed = TokenBatches(tokens, batch_size=3, context_length=32, seed=999)
    resumed.load_state_dict(state)
    actual = [next(resumed) for _ in range(4)]
    # Assert
    for (x_expected, y_expected), (x_actual, y_actual) in zip(expected, actual, strict=True):
        assert torch.equal(x_expected, x_actual) and torch.equal(y_expected, y_actual)
    assert resumed.batches_drawn == original.batches_drawn == 9


def test_token_batches_short_shard_names_sizes() -> None:
    with pytest.raises(ValueError, match=r"10 tokens.*context_length 16"):
        TokenBatches(torch.zeros(10, dtype=torch.uint8), batch_size=2, context_length=16, seed=0)


def test_array_batches_cover_each_item_once_per_epoch() -> None:
    # Prepare
    x = torch.arange(10).float().unsqueeze(1)
    y = torch.arange(10)
    batches = ArrayBatches(x, y, batch_size=4, seed=0)
    # Execute
    first_epoch = [next(batches) for _ in range(3)]
    second_epoch = [next(batches) for _ in range(3)]
    # Assert
    for epoch in (first_epoch, second_epoch):
        seen = torch.cat([labels for _, labels in epoch])
        assert torch.equal(torch.sort(seen).values, y)
        assert [labels.numel() for _, labels in epoch] == [4, 4, 2]
        assert all(torch.equal(features.squeeze(1).long(), labels) for features, labels in epoch)
    assert batches.epoch == 2
    assert not torch.equal(torch.cat([b for _, b in first_epoch]), torch.cat([b for _, b in second_epoch]))


def test_array_batches_full_batch_and_resume() -> None:
    # Prepare
    x, y = torch.randn(12, 3), torch.arange(12)
    full = ArrayBatches(x, y, batch_size=None, seed=0)
    original = ArrayBatches(x, y, batch_size=5, seed=3)
    next(original)
    state = original.state_dict()
    expected = [next(original)[1] for _ in range(5)]
    # Execute
    full_x, _ = next(full)
    resumed = ArrayBatches(x, y, batch_size=5, seed=0)
    resumed.load_state_dict(state)
    actual = [next(resumed)[1] for _ in range(5)]
    # Assert
    assert full_x.shape == (12, 3) and full.epoch == 1
    assert all(torch.equal(a, b) for a, b in zip(expected, actual, strict=True))
    assert resumed.epoch == original.epoch == 2


def test_array_batches_rejects_batch_larger_than_dataset() -> None:
    with pytest.raises(ValueError, match=r"batch_size 20.*size 12"):
        ArrayBatches(torch.zeros(12, 2), torch.zeros(12), batch_size=20, seed=0)


def test_eval_batches_score_every_token_once() -> None:
    # Prepare
    tokens = torch.arange(101, dtype=torch.uint8)
    # Execute
    batches = list(eval_batches(tokens, batch_size=3, context_length=10, max_batches=None))
    # Assert
    targets = torch.cat([y.flatten() for _, y in batches])
    assert torch.equal(targets, torch.arange(1, 101))
    assert [x.shape[0] for x, _ in batches] == [3, 3, 3, 1]


def test_eval_batches_cap_spreads_windows_over_shard() -> None:
    # Prepare
    tokens = torch.arange(201, dtype=torch.uint8)
    # Execute
    batches = list(eval_batches(tokens, batch_size=2, context_length=10, max_batches=1))
    # Assert
    assert len(batches) == 1
    x, _ = batches[0]
    assert x[:, 0].tolist() == [0, 190]
