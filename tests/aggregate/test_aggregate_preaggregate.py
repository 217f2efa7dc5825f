"""Nearest-neighbour mixing and bucketing against hand-computed values."""

import pytest
import torch

from farsync.aggregate import bucketing, nearest_neighbor_mixing


def column(*values: float) -> torch.Tensor:
    return torch.tensor(values).reshape(-1, 1)


def test_nnm_averages_each_row_with_its_nearest_rows() -> None:
    # Prepare: n = 3, f = 1, so every row averages its 2 nearest rows (itself included).
    stack = column(0.0, 1.0, 10.0)
    # Execute
    mixed = nearest_neighbor_mixing(stack, f=1)
    # Assert: 0 -> {0, 1}; 1 -> {1, 0}; 10 -> {10, 1}.
    torch.testing.assert_close(mixed, column(0.5, 0.5, 5.5))


def test_nnm_breaks_ties_towards_lower_rows() -> None:
    # Rows 1 and 2 are both at distance 1 from row 0: row 1 is taken.
    mixed = nearest_neighbor_mixing(column(0.0, 1.0, -1.0), f=1)
    torch.testing.assert_close(mixed[0], torch.tensor([0.5]))


def test_nnm_keeps_honest_rows_honest_and_bounds_an_outlier() -> None:
    # Prepare: three honest rows near (1, 1) and one attacker far away; f = 1.
    stack = torch.tensor([[1.0, 1.0], [1.2, 0.8], [0.8, 1.2], [100.0, -100.0]])
    # Execute
    mixed = nearest_neighbor_mixing(stack, f=1)
    # Assert: honest rows become the honest mean; the attacker's row is diluted to 1 / (n - f) of itself.
    for row in mixed[:3]:
        torch.testing.assert_close(row, torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(mixed[3], (stack[3] + stack[0] + stack[1]) / 3)


def test_nnm_with_f_zero_is_the_mean_everywhere_and_f_must_be_below_n() -> None:
    stack = column(1.0, 2.0, 6.0)
    torch.testing.assert_close(nearest_neighbor_mixing(stack, f=0), column(3.0, 3.0, 3.0))
    with pytest.raises(ValueError, match="f must be < n=3"):
        nearest_neighbor_mixing(stack, f=3)
    with pytest.raises(ValueError, match="f must be an integer >= 0"):
        nearest_neighbor_mixing(stack, f=-1)


def test_bucketing_averages_disjoint_buckets_covering_every_row() -> None:
    # Prepare: powers of two, so twice a bucket mean of two rows names its two rows.
    stack = column(1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
    # Execute
    buckets = bucketing(stack, 2, torch.Generator().manual_seed(3))
    # Assert: three buckets whose members partition the six rows.
    sums = [int(round(2 * float(b))) for b in buckets.flatten()]
    members = [{bit for bit in range(6) if total >> bit & 1} for total in sums]
    assert all(len(group) == 2 for group in members)
    assert set().union(*members) == set(range(6))


def test_bucketing_last_bucket_takes_the_remainder_and_is_reproducible() -> None:
    stack = column(1.0, 2.0, 4.0, 8.0)
    first = bucketing(stack, 3, torch.Generator().manual_seed(1))
    again = bucketing(stack, 3, torch.Generator().manual_seed(1))
    assert first.shape == (2, 1)
    torch.testing.assert_close(first, again)
    # Three rows in the first bucket and one in the last: the sums add up to the total.
    torch.testing.assert_close(3 * first[0] + first[1], torch.tensor([15.0]))
    with pytest.raises(ValueError, match="bucket_size must be an integer >= 1"):
        bucketing(stack, 0, torch.Generator())


def test_bucket_size_one_only_shuffles() -> None:
    stack = column(1.0, 2.0, 3.0)
    shuffled = bucketing(stack, 1, torch.Generator().manual_seed(0))
    assert sorted(shuffled.flatten().tolist()) == [1.0, 2.0, 3.0]
