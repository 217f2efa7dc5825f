"""Mean, weighted mean and coordinate-wise median against hand-computed values."""

import pytest
import torch

from farsync.aggregate import mean, median, weighted_mean


def test_mean_averages_rows() -> None:
    # Prepare
    stack = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 12.0]])
    # Execute
    result = mean(stack)
    # Assert
    torch.testing.assert_close(result, torch.tensor([3.0, 6.0]))


def test_mean_is_broken_by_one_huge_outlier() -> None:
    stack = torch.tensor([[0.0], [0.0], [0.0], [1.0e6]])
    result = mean(stack)
    torch.testing.assert_close(result, torch.tensor([250000.0]))


def test_weighted_mean_normalises_weights() -> None:
    stack = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 12.0]])
    weights = torch.tensor([1.0, 1.0, 2.0])
    result = weighted_mean(stack, weights)
    # Normalised weights 0.25, 0.25, 0.5.
    torch.testing.assert_close(result, torch.tensor([3.5, 7.5]))


@pytest.mark.parametrize(
    "weights",
    [torch.zeros(3), torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([1.0, -1.0, 1.0]), torch.ones(2)],
)
def test_weighted_mean_rejects_bad_weights(weights: torch.Tensor) -> None:
    stack = torch.ones(3, 2)
    with pytest.raises(ValueError, match="weights"):
        weighted_mean(stack, weights)


def test_median_odd_n_picks_middle_value() -> None:
    stack = torch.tensor([[1.0, 10.0], [3.0, -2.0], [2.0, 5.0]])
    result = median(stack)
    torch.testing.assert_close(result, torch.tensor([2.0, 5.0]))


def test_median_even_n_averages_two_middle_values() -> None:
    stack = torch.tensor([[1.0], [2.0], [4.0], [10.0]])
    result = median(stack)
    # torch.median would return the lower middle value, 2.0.
    torch.testing.assert_close(result, torch.tensor([3.0]))


def test_median_ignores_fewer_than_half_outliers() -> None:
    honest = torch.tensor([[1.0, -1.0], [2.0, -2.0], [3.0, -3.0]])
    outliers = torch.tensor([[1.0e9, -1.0e9], [-1.0e9, 1.0e9]])
    result = median(torch.cat([honest, outliers]))
    torch.testing.assert_close(result, torch.tensor([2.0, -2.0]))


@pytest.mark.parametrize("bad_stack", [torch.ones(3), torch.ones(0, 4), torch.ones(2, 2, dtype=torch.int64)])
def test_rules_reject_malformed_stack(bad_stack: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="stack"):
        median(bad_stack)
    with pytest.raises(ValueError, match="stack"):
        mean(bad_stack)
