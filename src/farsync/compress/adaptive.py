"""The one adaptive planner: the low-rank rank and factor bit width that fit a byte budget, after DiLoCoX.

Qi et al. 2025, "DiLoCoX: A Low-Communication Large-Scale Training Framework for Decentralized Cluster"
(arXiv 2506.21263) combine low-rank compression with quantization of the pseudo-gradient and adapt the
compression as training goes. This module is the pure planning part, in that spirit; the energy criterion
and the bit-width search below are this package's rules, not a transcription of the paper's:

* :func:`energy_rank` picks the smallest rank whose squared singular values hold ``energy_fraction`` of the
  squared Frobenius norm; :func:`max_energy_rank` takes the **maximum** over all matrix-shaped tensors, so
  every tensor keeps at least the requested energy (the mean would under-serve the least compressible
  layers).
* :func:`fit_rank_and_bits` picks the widest bit width whose message fits the budget. If none fits, it
  halves the rank at the narrowest width until the message fits or the rank reaches ``min_rank`` (1 unless
  the caller sets a quality floor); a plan that still does not fit is returned anyway
  (``estimated_bytes > budget``) and logged as a warning.

:func:`plan_compression` is both steps for one worker's pseudo-gradient. The adaptive low-rank reducer
(:mod:`farsync.reducers.adaptive_lowrank`) runs the same two steps with an agreement between workers in
between and its message's exact size. Sizes are those of the one low-rank message layout
(:func:`~farsync.compress.lowrank.lowrank_message_bytes`), so a plan's ``estimated_bytes`` is what the
factors and fp32 vectors occupy on the wire.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

from farsync.compress.lowrank import FACTOR_BITS, factor_codec, lowrank_message_bytes, matrix_view

__all__ = [
    "CompressionPlan",
    "energy_rank",
    "estimate_lowrank_bytes",
    "fit_rank_and_bits",
    "max_energy_rank",
    "plan_compression",
]

logger = logging.getLogger(__name__)

MessageSize = Callable[[int, int], int]
"""``size(rank, bits) -> bytes`` of the message a plan would send."""


@dataclass(frozen=True)
class CompressionPlan:
    """The rank and factor width chosen for one round."""

    rank: int
    """Low-rank rank requested for every matrix (each capped at min(rows, cols))."""
    bits: int
    """Width of the P and Q factors: 32, 16 (block-scaled fp16), 8 or 4 (blockwise quantized)."""
    estimated_bytes: int
    """Bytes of the whole message at this rank and width."""


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


def max_energy_rank(named: Mapping[str, torch.Tensor], energy_fraction: float, max_rank: int) -> int:
    """The largest :func:`energy_rank` over the non-empty tensors with ``ndim >= 2`` (1 if there are none)."""
    matrices = [t for t in named.values() if t.ndim >= 2 and t.numel() > 0]
    return max((energy_rank(m, energy_fraction, max_rank) for m in matrices), default=1)


def estimate_lowrank_bytes(
    shapes: Iterable[torch.Size], rank: int, bits: int, *, block_size: int = 64
) -> int:
    """Bytes of one low-rank message at ``rank`` with factors at ``bits`` (``ndim < 2`` tensors at fp32)."""
    return lowrank_message_bytes(shapes, rank, factor_codec(bits, block_size))


def fit_rank_and_bits(
    size: MessageSize, rank: int, budget: float, allowed_bits: Iterable[int], *, min_rank: int = 1
) -> CompressionPlan:
    """The widest of ``allowed_bits`` at ``rank`` whose ``size`` fits ``budget``, else a halved rank at the
    narrowest width, never below ``min_rank`` (a quality floor; module docstring). Deterministic."""
    widths = sorted(set(allowed_bits), reverse=True)
    if not widths or any(bits not in FACTOR_BITS for bits in widths):
        raise ValueError(f"allowed_bits={tuple(allowed_bits)} must be a non-empty subset of {FACTOR_BITS}")
    if not 1 <= min_rank <= rank:
        raise ValueError(f"min_rank={min_rank} must be in [1, rank={rank}]")
    for bits in widths:
        estimate = size(rank, bits)
        if estimate <= budget:
            return CompressionPlan(rank=rank, bits=bits, estimated_bytes=estimate)
    narrowest = widths[-1]
    estimate = size(rank, narrowest)
    while estimate > budget and rank > min_rank:
        rank = max(min_rank, rank // 2)
        estimate = size(rank, narrowest)
    if estimate > budget:
        logger.warning(
            "no rank/bits fits the budget of %.0f bytes; sending %d bytes at rank %d, %d bits",
            budget,
            estimate,
            rank,
            narrowest,
        )
    return CompressionPlan(rank=rank, bits=narrowest, estimated_bytes=estimate)


def plan_compression(
    pseudo_gradient: Mapping[str, torch.Tensor],
    *,
    energy_fraction: float,
    bytes_budget: float,
    allowed_bits: tuple[int, ...] = (16, 8, 4),
    max_rank: int = 64,
    block_size: int = 64,
) -> CompressionPlan:
    """Choose rank and factor width for ``pseudo_gradient`` (see module docstring). Deterministic."""
    if bytes_budget <= 0:
        raise ValueError(f"bytes_budget={bytes_budget} must be > 0")
    rank = max_energy_rank(pseudo_gradient, energy_fraction, max_rank)
    shapes = [t.shape for t in pseudo_gradient.values()]

    def size(rank: int, bits: int) -> int:
        return estimate_lowrank_bytes(shapes, rank, bits, block_size=block_size)

    return fit_rank_and_bits(size, rank, bytes_budget, allowed_bits)
