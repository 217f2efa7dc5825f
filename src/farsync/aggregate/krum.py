"""Krum and Multi-Krum selection of updates.

Krum (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent",
NeurIPS 2017, arXiv 1703.02757) scores every update by the sum of squared Euclidean distances to its
``n - f - 2`` nearest other updates and keeps the update with the lowest score. Multi-Krum, from the same
paper, averages the ``m`` updates with the lowest scores. Both require ``n > 2f + 2``.
"""

from __future__ import annotations

import torch

from farsync.aggregate._checks import check_byzantine_count, check_count, check_stack

__all__ = ["krum", "krum_scores", "multi_krum"]


def krum_scores(stack: torch.Tensor, f: int) -> torch.Tensor:
    """Krum score of every row of ``stack`` (shape ``[n, d]``), returned with shape ``[n]``; lower is better.

    Raises ``ValueError`` unless ``n > 2f + 2``.
    """
    n, _ = check_stack(stack)
    check_byzantine_count(f)
    if n <= 2 * f + 2:
        raise ValueError(f"krum needs n > 2f + 2 updates: got n={n} with f={f}; allowed f <= {(n - 3) // 2}")
    # Differences are formed explicitly rather than through |a|^2 + |b|^2 - 2ab, which cancels
    # catastrophically when updates are close together: exactly the honest cluster Krum must resolve.
    squared_distances = torch.stack([(stack - row).pow(2).sum(dim=1) for row in stack])
    squared_distances.fill_diagonal_(float("inf"))
    num_neighbours = n - f - 2
    nearest = squared_distances.topk(num_neighbours, dim=1, largest=False).values
    return nearest.sum(dim=1)


def krum(stack: torch.Tensor, f: int) -> torch.Tensor:
    """The row of ``stack`` with the lowest Krum score (first one on ties), returned with shape ``[d]``."""
    scores = krum_scores(stack, f)
    return stack[int(scores.argmin())].clone()


def multi_krum(stack: torch.Tensor, f: int, m: int) -> torch.Tensor:
    """Average of the ``m`` rows of ``stack`` with the lowest Krum scores, returned with shape ``[d]``.

    ``m`` must lie in ``[1, n]``; ``m = 1`` is Krum itself. Ties are broken towards lower row indices.
    """
    n, _ = check_stack(stack)
    check_count("m", m)
    if m > n:
        raise ValueError(f"m must be an integer in [1, n={n}] (updates to average), got {m}")
    scores = krum_scores(stack, f)
    # A stable sort makes tie-breaking deterministic (lowest index first), unlike topk.
    chosen = scores.sort(stable=True).indices[:m]
    return stack[chosen].mean(dim=0)
