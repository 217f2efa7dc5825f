"""Plain and weighted averaging of a stack of updates.

The mean is the non-robust baseline (FedAvg, McMahan et al. 2017, arXiv 1602.05629, and the outer
all-reduce of DiLoCo, Douillard et al. 2023, arXiv 2311.08105): a single arbitrary update can move it
anywhere, which is exactly what the robust rules in this package guard against.
"""

from __future__ import annotations

import torch

from farsync.aggregate._checks import check_stack

__all__ = ["mean", "weighted_mean"]


def mean(stack: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise average of the ``n`` rows of ``stack`` (shape ``[n, d]``), returned with shape ``[d]``."""
    check_stack(stack)
    return stack.mean(dim=0)


def weighted_mean(stack: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Average of the rows of ``stack`` weighted by ``weights`` (shape ``[n]``), normalised to sum to one.

    Weights are typically sample counts (FedAvg). They must be finite and non-negative with a positive sum;
    anything else raises ``ValueError`` because there is no meaningful normalisation.
    """
    n, _ = check_stack(stack)
    if not isinstance(weights, torch.Tensor) or weights.shape != (n,):
        shape = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise ValueError(f"weights must be a tensor of shape [n]=({n},), got {shape}")
    # Normalise in float64 so that very unequal weights (e.g. sample counts) do not lose precision.
    weights64 = weights.to(dtype=torch.float64)
    if not bool(torch.isfinite(weights64).all()) or bool((weights64 < 0).any()):
        raise ValueError(f"weights must be finite and >= 0, got {weights.tolist()}")
    total = weights64.sum()
    if float(total) <= 0.0:
        raise ValueError(f"weights must have a positive sum, got all zero: {weights.tolist()}")
    normalised = (weights64 / total).to(dtype=stack.dtype, device=stack.device)
    return normalised @ stack
