"""Coordinate-wise trimmed mean against hand-computed values."""

import pytest
import torch

from farsync.aggregate import num_trimmed, trimmed_mean


def test_trimmed_mean_drops_extremes_per_coordinate() -> None:
    # Prepare: n=5, beta=0.2 drops one value at each end of each column.
    stack = torch.tensor([[1.0, -50.0], [2.0, 0.0], [3.0, 0.0], [4.0, 3.0], [100.0, 3.0]])
    # Execute
    result = trimmed_mean(stack, beta=0.2)
    # Assert: column 0 keeps 2, 3, 4; column 1 keeps 0, 0, 3.
    torch.testing.assert_close(result, torch.tensor([3.0, 1.0]))


def test_trimmed_mean_with_zero_beta_is_mean() -> None:
    stack = torch.tensor([[1.0], [2.0], [9.0]])
    result = trimmed_mean(stack, beta=0.0)
    torch.testing.assert_close(result, torch.tensor([4.0]))


@pytest.mark.parametrize(
    ("n", "beta", "expected"), [(10, 0.1, 1), (100, 0.29, 29), (2, 0.45, 0), (3, 0.49, 1), (7, 0.3, 2)]
)
def test_num_trimmed_is_floor_of_beta_n(n: int, beta: float, expected: int) -> None:
    assert num_trimmed(n, beta) == expected


def test_trimmed_mean_keeps_at_least_the_middle_value() -> None:
    stack = torch.tensor([[-7.0], [5.0], [8.0]])
    result = trimmed_mean(stack, beta=0.49)
    torch.testing.assert_close(result, torch.tensor([5.0]))


@pytest.mark.parametrize("beta", [0.5, -0.1, 1.0])
def test_trimmed_mean_rejects_beta_outside_range(beta: float) -> None:
    with pytest.raises(ValueError, match=r"beta must be a float in \[0, 0.5\)"):
        trimmed_mean(torch.ones(4, 2), beta=beta)
