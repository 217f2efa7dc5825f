"""Healing: a new or restarted worker receives the global state from a live peer over the process group.

What travels (one fp32 vector, point-to-point from the quorum's source to each healer, so only the healer
and the source spend link time): the fp32 global weights, the outer optimizer's momentum buffers and a
flag saying whether momentum exists yet. fp32 in, fp32 out, so the healer's global weights are bitwise
equal to its peers'. Round and step counters come with the quorum decision itself.

What does not travel, by design:

* the inner AdamW moments: they are local to each worker, as large as two models, and re-estimated within a
  few inner steps; a healer starts them from zero (as at the start of the run), which costs it a little
  progress in its first round and nothing else;
* error-feedback residuals of a compressed reducer: they are the healer's own past compression error,
  which a newcomer never had; they start at zero;
* the data position: the healer's sampler for its slot is re-seeded from (seed, slot, round), so a
  restarted worker does not replay the batches its previous life drew.
"""

from __future__ import annotations

import logging

import torch

from farsync.algorithms.diloco import OuterState
from farsync.comm.communicator import Communicator

__all__ = ["load_outer_vector", "outer_vector", "send_outer_state"]

logger = logging.getLogger(__name__)


def _momentum(outer: OuterState, param: torch.Tensor) -> torch.Tensor | None:
    buffer = outer.optimizer.state.get(param, {}).get("momentum_buffer")
    return buffer if isinstance(buffer, torch.Tensor) else None


def outer_vector(outer: OuterState) -> torch.Tensor:
    """[global weights..., momentum buffers (zeros if none)..., has_momentum] as one fp32 vector."""
    params = list(outer.params.values())
    buffers = [_momentum(outer, p) for p in params]
    has_momentum = all(b is not None for b in buffers) and bool(buffers)
    parts = [p.detach().reshape(-1).float() for p in params]
    parts += [
        (b if b is not None and has_momentum else torch.zeros_like(p)).detach().reshape(-1).float()
        for p, b in zip(params, buffers, strict=True)
    ]
    parts.append(torch.tensor([1.0 if has_momentum else 0.0]))
    return torch.cat(parts)


def load_outer_vector(outer: OuterState, vector: torch.Tensor) -> None:
    """Inverse of :func:`outer_vector`: copies weights and momentum into ``outer`` bit for bit."""
    params = list(outer.params.values())
    offset = 0
    with torch.no_grad():
        for param in params:
            param.copy_(vector[offset : offset + param.numel()].view_as(param))
            offset += param.numel()
        has_momentum = bool(vector[-1] > 0)
        outer.optimizer.state.clear()
        for param in params:
            if has_momentum:
                buffer = vector[offset : offset + param.numel()].view_as(param).clone()
                outer.optimizer.state[param]["momentum_buffer"] = buffer
            offset += param.numel()


def send_outer_state(comm: Communicator, source_rank: int, healer_ranks: list[int], outer: OuterState) -> int:
    """The source sends its outer state to every healer; healers load it. Returns bytes this rank sent.

    Members that are neither source nor healer do nothing. Sends go one healer after another: the source's
    link is the bottleneck, and a healer that dies mid-transfer fails only this boundary (it is retried).
    """
    if comm.rank == source_rank:
        vector = outer_vector(outer)
        for healer in healer_ranks:
            comm.send(vector, healer, tag=7).wait()
        return vector.numel() * vector.element_size() * len(healer_ranks)
    if comm.rank in healer_ranks:
        vector = outer_vector(outer)  # right size and dtype; overwritten by the receive
        comm.recv(vector, source_rank, tag=7).wait()
        load_outer_vector(outer, vector)
    return 0
