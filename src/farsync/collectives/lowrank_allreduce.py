"""PowerSGD-style low-rank all-reduce: average the P and Q factors instead of the matrices.

Vogels et al. 2019, "PowerSGD: Practical Low-Rank Gradient Compression for Distributed Optimization"
(arXiv 1905.13727). Worker ``i`` holds ``M_i`` (a parameter's update viewed as a matrix by
:func:`~farsync.compress.matrix_view`, plus its error-feedback residual) and weight ``w_i``; every worker
holds the same warm-started ``Q``. One power iteration per round::

    P   = orthogonalize( sum_i w_i M_i Q )          # ring all-reduce of the P factors
    Q'  = sum_i w_i M_i^T P                          # ring all-reduce of the Q factors
    M^  = P Q'^T / sum_i w_i                         # the same on every worker
    next round starts from Q = Q' / sum_i w_i

Because both products are linear in ``M_i``, this is one power iteration on the weighted mean matrix, and if
that mean has rank ``<= r`` and Q spans enough of it, ``M^`` equals it exactly. Tensors with fewer than two
dimensions (biases, norms) and the weights travel uncompressed in one fp32 all-reduce.

On the wire: the one low-rank message layout of :mod:`farsync.compress.lowrank` (the P factors of all
matrices form one vector and the Q factors another, each in :func:`~farsync.compress.factor_codec` at
``bits``: 32 fp32, 16 block-scaled fp16, 8, 4 or 2 blockwise absmax codes), each vector summed by
:func:`~farsync.collectives.quantized_ring.quantized_ring_all_reduce`. Per round a worker's message is
:func:`~farsync.compress.lowrank_message_bytes` plus 4 bytes for the weight, of which the ring sends about
``2 (n-1)/n``. Every worker decodes the same messages, so all workers end with bitwise-identical
``M^`` and ``Q``.

Error feedback (optional, per worker, saved in ``state_dict``): the residual is what this worker's matrix
lost to the projection, ``M_i - P P^T M_i`` (its own share of ``P Q'^T``), as in PowerSGD. Quantization of
the factors on the wire is not fed back.

Ranks: one for every matrix, or one per matrix name (the link-aware planner gives each matrix a rank
relative to its own size); each matrix uses ``min(its rank, rows, cols)``. Changing a rank between rounds
(the planner does) keeps the first columns of the stored Q and fills new columns from
:func:`~farsync.compress.initial_q` (:class:`~farsync.compress.WarmStart`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from farsync.collectives.quantized_ring import quantized_ring_all_reduce
from farsync.comm.communicator import Communicator
from farsync.compress.codecs import WireCodec
from farsync.compress.lowrank import (
    WarmStart,
    effective_rank,
    factor_codec,
    lowrank_message_bytes,
    matrix_view,
    orthogonalize,
)
from farsync.compress.residuals import Residuals

__all__ = ["LowRankAllReduce", "LowRankRound"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LowRankRound:
    """What one call of :meth:`LowRankAllReduce.reduce` sent."""

    rank: int
    """Largest rank any matrix used (each matrix uses ``min(its requested rank, rows, cols)``)."""
    bits: int
    """Width of P and Q on the wire."""
    message_bytes: int
    """Encoded size of this worker's whole message (P, Q, 1-D tensors and weight)."""
    ranks: Mapping[str, int] = field(default_factory=dict)
    """The rank each matrix used, by name."""


