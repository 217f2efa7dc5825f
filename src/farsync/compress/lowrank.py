"""PowerSGD-style low-rank compression of matrix-shaped pseudo-gradients, and its one message layout.

Vogels et al. 2019, "PowerSGD: Practical Low-Rank Gradient Compression for Distributed Optimization"
(arXiv 1905.13727). A tensor with ``ndim >= 2`` is viewed as the matrix ``M`` of shape
``(shape[0], prod(shape[1:]))`` and approximated by ``P Q^T`` with ``r = min(rank, rows, cols)`` columns,
found by one warm-started power iteration per round::

    P = orthogonalize(M Q);   Q' = M^T P;   M_hat = P Q'^T

Q is kept per tensor name (:class:`WarmStart`) and reused next round, so one iteration per round tracks the
top subspace. The first Q comes from a generator seeded with ``zlib.crc32(name)``, so every worker starts
from the same Q.

**The message** (one layout, whoever sends it): for a dict of tensors, the P factors of all matrices in
order form one vector and the Q factors another, each encoded by the factor codec
(:func:`factor_codec`: ``bits`` 32 fp32, 16 block-scaled fp16, 8, 4 or 2 blockwise absmax); tensors with
``ndim < 2`` (biases, norms) or no elements travel as fp32. So a message of rank ``r`` at ``bits`` has
:func:`lowrank_message_bytes` bytes. The collective low-rank all-reduce
(:mod:`farsync.collectives.lowrank_allreduce`) sends exactly these P and Q vectors, summed over workers in
a ring; :class:`LowRankCodec` builds one worker's own message (its local power iteration) for paths that
need every worker's update separately, such as robust aggregation, so ``compression.kind = "lowrank"``
puts the same factors, in the same codec, on the wire either way.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from farsync.compress.codecs import WireCodec, as_bytes, from_bytes, make_codec

__all__ = [
    "FACTOR_BITS",
    "LowRankCodec",
    "WarmStart",
    "effective_rank",
    "factor_codec",
    "initial_q",
    "lowrank_message_bytes",
    "lowrank_sizes",
    "matrix_view",
    "orthogonalize",
    "Ranks",
]

FACTOR_BITS = (32, 16, 8, 4, 2)
"""Widths the P and Q factors can travel at."""
_FACTOR_CODECS = {32: "fp32", 16: "fp16", 8: "int8", 4: "int4", 2: "int2"}


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


def factor_codec(bits: int, block_size: int = 64) -> WireCodec:
    """The codec of the P and Q factors at ``bits`` (one of :data:`FACTOR_BITS`)."""
    if bits not in _FACTOR_CODECS:
        raise ValueError(f"bits={bits} is not supported for low-rank factors; allowed: {FACTOR_BITS}")
    return make_codec(_FACTOR_CODECS[bits], block_size)


def _is_matrix(shape: torch.Size) -> bool:
    return len(shape) >= 2 and math.prod(shape) > 0


Ranks = int | Sequence[int]
"""One rank for every matrix, or one per tensor of ``shapes`` (in order; entries of non-matrices unused)."""


def lowrank_sizes(shapes: Iterable[torch.Size], rank: Ranks) -> tuple[int, int, int]:
    """``(P values, Q values, fp32 values)`` of one message for tensors of ``shapes`` at ``rank``
    (one rank, or one per tensor; each matrix uses ``min(its rank, rows, cols)``)."""
    shapes = list(shapes)
    ranks = [rank] * len(shapes) if isinstance(rank, int) else list(rank)
    if len(ranks) != len(shapes):
        raise ValueError(f"got {len(ranks)} ranks for {len(shapes)} tensors")
    p_numel = q_numel = dense = 0
    for shape, wanted in zip(shapes, ranks, strict=True):
        numel = math.prod(shape)
        if not _is_matrix(shape):
            dense += numel
            continue
        rows, cols = shape[0], numel // shape[0]
        r = effective_rank(rows, cols, wanted)
        p_numel, q_numel = p_numel + rows * r, q_numel + cols * r
    return p_numel, q_numel, dense


def lowrank_message_bytes(shapes: Iterable[torch.Size], rank: Ranks, codec: WireCodec) -> int:
    """Exact bytes of one low-rank message (module docstring) with factors in ``codec``."""
    p_numel, q_numel, dense = lowrank_sizes(shapes, rank)
    return codec.num_bytes(p_numel) + codec.num_bytes(q_numel) + 4 * dense


class WarmStart:
    """The Q each tensor name starts its next power iteration from.

    :meth:`get` at a different rank keeps the stored columns first and fills new ones from
    :func:`initial_q` (an adaptive rank can move between rounds); a different column count restarts.
    """

    def __init__(self) -> None:
        self._q: dict[str, torch.Tensor] = {}

    def get(self, name: str, cols: int, rank: int) -> torch.Tensor:
        """float32[cols, rank] (CPU or the stored tensor's device)."""
        stored = self._q.get(name)
        if stored is None or stored.shape[0] != cols:
            return initial_q(name, cols, rank)
        if stored.shape[1] >= rank:
            return stored[:, :rank]
        fresh = initial_q(name, cols, rank)[:, stored.shape[1] :]
        return torch.cat([stored, fresh], dim=1)

    def set(self, name: str, q: torch.Tensor) -> None:
        """Store a copy of ``q`` as ``name``'s next start."""
        self._q[name] = q.detach().clone()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: q.detach().cpu().clone() for name, q in self._q.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._q = {name: torch.as_tensor(q).detach().clone() for name, q in state.items()}


class LowRankCodec:
    """One worker's own low-rank message for a dict of tensors (module docstring), and its decoding.

    Each call of :meth:`encode` runs one power iteration per matrix from the worker's :class:`WarmStart`
    (kept in ``state_dict``), so the message approximates this worker's tensors alone. Decoding needs only
    the tensors' names and shapes. A message of the wrong length raises ``ValueError``.
    """

    def __init__(self, rank: int, bits: int, block_size: int = 64) -> None:
        if rank < 1:
            raise ValueError(f"rank={rank} must be >= 1")
        self.rank, self.bits = rank, bits
        self.codec = factor_codec(bits, block_size)
        self.warm = WarmStart()

    def num_bytes(self, shapes: Iterable[torch.Size]) -> int:
        return lowrank_message_bytes(shapes, self.rank, self.codec)

    def encode(self, named: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The ``uint8`` message for ``named`` (in its order); advances the warm start."""
        device = next(iter(named.values())).device if named else torch.device("cpu")
        p_parts: list[torch.Tensor] = []
        q_parts: list[torch.Tensor] = []
        dense: list[torch.Tensor] = []
        for name, tensor in named.items():
            if not _is_matrix(tensor.shape):
                dense.append(tensor.detach().reshape(-1).to(torch.float32))
                continue
            matrix = matrix_view(tensor)
            rows, cols = matrix.shape
            q = self.warm.get(name, cols, effective_rank(rows, cols, self.rank)).to(matrix.device)
            p = orthogonalize(matrix @ q)
            q = matrix.T @ p
            self.warm.set(name, q)
            p_parts.append(p.reshape(-1))
            q_parts.append(q.reshape(-1))
        parts = [self._encode(p_parts, device), self._encode(q_parts, device)]
        return torch.cat([*parts, as_bytes(_cat(dense)) if dense else _empty(device)])

    def decode(self, message: torch.Tensor, like: Mapping[str, torch.Size]) -> dict[str, torch.Tensor]:
        """float32 tensors of ``like``'s names and shapes from a message made for those shapes."""
        p_numel, q_numel, dense_numel = lowrank_sizes(like.values(), self.rank)
        p_bytes, q_bytes = self.codec.num_bytes(p_numel), self.codec.num_bytes(q_numel)
        expected = p_bytes + q_bytes + 4 * dense_numel
        if message.numel() != expected:
            raise ValueError(
                f"low-rank message must have {expected} bytes for these shapes, got {message.numel()}"
            )
        p_all = self.codec.decode(message[:p_bytes], p_numel)
        q_all = self.codec.decode(message[p_bytes : p_bytes + q_bytes], q_numel)
        dense_all = from_bytes(message, p_bytes + q_bytes, dense_numel, torch.float32)
        out: dict[str, torch.Tensor] = {}
        p_at = q_at = dense_at = 0
        for name, shape in like.items():
            numel = math.prod(shape)
            if not _is_matrix(shape):
                out[name] = dense_all[dense_at : dense_at + numel].reshape(shape)
                dense_at += numel
                continue
            rows, cols = shape[0], numel // shape[0]
            r = effective_rank(rows, cols, self.rank)
            p = p_all[p_at : p_at + rows * r].reshape(rows, r)
            q = q_all[q_at : q_at + cols * r].reshape(cols, r)
            p_at, q_at = p_at + rows * r, q_at + cols * r
            out[name] = (p @ q.T).reshape(shape)
        return out

    def _encode(self, parts: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        return self.codec.encode(_cat(parts)) if parts else _empty(device)

    def state_dict(self) -> dict[str, Any]:
        return {"q": self.warm.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.warm.load_state_dict(state.get("q", {}))


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.reshape(-1) for p in parts])


def _empty(device: torch.device) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8, device=device)
