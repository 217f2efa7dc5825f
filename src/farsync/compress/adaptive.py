"""The one link-aware planner: each round's mode, compression and H, from inputs every worker agrees on.

Qi et al. 2025, "DiLoCoX: A Low-Communication Large-Scale Training Framework for Decentralized Cluster"
(arXiv 2506.21263) compress the pseudo-gradient with low-rank factors plus quantization and adapt that
compression as training goes, adjusting the number of local steps H together with it, so that one round's
communication hides behind the next round's compute. The paper's rule, as we read it, follows the pseudo-gradient's rank
(which falls as training goes) and moves H with it. The rules below are **this package's**, written for a
link that may be fast or slow: they choose from the link's measured or emulated rate, not from the rank
alone, and they change H only when no allowed compression hides the link.

Inputs (:class:`PlanInputs`, agreed by all workers before planning, so every worker derives the same
:class:`RoundPlan`): the tensors' shapes, each matrix's energy rank (the smallest rank holding
``energy_fraction`` of its squared singular values, :func:`energy_rank`), the link's rate and latency, the
number of workers, the inner-step compute time and the configured H. The policy (:class:`PlannerPolicy`)
comes from the ``compression`` section.

Rules, in order:

(a) **Nothing to hide.** When one uncompressed fp32 all-reduce is predicted to take at most
    ``sync_fraction`` of a round's compute (H x step time), or the link or step time is not known yet (the
    first round on an unmeasured link), the round runs **synchronously and uncompressed** (mode ``sync``).
    Otherwise, when a dense quantized message (16/8/4/2 bits, not below ``min_bits``) takes at most
    ``sync_fraction`` of the round, the round runs synchronously with the widest such message. Why sync
    before overlap: in ``farsync bench quality`` (137k parameters, M = 4, H = 30) the one-round delay costs
    +12.9% in loss (delayed overlap, fp32) while int4 values with error feedback cost +0.6% (synchronous);
    a small share of compute spent waiting buys back more quality than hiding it. Low-rank messages never
    run synchronously here (low-rank rank 8 with error feedback cost +9.7% there, as much as the delay).
(b) **Just enough compression.** Otherwise the round overlaps the next round's compute (mode ``overlap``)
    and sends the first allowed candidate, in this order, whose predicted time fits the window
    H x step time (within :data:`WINDOW_SHARE` of it, a margin for step times that vary): uncompressed
    fp32; dense blockwise 16/8/4/2-bit values (the quantized ring); then
    low-rank factors, largest message first, among rank fractions 1, 1/2, 1/4, ... of each matrix's
    ``min(rows, cols)`` (each matrix further capped by its energy rank) with factors at 16/8/4/2 bits.
    A low-rank candidate no smaller than the narrowest dense one is left out: at equal bytes dense values
    keep every direction (for a square matrix rank 1/2 at some width costs as much as the dense matrix at
    that width), so plain ordering by bytes would trade a full-rank message for a truncated one of the
    same size. Candidates below the quality floor (``min_bits``, ``min_rank_fraction``) or compressing
    less than ``min_compression_ratio`` are not allowed.
(c) **At the floor.** When even the smallest allowed message does not fit: with ``adapt_inner_steps`` the
    next round's H grows to the smallest value that hides it, within ``[H, num_inner_steps_max]``;
    otherwise (or when even the largest H is too short) the floor plan is sent anyway and the sync takes
    longer than its window (``fits`` is false; the caller counts and warns).

Predicted time of a ring all-reduce of ``S`` bytes over ``n`` workers on rate ``b`` and latency ``l``:
``2 (n-1) (l + S / (n b))`` (the table in :mod:`farsync.comm.cost`; this leaf package cannot import it).
A low-rank round is two rings (P, Q) plus one fp32 all-reduce of the 1-D tensors and the weight.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from farsync.compress.codecs import make_codec
from farsync.compress.lowrank import factor_codec, lowrank_message_bytes, matrix_view

__all__ = [
    "WINDOW_SHARE",
    "PlanInputs",
    "PlannerPolicy",
    "RoundPlan",
    "energy_rank",
    "energy_ranks",
    "plan_round",
    "ring_all_reduce_s",
]

logger = logging.getLogger(__name__)

PLAN_WIDTHS = (16, 8, 4, 2)
"""Compressed widths the planner tries, widest first (32 = uncompressed fp32 is tried before them)."""
_DENSE_CODECS = {16: "fp16", 8: "int8", 4: "int4", 2: "int2"}
_MAX_HALVINGS = 16
WINDOW_SHARE = 0.9
"""An overlapped message must fit this share of its window: inner-step times move by ~10% from round to
round on a shared machine, and a message planned to fill the whole window makes compute wait whenever the
next round runs faster (measured in bench quality's regime: plans at 95-99% of the window cost waits)."""


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


def _is_matrix(shape: Sequence[int]) -> bool:
    return len(shape) >= 2 and math.prod(shape) > 0


def _full_rank(shape: Sequence[int]) -> int:
    """``min(rows, cols)`` of a tensor's matrix view, 0 for a non-matrix."""
    return min(shape[0], math.prod(shape) // shape[0]) if _is_matrix(shape) else 0


def energy_ranks(tensors: Sequence[torch.Tensor], energy_fraction: float) -> tuple[int, ...]:
    """:func:`energy_rank` of every matrix-shaped tensor (0 for the others), in order."""
    return tuple(
        energy_rank(t, energy_fraction, _full_rank(t.shape)) if _is_matrix(t.shape) else 0 for t in tensors
    )


def ring_all_reduce_s(payload_bytes: float, num_workers: int, bytes_per_s: float, latency_s: float) -> float:
    """Seconds of a ring all-reduce of ``payload_bytes`` (module docstring); 0 for one worker."""
    n = num_workers
    if n <= 1:
        return 0.0
    return 2 * (n - 1) * (latency_s + payload_bytes / (n * bytes_per_s))


@dataclass(frozen=True)
class PlanInputs:
    """What a round's plan depends on; every worker must hold the same values (they agree first)."""

    shapes: tuple[tuple[int, ...], ...]
    """Shapes of the tensors that travel, in message order."""
    energy_ranks: tuple[int, ...] | None
    """Per tensor (0 for non-matrices), the largest over workers; ``None``: no energy cap."""
    bytes_per_s: float | None
    """Link rate (emulated, or the best recent measurement); ``None`` when not measured yet."""
    latency_s: float
    """One-way latency per message."""
    num_workers: int
    step_s: float | None
    """Compute seconds of one inner step; ``None`` before it was measured."""
    num_inner_steps: int
    """The configured H."""


@dataclass(frozen=True, kw_only=True)
class PlannerPolicy:
    """The planner's settings (the ``compression`` section's planner fields; module docstring)."""

    sync_fraction: float = 0.05
    min_bits: int = 4
    min_rank_fraction: float = 0.125
    min_compression_ratio: float = 1.0
    adapt_inner_steps: bool = False
    num_inner_steps_max: int = 0
    """0: 4 x the configured H."""
    block_size: int = 64


@dataclass(frozen=True)
class RoundPlan:
    """One round's plan; the same on every worker."""

    mode: Literal["sync", "overlap"]
    kind: Literal["none", "dense", "lowrank"]
    """none: fp32 values; dense: blockwise values at ``bits``; lowrank: P and Q factors at ``bits``."""
    bits: int
    """32 (uncompressed), 16, 8, 4 or 2."""
    rank_fraction: float
    """The rank fraction tried (1 for none and dense); each matrix's rank is in ``ranks``."""
    ranks: tuple[int, ...]
    """Per tensor: the rank its factors use (low-rank), ``min(rows, cols)`` otherwise, 0 for non-matrices."""
    num_inner_steps: int
    """H of the next round."""
    message_bytes: int
    """One worker's message (before the ring's ``2 (n-1)/n``)."""
    predicted_comm_s: float
    window_s: float | None
    """H x step time: the compute the sync may hide behind (``None`` when not measured yet)."""
    fits: bool
    """False when the sync is predicted to outlast its window (rule (c) without room to grow H)."""
    reason: str

    def rank_fraction_stats(self, shapes: Sequence[Sequence[int]]) -> tuple[float, float]:
        """(mean, max) over matrices of ``rank / min(rows, cols)`` (1.0, 1.0 without matrices)."""
        fractions = [r / _full_rank(s) for r, s in zip(self.ranks, shapes, strict=True) if _is_matrix(s)]
        if not fractions:
            return 1.0, 1.0
        return sum(fractions) / len(fractions), max(fractions)


@dataclass(frozen=True)
class _Candidate:
    kind: Literal["none", "dense", "lowrank"]
    bits: int
    rank_fraction: float
    ranks: tuple[int, ...]
    message_bytes: int
    comm_s: float


def _numel(shapes: Sequence[Sequence[int]]) -> int:
    return sum(math.prod(s) for s in shapes)


def _dense(inputs: PlanInputs, policy: PlannerPolicy, bits: int, rate: float) -> _Candidate:
    numel = _numel(inputs.shapes)
    full = tuple(_full_rank(s) for s in inputs.shapes)
    n, latency = inputs.num_workers, inputs.latency_s
    if bits == 32:
        size = 4 * numel + 4  # fp32 values and the weight in one all-reduce
        return _Candidate("none", 32, 1.0, full, size, ring_all_reduce_s(size, n, rate, latency))
    codec = make_codec(_DENSE_CODECS[bits], policy.block_size)
    blocks = math.ceil(numel / policy.block_size) + 1  # the weight travels in a block of its own
    size = codec.num_bytes(blocks * policy.block_size)
    return _Candidate("dense", bits, 1.0, full, size, ring_all_reduce_s(size, n, rate, latency))


def _lowrank(
    inputs: PlanInputs, policy: PlannerPolicy, fraction: float, bits: int, rate: float
) -> _Candidate:
    ranks = []
    for index, shape in enumerate(inputs.shapes):
        full = _full_rank(shape)
        if not full:
            ranks.append(0)
            continue
        rank = max(1, math.ceil(fraction * full))
        if inputs.energy_ranks is not None:
            rank = min(rank, max(1, inputs.energy_ranks[index]))
        ranks.append(rank)
    codec = factor_codec(bits, policy.block_size)
    shapes = [torch.Size(s) for s in inputs.shapes]
    p_bytes = lowrank_message_bytes([s for s in shapes if _is_matrix(s)], [r for r in ranks if r], codec)
    dense_bytes = 4 * sum(math.prod(s) for s in shapes if not _is_matrix(s)) + 4
    n, latency = inputs.num_workers, inputs.latency_s
    # P and Q rings (each about half of the factor bytes), then the fp32 all-reduce of 1-D tensors + weight.
    comm = 2 * ring_all_reduce_s(p_bytes / 2, n, rate, latency) + ring_all_reduce_s(
        dense_bytes, n, rate, latency
    )
    return _Candidate("lowrank", bits, fraction, tuple(ranks), p_bytes + dense_bytes, comm)


def _candidates(inputs: PlanInputs, policy: PlannerPolicy, rate: float) -> list[_Candidate]:
    """Every allowed candidate, least compressed first (module docstring, rule (b))."""
    widths = [bits for bits in PLAN_WIDTHS if bits >= policy.min_bits]
    dense = [_dense(inputs, policy, 32, rate)] + [_dense(inputs, policy, b, rate) for b in widths]
    lowrank: list[_Candidate] = []
    fraction = 1.0
    for _ in range(_MAX_HALVINGS):
        if fraction < policy.min_rank_fraction - 1e-12:
            break
        lowrank += [_lowrank(inputs, policy, fraction, b, rate) for b in widths]
        fraction /= 2
    # A low-rank message no smaller than the narrowest dense one is dominated by it: dense values keep
    # every direction at that width (for a square matrix, rank 1/2 costs as much as the dense matrix).
    smallest_dense = dense[-1].message_bytes
    lowrank = sorted((c for c in lowrank if c.message_bytes < smallest_dense), key=lambda c: -c.message_bytes)
    found = dense + lowrank
    limit = (4 * _numel(inputs.shapes) + 4) / policy.min_compression_ratio
    allowed = [c for c in found if c.message_bytes <= limit]
    return allowed or [min(found, key=lambda c: c.message_bytes)]


def _plan(
    candidate: _Candidate,
    mode: Literal["sync", "overlap"],
    h: int,
    window: float | None,
    fits: bool,
    reason: str,
) -> RoundPlan:
    return RoundPlan(
        mode=mode,
        kind=candidate.kind,
        bits=candidate.bits,
        rank_fraction=candidate.rank_fraction,
        ranks=candidate.ranks,
        num_inner_steps=h,
        message_bytes=candidate.message_bytes,
        predicted_comm_s=candidate.comm_s,
        window_s=window,
        fits=fits,
        reason=reason,
    )


def plan_round(inputs: PlanInputs, policy: PlannerPolicy) -> RoundPlan:
    """The plan for one round (module docstring). Pure and deterministic: same inputs, same plan."""
    h = inputs.num_inner_steps
    if h < 1 or inputs.num_workers < 1:
        raise ValueError(f"num_inner_steps={h} and num_workers={inputs.num_workers} must be >= 1")
    rate, step = inputs.bytes_per_s, inputs.step_s
    if rate is None or rate <= 0 or step is None or step <= 0 or inputs.num_workers == 1:
        fp32 = _dense(inputs, policy, 32, rate if rate and rate > 0 else math.inf)
        return _plan(fp32, "sync", h, None if step is None else h * step, True, "link or step time not known")
    window = h * step
    candidates = _candidates(inputs, policy, rate)
    for candidate in candidates:
        if candidate.kind != "lowrank" and candidate.comm_s <= policy.sync_fraction * window:
            reason = "fast link: nothing to hide" if candidate.kind == "none" else "a dense message is cheap"
            return _plan(candidate, "sync", h, window, True, reason)
    for candidate in candidates:
        if candidate.comm_s <= WINDOW_SHARE * window:
            return _plan(candidate, "overlap", h, window, True, "fits the window")
    floor = candidates[-1]
    if policy.adapt_inner_steps:
        h_max = policy.num_inner_steps_max or 4 * h
        needed = max(h, math.ceil(floor.comm_s / (WINDOW_SHARE * step) - 1e-9))
        if needed <= h_max:
            return _plan(floor, "overlap", needed, needed * step, True, "quality floor: H grown to hide it")
        return _plan(floor, "overlap", h_max, h_max * step, False, "quality floor: longer than H max")
    return _plan(floor, "overlap", h, window, False, "quality floor: longer than the window")
