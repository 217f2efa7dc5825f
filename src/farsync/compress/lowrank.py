"""PowerSGD-style low-rank compression of matrix-shaped pseudo-gradients.

Vogels et al. 2019, "PowerSGD: Practical Low-Rank Gradient Compression for Distributed Optimization"
(arXiv 1905.13727). A tensor with ``ndim >= 2`` is viewed as the matrix ``M`` of shape
``(shape[0], prod(shape[1:]))`` and approximated by ``P Q^T`` with ``r = min(rank, rows, cols)`` columns,
found by warm-started power iteration::

    P = M Q;  P = orthogonalize(P);  Q = M^T P          (repeated num_power_iters times)
    M_hat = P Q^T

Q is kept per tensor ``name`` and reused next round, so one iteration per round tracks the top subspace.
The first Q comes from a generator seeded with ``zlib.crc32(name)``, so every worker starts from the same Q.

Collective version (built by ``comm/`` from :func:`matrix_view`, :func:`initial_q` and
:func:`orthogonalize`; worker ``i`` holds ``M_i`` and every worker holds the same ``Q``)::

    P_i = M_i Q;   P = allreduce_mean(P_i);   P = orthogonalize(P)
    Q_i = M_i^T P; Q = allreduce_mean(Q_i)
    M_hat = P Q^T      # equals the rank-r approximation of mean_i(M_i) along P
    next round warm-starts from this Q (store it with LowRank.set_q)

Because both products are linear in ``M_i``, the means of ``P_i`` and ``Q_i`` are exactly what one worker
holding ``mean_i(M_i)`` would compute, and every worker ends with the same ``P``, ``Q`` and ``M_hat``.

Wire format of :class:`LowRank`: for ``ndim >= 2``, ``p`` float32[rows, r] and ``q`` float32[cols, r]
(``4 r (rows + cols)`` bytes); for ``ndim < 2`` (or an empty tensor), ``values`` float32 of the original
shape.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import torch

from farsync.compress.base import Compressor, Encoded

__all__ = ["LowRank", "effective_rank", "initial_q", "matrix_view", "orthogonalize"]


def matrix_view(tensor: torch.Tensor) -> torch.Tensor:
    """The float32 matrix ``(shape[0], prod(shape[1:]))`` of a tensor with ``ndim >= 2``."""
    if tensor.ndim < 2:
        raise ValueError(f"tensor must have ndim >= 2, got shape {tuple(tensor.shape)}")
    return tensor.detach().reshape(tensor.shape[0], math.prod(tensor.shape[1:])).to(torch.float32)


def effective_rank(rows: int, cols: int, rank: int) -> int:
    """Columns of the factors actually used: ``min(rank, rows, cols)``."""
    return min(rank, rows, cols)


def initial_q(name: str, cols: int, rank: int) -> torch.Tensor:
    """The first Q for ``name``: float32[cols, rank] of N(0, 1), identical on every worker (CPU tensor).

    Pass the effective rank. The seed is ``zlib.crc32(name)``, which is stable across processes and Python
    versions, unlike ``hash()``.
    """
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode("utf-8")))
    return torch.randn(cols, rank, generator=generator, dtype=torch.float32)


def orthogonalize(p: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of the columns of ``p`` (reduced QR); same shape as ``p``."""
    basis: torch.Tensor = torch.linalg.qr(p, mode="reduced").Q
    return basis


class LowRank(Compressor):
    """Rank-``rank`` PowerSGD compressor with per-name warm-started Q (see module docstring).

    Use it inside :class:`~farsync.compress.error_feedback.ErrorFeedback`: on its own the part of the
    pseudo-gradient outside the tracked subspace is lost every round. ``state_dict`` holds the Q factors.
    """

    def __init__(self, rank: int, num_power_iters: int = 1) -> None:
        if rank < 1:
            raise ValueError(f"rank={rank} must be >= 1")
        if num_power_iters < 1:
            raise ValueError(f"num_power_iters={num_power_iters} must be >= 1")
        self.rank = rank
        self.num_power_iters = num_power_iters
        self.name = f"lowrank{rank}"
        self._q: dict[str, torch.Tensor] = {}

    def warm_q(self, name: str, cols: int, rank: int, device: torch.device) -> torch.Tensor:
        """The Q that ``name`` starts from: the stored one if it is ``(cols, rank)``, else :func:`initial_q`.

        Pass the effective rank (:func:`effective_rank`); a shape change restarts from :func:`initial_q`.
        """
        stored = self._q.get(name)
        if stored is not None and tuple(stored.shape) == (cols, rank):
            return stored.to(device)
        return initial_q(name, cols, rank).to(device)

    def set_q(self, name: str, q: torch.Tensor) -> None:
        """Store the Q that the next round of ``name`` warm-starts from (a copy)."""
        self._q[name] = q.detach().clone()

    def encode(self, name: str, tensor: torch.Tensor) -> Encoded:
        if tensor.ndim < 2 or tensor.numel() == 0:
            values = tensor.detach().to(torch.float32, copy=True)
            return Encoded(payload={"values": values}, shape=tensor.shape, dtype=tensor.dtype)
        matrix = matrix_view(tensor)
        rows, cols = matrix.shape
        rank = effective_rank(rows, cols, self.rank)
        q = self.warm_q(name, cols, rank, matrix.device)
        p = q.new_zeros(rows, rank)
        for _ in range(self.num_power_iters):
            p = orthogonalize(matrix @ q)
            q = matrix.T @ p
        self.set_q(name, q)
        return Encoded(payload={"p": p, "q": q}, shape=tensor.shape, dtype=tensor.dtype)

    def decode(self, encoded: Encoded) -> torch.Tensor:
        if "values" in encoded.payload:
            return encoded.payload["values"].to(torch.float32).reshape(encoded.shape)
        p = encoded.payload["p"].to(torch.float32)
        q = encoded.payload["q"].to(torch.float32)
        return (p @ q.T).reshape(encoded.shape)

    def state_dict(self) -> dict[str, Any]:
        return {"q": {name: q.detach().cpu().clone() for name, q in self._q.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._q = {name: q.detach().clone() for name, q in state.get("q", {}).items()}
