"""Krum and Multi-Krum against hand-computed scores."""

import pytest
import torch

from farsync.aggregate import krum, krum_scores, multi_krum

# One dimension, n=5, f=1, so each score sums the 2 nearest squared distances:
# 0 -> 1 + 4 = 5, 1 -> 1 + 1 = 2, 2 -> 1 + 4 = 5, 100 -> 1 + 98^2 = 9605, 101 -> 1 + 99^2 = 9802.
STACK = torch.tensor([[0.0], [1.0], [2.0], [100.0], [101.0]])


def test_krum_scores_match_hand_computation() -> None:
    scores = krum_scores(STACK, f=1)
    torch.testing.assert_close(scores, torch.tensor([5.0, 2.0, 5.0, 9605.0, 9802.0]))


def test_krum_picks_the_honest_cluster() -> None:
    result = krum(STACK, f=1)
    torch.testing.assert_close(result, torch.tensor([1.0]))


def test_krum_picks_honest_update_in_two_dimensions() -> None:
    honest = torch.tensor([[1.0, 1.0], [1.1, 0.9], [0.9, 1.1], [1.0, 1.05], [0.95, 1.0]])
    byzantine = torch.tensor([[-50.0, 80.0], [-50.0, 80.0]])
    result = krum(torch.cat([honest, byzantine]), f=2)
    assert any(torch.equal(result, row) for row in honest)


def test_multi_krum_averages_best_m() -> None:
    result = multi_krum(STACK, f=1, m=3)
    torch.testing.assert_close(result, torch.tensor([1.0]))


def test_multi_krum_breaks_ties_towards_lower_index() -> None:
    # Scores 2, 5, 5: rows 1 and 0 are kept, not row 2.
    result = multi_krum(STACK, f=1, m=2)
    torch.testing.assert_close(result, torch.tensor([0.5]))


def test_krum_rejects_too_few_updates() -> None:
    with pytest.raises(ValueError, match=r"n > 2f \+ 2.*n=4 with f=1"):
        krum(torch.ones(4, 3), f=1)


@pytest.mark.parametrize("m", [0, 6])
def test_multi_krum_rejects_m_outside_range(m: int) -> None:
    with pytest.raises(ValueError, match="m must be"):
        multi_krum(STACK, f=1, m=m)
