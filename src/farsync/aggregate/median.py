"""Coordinate-wise median of a stack of updates.

The coordinate-wise median (Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates", arXiv 1803.01498) is unaffected by any set of fewer than half of the updates, whatever
their values.
"""

from __future__ import annotations

import torch

from farsync.aggregate._checks import check_stack

__all__ = ["median"]


def median(stack: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median of the rows of ``stack`` (shape ``[n, d]``), returned with shape ``[d]``.

    For even ``n`` this returns the average of the two middle values in each coordinate. Note that
    ``torch.median`` returns the lower of the two instead, which biases the result downwards; we average
    so that the rule is symmetric under negating every update.
    """
    n, _ = check_stack(stack)
    ordered = stack.sort(dim=0).values
    upper_middle = ordered[n // 2]
    if n % 2 == 1:
        return upper_middle.clone()
    return (ordered[n // 2 - 1] + upper_middle) / 2
