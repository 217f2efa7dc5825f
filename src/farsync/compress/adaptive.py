"""Adaptive choice of low-rank rank and factor bit width, after DiLoCoX.

Qi et al. 2025, "DiLoCoX: A Low-Communication Large-Scale Training Framework for Decentralized Cluster"
(arXiv 2506.21263) combine low-rank compression with quantization of the pseudo-gradient and adapt the
compression as training goes. This module is the pure planning part, in that spirit; the energy criterion
and the bit-width search below are this package's rules, not a transcription of the paper's:

* :func:`energy_rank` picks the smallest rank whose squared singular values hold ``energy_fraction`` of the
  squared Frobenius norm.
* :func:`plan_compression` takes the **maximum** of that rank over all matrix-shaped tensors, so every
  tensor keeps at least the requested energy (the mean would under-serve the least compressible layers),
  then picks the widest bit width in ``allowed_bits`` whose estimated message fits ``bytes_budget``. If none
  fits, it halves the rank at the narrowest width until the message fits or the rank is 1; a plan that still
  does not fit is returned anyway (``estimated_bytes > bytes_budget``) and logged as a warning.

The estimate (:func:`estimate_lowrank_bytes`) counts, per matrix, P and Q at ``bits`` (16: fp16; 8 and 4:
blockwise codes plus one float32 scale per block of each factor; 32: fp32) and tensors with ``ndim < 2`` at
fp32. It is exact for ``Chain(LowRank(rank), Cast or BlockQuantize, only_keys=("p", "q"))``, the
compressor :func:`~farsync.compress.factory.build_compressor` makes for kind ``"lowrank_quantized"``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from farsync.compress.lowrank import effective_rank, matrix_view
from farsync.compress.quantize import quantized_num_bytes

__all__ = ["CompressionPlan", "energy_rank", "estimate_lowrank_bytes", "plan_compression"]

logger = logging.getLogger(__name__)

_SUPPORTED_BITS = (4, 8, 16, 32)


@dataclass(frozen=True)
class CompressionPlan:
    """The rank and factor width chosen for one round."""

    rank: int
    """Low-rank rank requested for every matrix (each capped at min(rows, cols))."""
    bits: int
    """Width of the P and Q factors: 32, 16 (fp16), 8 or 4 (blockwise quantized)."""
    estimated_bytes: int
    """Estimated bytes of the whole message (see :func:`estimate_lowrank_bytes`)."""


def energy_rank(matrix: torch.Tensor, energy_fraction: float, max_rank: int) -> int:
    """Smallest ``r`` with ``sum(s[:r]**2) >= energy_fraction * sum(s**2)``, clamped to ``[1, max_rank]``.

    ``matrix`` with ``ndim > 2`` is viewed as ``(shape[0], -1)``. An all-zero matrix gives 1.
    """
    if not 0.0 < energy_fraction <= 1.0:
        raise ValueError(f"energy_fraction={energy_fraction} must be in (0, 1]")
    if max_rank < 1:
        raise ValueError(f"max_rank={max_rank} must be >= 1")
    singular_values = torch.linalg.svdvals(matrix_view(matrix).to(torch.float64))
    energy = singular_values.square()
    total = float(energy.sum())
    if total == 0.0:
        return 1
    cumulative = torch.cumsum(energy, dim=0) / total
    # A relative slack of 1e-12 so energy_fraction=1.0 is met despite rounding in the cumulative sum.
    reached = (cumulative >= energy_fraction - 1e-12).nonzero()
    rank = int(reached[0].item()) + 1 if reached.numel() else singular_values.numel()
    return max(1, min(rank, max_rank))


def _factor_bytes(numel: int, bits: int, block_size: int) -> int:
    if bits in (4, 8):
        return quantized_num_bytes(numel, bits, block_size)
    return numel * bits // 8


def estimate_lowrank_bytes(
    shapes: Iterable[torch.Size], rank: int, bits: int, *, block_size: int = 64
) -> int:
    """Bytes of one low-rank message: P, Q per matrix at ``bits``; ``ndim < 2`` tensors at fp32."""
    if bits not in _SUPPORTED_BITS:
        raise ValueError(f"bits={bits} is not supported; allowed: {_SUPPORTED_BITS}")
    total = 0
    for shape in shapes:
        if len(shape) < 2:
            total += 4 * math.prod(shape)
            continue
        rows, cols = shape[0], math.prod(shape[1:])
        factor_rank = effective_rank(rows, cols, rank)
        total += _factor_bytes(rows * factor_rank, bits, block_size)
        total += _factor_bytes(cols * factor_rank, bits, block_size)
    return total


def plan_compression(
    pseudo_gradient: dict[str, torch.Tensor],
    *,
    energy_fraction: float,
    bytes_budget: float,
    allowed_bits: tuple[int, ...] = (16, 8, 4),
    max_rank: int = 64,
    block_size: int = 64,
) -> CompressionPlan:
    """Choose rank and factor width for ``pseudo_gradient`` (see module docstring). Deterministic."""
    if not allowed_bits or any(bits not in _SUPPORTED_BITS for bits in allowed_bits):
        raise ValueError(f"allowed_bits={allowed_bits} must be a non-empty subset of {_SUPPORTED_BITS}")
    if bytes_budget <= 0:
        raise ValueError(f"bytes_budget={bytes_budget} must be > 0")
    matrices = [t for t in pseudo_gradient.values() if t.ndim >= 2]
    rank = max((energy_rank(m, energy_fraction, max_rank) for m in matrices), default=1)
    shapes = [t.shape for t in pseudo_gradient.values()]
    widths = sorted(set(allowed_bits), reverse=True)
    for bits in widths:
        estimate = estimate_lowrank_bytes(shapes, rank, bits, block_size=block_size)
        if estimate <= bytes_budget:
            return CompressionPlan(rank=rank, bits=bits, estimated_bytes=estimate)
    narrowest = widths[-1]
    estimate = estimate_lowrank_bytes(shapes, rank, narrowest, block_size=block_size)
    while estimate > bytes_budget and rank > 1:
        rank = max(1, rank // 2)
        estimate = estimate_lowrank_bytes(shapes, rank, narrowest, block_size=block_size)
    if estimate > bytes_budget:
        logger.warning("no plan fits bytes_budget=%s; sending %d bytes at rank 1", bytes_budget, estimate)
    return CompressionPlan(rank=rank, bits=narrowest, estimated_bytes=estimate)