class LowRankAllReduce:
    """Low-rank weighted mean of named tensors across ``comm``'s group (see the module docstring).

    Args:
        comm: communicator of the group.
        rank: default rank of the factors.
        bits: default factor width on the wire (32, 16, 8, 4).
        block_size: quantization block for 16, 8 and 4 bits.
        error_feedback: keep the per-worker projection residual.
        num_pieces: pipelining of the ring (see :mod:`farsync.collectives.quantized_ring`).

    Failure: a peer failure raises from the collective; the Q factors and residuals are then unchanged for
    this round only if the failure came before the Q all-reduce (callers rebuild the group and redo it).
    """

    def __init__(
        self,
        comm: Communicator,
        *,
        rank: int,
        bits: int = 32,
        block_size: int = 64,
        error_feedback: bool = True,
        num_pieces: int = 4,
    ) -> None:
        if rank < 1:
            raise ValueError(f"rank={rank} must be >= 1")
        factor_codec(bits, block_size)
        self.comm, self.rank, self.bits, self.block_size = comm, rank, bits, block_size
        self.num_pieces = num_pieces
        self.residuals: Residuals | None = Residuals() if error_feedback else None
        self.warm = WarmStart()
        self.last: LowRankRound | None = None

    def warm_q(self, name: str, cols: int, rank: int) -> torch.Tensor:
        """The Q that ``name`` starts from at ``rank`` columns (stored columns first, then fresh ones)."""
        return self.warm.get(name, cols, rank)

    # -------------------------------------------------------------------------------------- reduce
    def reduce(
        self,
        named: dict[str, torch.Tensor],
        weight: float = 1.0,
        *,
        rank: int | Mapping[str, int] | None = None,
        bits: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Weighted mean of every worker's ``named`` at ``rank``/``bits`` (defaults: the constructor's).

        ``rank`` is one rank for every matrix or one per matrix name (a name it lacks uses the constructor's
        rank); each matrix uses ``min(its rank, rows, cols)``. Every worker must pass the same ranks.
        """
        per_name = dict(rank) if isinstance(rank, Mapping) else {}
        default_rank = rank if isinstance(rank, int) else self.rank
        if any(r < 1 for r in [default_rank, *per_name.values()]):
            raise ValueError(f"ranks must be >= 1, got {rank}")
        bits = self.bits if bits is None else bits
        codec = factor_codec(bits, self.block_size)
        corrected = self.residuals.corrected(named) if self.residuals is not None else _as_float(named)
        matrices = {n: matrix_view(t) for n, t in corrected.items() if t.ndim >= 2 and t.numel() > 0}
        dense_names = [n for n in corrected if n not in matrices]
        device = next(iter(corrected.values())).device if corrected else torch.device("cpu")

        ranks = {n: per_name.get(n, default_rank) for n in corrected}
        queries = {
            n: self.warm_q(n, m.shape[1], effective_rank(m.shape[0], m.shape[1], ranks[n])).to(m.device)
            for n, m in matrices.items()
        }
        p_local = _cat([(m @ queries[n]) * weight for n, m in matrices.items()], device)
        p_sum = self._ring(p_local, codec)
        dense_local = _cat(
            [corrected[n].reshape(-1) * weight for n in dense_names] + [p_local.new_tensor([weight])], device
        )
        dense_sum = self.comm.all_reduce(dense_local, op="sum").wait()
        weight_sum = float(dense_sum[-1])

        p_shapes = {n: (m.shape[0], queries[n].shape[1]) for n, m in matrices.items()}
        bases = {n: orthogonalize(p) for n, p in _split(p_sum, p_shapes).items()}
        q_local = _cat([(m.T @ bases[n]) * weight for n, m in matrices.items()], device)
        q_sum = self._ring(q_local, codec)
        q_factors = _split(q_sum, {n: tuple(q.shape) for n, q in queries.items()})

        scale = 1.0 / weight_sum if weight_sum > 0 else 0.0
        out: dict[str, torch.Tensor] = {}
        for name, matrix in matrices.items():
            q_mean = q_factors[name] * scale
            out[name] = (bases[name] @ q_mean.T).reshape(corrected[name].shape)
            self.warm.set(name, q_mean)
            if self.residuals is not None:
                kept = bases[name] @ (bases[name].T @ matrix) if weight > 0 else torch.zeros_like(matrix)
                self.residuals.store(name, (matrix - kept).reshape(corrected[name].shape))
        offset = 0
        for name in dense_names:
            numel = corrected[name].numel()
            out[name] = (dense_sum[offset : offset + numel] * scale).reshape(corrected[name].shape)
            offset += numel
            if self.residuals is not None:  # sent exactly, unless this worker was left out
                self.residuals.store(
                    name, corrected[name] if weight <= 0 else torch.zeros_like(corrected[name])
                )
        # The one low-rank message layout (farsync.compress.lowrank), plus the weight's 4 bytes.
        message = (
            lowrank_message_bytes([t.shape for t in corrected.values()], list(ranks.values()), codec) + 4
        )
        used = {n: q.shape[1] for n, q in queries.items()}
        self.last = LowRankRound(
            rank=max(used.values(), default=default_rank), bits=bits, message_bytes=message, ranks=used
        )
        return {name: out[name] for name in named}

    def _ring(self, vector: torch.Tensor, codec: WireCodec) -> torch.Tensor:
        if vector.numel() == 0:
            return vector
        return quantized_ring_all_reduce(self.comm, vector, codec=codec, op="sum", num_pieces=self.num_pieces)

    # -------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "q": self.warm.state_dict(),
            "residuals": self.residuals.state_dict() if self.residuals is not None else {},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.warm.load_state_dict(state.get("q", {}))
        if self.residuals is not None:
            self.residuals.load_state_dict(state.get("residuals", {}))


def _as_float(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.detach().to(torch.float32) for name, t in named.items()}


def _cat(parts: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    if not parts:
        return torch.zeros(0, device=device)
    return torch.cat([p.reshape(-1) for p in parts])


def _split(vector: torch.Tensor, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Cuts a concatenated factor vector back into matrices of ``shapes`` (in order)."""
    out, offset = {}, 0
    for name, (height, width) in shapes.items():
        out[name] = vector[offset : offset + height * width].reshape(height, width)
        offset += height * width
    return out
