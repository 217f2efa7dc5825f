"""CenteredClip against hand-computed fixed points."""

import math
from typing import Any

import pytest
import torch

from farsync.aggregate import centered_clip, centered_clip_with_steps, mean


def test_centered_clip_with_large_tau_equals_mean() -> None:
    # Prepare
    stack = torch.tensor([[1.0, 2.0], [3.0, -4.0], [8.0, 5.0], [0.0, 1.0]])
    # Execute
    result, steps = centered_clip_with_steps(stack, tau=1.0e6)
    # Assert: nothing is clipped, so the first step lands on the mean and the second is ~0.
    torch.testing.assert_close(result, torch.tensor([3.0, 1.0]))
    assert steps == 2


def test_centered_clip_stays_near_honest_mean_with_three_of_seven_outliers() -> None:
    honest = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [0.1, 0.1]])
    outliers = torch.full((3, 2), 1.0e6)
    stack = torch.cat([honest, outliers])
    result = centered_clip(stack, tau=1.0)
    # Fixed point: 4 (honest_mean - v) + 3 tau u = 0, so v sits 3/4 tau from the honest mean towards the
    # outliers, while the plain mean is about 3/7 * 1e6 * sqrt(2) away.
    honest_mean = honest.mean(dim=0)
    shift = result - honest_mean
    assert math.isclose(float(shift.norm()), 0.75, abs_tol=1e-4)
    torch.testing.assert_close(shift[0], shift[1])
    assert float((mean(stack) - honest_mean).norm()) > 1.0e5


def test_centered_clip_stops_when_converged() -> None:
    stack = torch.tensor([[2.0, -1.0]] * 5)
    result, steps = centered_clip_with_steps(stack, tau=0.5, num_iters=20)
    torch.testing.assert_close(result, torch.tensor([2.0, -1.0]))
    assert steps == 1


def test_centered_clip_honours_num_iters_and_init() -> None:
    # One clipped step from init 0 towards two points at distance 10: each contributes tau=1 along x.
    stack = torch.tensor([[10.0], [10.0]])
    result, steps = centered_clip_with_steps(stack, tau=1.0, num_iters=1, init=torch.zeros(1))
    torch.testing.assert_close(result, torch.tensor([1.0]))
    assert steps == 1


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [({"tau": 0.0}, "tau"), ({"tau": 1.0, "num_iters": 0}, "num_iters"), ({"tau": 1.0, "tol": -1.0}, "tol")],
)
def test_centered_clip_rejects_bad_parameters(kwargs: dict[str, Any], parameter: str) -> None:
    with pytest.raises(ValueError, match=parameter):
        centered_clip(torch.ones(3, 2), **kwargs)


def test_centered_clip_rejects_init_of_wrong_shape() -> None:
    with pytest.raises(ValueError, match="init"):
        centered_clip(torch.ones(3, 2), tau=1.0, init=torch.zeros(3))
