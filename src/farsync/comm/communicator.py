"""The communicator: collectives over an explicit process group, each one charged to the byte ledger and
paced by the WAN emulator (:class:`~farsync.comm.link.LinkEmulator`, ``Communicator.emulator``).

Only this package talks to the network. Every call takes the group it was built with (never the implicit
default group), so the elastic layer can build a new group per membership and hand out a new communicator.
At world size 1 there is no group and every collective returns its input at once, sending nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import torch
import torch.distributed as dist

from farsync.comm.clock import Clock
from farsync.comm.cost import Collective, LinkModel
from farsync.comm.ledger import ByteLedger
from farsync.comm.link import LinkEmulator

__all__ = ["Communicator", "Handle"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _payload_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


@dataclass
class Handle(Generic[T]):
    """An in-flight collective. ``wait()`` blocks until the real operation and the emulated link are done."""

    work: Any
    result: Callable[[], T]
    start: float
    modeled_s: float
    communicator: Communicator
    collective: Collective
    _value: T | None = None
    _done: bool = False

    def wait(self) -> T:
        if self._done:
            return self._value  # type: ignore[return-value]
        emulator = self.communicator.emulator
        begin = emulator.clock.now()
        if self.work is not None:
            self.work.wait()
        emulator.wait_until(self.start + self.modeled_s)
        self._value = self.result()
        self._done = True
        emulator.blocked_since(begin, self.collective.value)
        return self._value

    def is_completed(self) -> bool:
        """True once the real operation and the emulated link time are both over (never blocks)."""
        if self._done:
            return True
        real_done = self.work is None or bool(self.work.is_completed())
        return real_done and self.communicator.clock.now() >= self.start + self.modeled_s


class Communicator:
    """Collectives over one explicit process group, with a byte ledger and link emulation.

    Args:
        group: a ``torch.distributed`` process group (gloo or NCCL), or ``None`` at world size 1.
        rank: this worker's rank in ``group``.
        world_size: members of ``group``.
        ledger: where bytes and blocked time are recorded.
        clock: the run clock; its mode decides whether emulated time is slept or only accounted.
        link: the group's link (slowest member); ``None`` turns emulation off (a real link).
        channel: ledger channel for this group's traffic ("sync" between replicas, "activations" inside one).

    Failure: a collective that fails raises from ``wait()``; callers that survive failures (the elastic
    layer) catch it, abort this group and build a new communicator.
    """

    def __init__(
        self,
        group: dist.ProcessGroup | None,
        rank: int,
        world_size: int,
        *,
        ledger: ByteLedger | None = None,
        clock: Clock | None = None,
        link: LinkModel | None = None,
        channel: str = "sync",
    ) -> None:
        if world_size > 1 and group is None:
            raise ValueError(f"a process group is required for world_size={world_size}")
        self.group, self.rank, self.world_size = group, rank, world_size
        self.ledger = ledger if ledger is not None else ByteLedger(rank=rank)
        self.clock = clock if clock is not None else Clock("off")
        self.link = link
        self.channel = channel
        self.emulator = LinkEmulator(link, self.clock, self.ledger, channel, world_size)

    # ------------------------------------------------------------------------------------------ helpers
    def _handle(self, work: Any, result: Callable[[], T], collective: Collective, payload: int) -> Handle[T]:
        start, modeled = self.emulator.charge(collective, payload)
        return Handle(work, result, start, modeled, self, collective)

    def modeled_time(self, collective: Collective, payload_bytes: int) -> float:
        """What ``collective`` over ``payload_bytes`` would take on this group's link (0 without a link)."""
        return self.emulator.modeled_time(collective, payload_bytes)

    # ------------------------------------------------------------------------------------- collectives
    def all_reduce(self, tensor: torch.Tensor, op: Literal["sum", "avg"] = "avg") -> Handle[torch.Tensor]:
        """Sums (or averages) ``tensor`` in place across the group. gloo has no AVG, so we sum and divide."""
        if self.world_size == 1:
            return self._handle(None, lambda: tensor, Collective.ALL_REDUCE, _payload_bytes(tensor))
        assert self.group is not None
        options = dist.AllreduceOptions()
        options.reduceOp = dist.ReduceOp.SUM  # type: ignore[assignment]  # the stub types the enum value apart
        work = self.group.allreduce([tensor], options)

        def result() -> torch.Tensor:
            if op == "avg":
                tensor.div_(self.world_size)
            return tensor

        return self._handle(work, result, Collective.ALL_REDUCE, _payload_bytes(tensor))

    def all_gather(self, tensor: torch.Tensor) -> Handle[list[torch.Tensor]]:
        """Every member's ``tensor`` (same shape and dtype everywhere), in rank order."""
        if self.world_size == 1:
            return self._handle(None, lambda: [tensor], Collective.ALL_GATHER, _payload_bytes(tensor))
        assert self.group is not None
        outputs = [torch.empty_like(tensor) for _ in range(self.world_size)]
        work = self.group.allgather([outputs], [tensor])
        return self._handle(work, lambda: outputs, Collective.ALL_GATHER, _payload_bytes(tensor))

    def all_to_all(self, chunks: list[torch.Tensor]) -> Handle[list[torch.Tensor]]:
        """Sends ``chunks[j]`` to member j; returns the chunks received, in rank order (equal sizes)."""
        if len(chunks) != self.world_size:
            raise ValueError(f"all_to_all needs {self.world_size} chunks, got {len(chunks)}")
        total = sum(_payload_bytes(c) for c in chunks)
        if self.world_size == 1:
            return self._handle(None, lambda: list(chunks), Collective.ALL_TO_ALL, total)
        assert self.group is not None
        send = torch.cat([c.reshape(-1) for c in chunks])
        receive = torch.empty_like(send)
        sizes = [c.numel() for c in chunks]
        work = self.group.alltoall_base(receive, send, sizes, sizes, dist.AllToAllOptions())

        def result() -> list[torch.Tensor]:
            return [
                part.reshape(c.shape) for part, c in zip(torch.split(receive, sizes), chunks, strict=True)
            ]

        return self._handle(work, result, Collective.ALL_TO_ALL, total)

    def broadcast(self, tensor: torch.Tensor, src: int) -> Handle[torch.Tensor]:
        """Copies ``tensor`` from member ``src`` to everyone, in place."""
        if self.world_size == 1:
            return self._handle(None, lambda: tensor, Collective.BROADCAST, _payload_bytes(tensor))
        assert self.group is not None
        options = dist.BroadcastOptions()
        options.rootRank = src
        options.rootTensor = 0
        work = self.group.broadcast([tensor], options)
        # Only the root and the forwarders of a pipelined broadcast send; the last member of the chain does not.
        payload = _payload_bytes(tensor) if self.rank != (src - 1) % self.world_size else 0
        return self._handle(work, lambda: tensor, Collective.BROADCAST, payload)

    def send(self, tensor: torch.Tensor, dst: int, tag: int = 0) -> Handle[torch.Tensor]:
        assert self.group is not None, "send needs a process group"
        work = self.group.send([tensor], dst, tag)
        return self._handle(work, lambda: tensor, Collective.SEND, _payload_bytes(tensor))

    def recv(self, tensor: torch.Tensor, src: int, tag: int = 0) -> Handle[torch.Tensor]:
        assert self.group is not None, "recv needs a process group"
        work = self.group.recv([tensor], src, tag)
        # The sender pays the link time; the receiver waits for the same message.
        handle = self._handle(work, lambda: tensor, Collective.RECV, _payload_bytes(tensor))
        handle.modeled_s = self.modeled_time(Collective.SEND, _payload_bytes(tensor))
        return handle

    def barrier(self) -> None:
        if self.world_size > 1:
            assert self.group is not None
            self.group.barrier().wait()
