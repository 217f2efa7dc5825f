"""Coordinate-wise trimmed mean of a stack of updates.

The trimmed mean (Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
Rates", arXiv 1803.01498) drops, in every coordinate, the ``floor(beta * n)`` largest and smallest values and
averages the rest. It tolerates up to ``floor(beta * n)`` arbitrary updates.
"""

from __future__ import annotations

import math

import torch

from farsync.aggregate._checks import check_beta, check_stack

__all__ = ["num_trimmed", "trimmed_mean"]

# beta * n in floating point can land just below an integer (0.29 * 100 == 28.999999999999996); this slack
# makes floor() return the integer the caller meant.
_FLOOR_SLACK = 1e-9


def num_trimmed(n: int, beta: float) -> int:
    """Number of values dropped at each end of every coordinate: ``floor(beta * n)``, always ``< n / 2``."""
    check_beta(beta)
    return min(math.floor(beta * n + _FLOOR_SLACK), (n - 1) // 2)


def trimmed_mean(stack: torch.Tensor, beta: float) -> torch.Tensor:
    """Coordinate-wise ``beta``-trimmed mean of the rows of ``stack`` (shape ``[n, d]``), shape ``[d]``.

    ``beta`` must lie in ``[0, 0.5)``; ``beta = 0`` is the plain mean. At least one value per coordinate
    always survives the trimming.
    """
    n, _ = check_stack(stack)
    dropped = num_trimmed(n, beta)
    if dropped == 0:
        return stack.mean(dim=0)
    ordered = stack.sort(dim=0).values
    return ordered[dropped : n - dropped].mean(dim=0)
