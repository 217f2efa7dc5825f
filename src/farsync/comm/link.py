"""The WAN emulator: the one component that charges bytes to the emulated link and waits for it.

Every collective, whoever issues it (the communicator's own collectives, the quantized ring's
point-to-point messages, gossip's neighbour exchange, Streaming DiLoCo's fragment syncs, background
synchronisation), goes through a :class:`LinkEmulator`:

* :meth:`LinkEmulator.charge` records a collective's bytes in the ledger and returns its modeled time
  (:func:`~farsync.comm.cost.wire_time` on the group's :class:`~farsync.comm.cost.LinkModel`, 0 without one);
* :meth:`LinkEmulator.wait_until` waits until a collective's emulated end, the rule of
  :mod:`farsync.comm.clock` (``sleep``, ``virtual`` or ``off``), and :meth:`LinkEmulator.blocked_since`
  records how long the caller was blocked;
* a :class:`LinkLane` is one direction of the link carrying one message (or one synchronisation) at a time:
  the next starts when the previous has left.

With no link model (``network.emulation = "off"``, or a real link) nothing is modeled and nothing waits
beyond the real operation.
"""

from __future__ import annotations

import logging
from typing import Protocol

from farsync.comm.clock import Clock
from farsync.comm.cost import Collective, LinkModel, wire_bytes, wire_time
from farsync.comm.ledger import ByteLedger

__all__ = ["LinkEmulator", "LinkLane", "Paced"]

logger = logging.getLogger(__name__)


class Paced(Protocol):
    """What a lane reschedules: an in-flight message's emulated start and modeled duration."""

    start: float
    modeled_s: float


class LinkEmulator:
    """One group's emulated link, as seen by one worker (module docstring).

    Args:
        model: the group's link (slowest member's rate, largest latency); ``None``: nothing is modeled.
        clock: the run clock; its mode decides whether emulated time is slept or only accounted.
        ledger: where bytes, modeled time and blocked time are recorded.
        channel: the ledger channel of this link's traffic.
        group_size: members of the group (a collective's cost depends on it).
    """

    def __init__(
        self, model: LinkModel | None, clock: Clock, ledger: ByteLedger, channel: str, group_size: int
    ) -> None:
        self.model, self.clock, self.ledger = model, clock, ledger
        self.channel, self.group_size = channel, group_size

    def modeled_time(self, collective: Collective, payload_bytes: int) -> float:
        """Seconds ``collective`` over ``payload_bytes`` takes on this link (0 without a model)."""
        if self.model is None:
            return 0.0
        return wire_time(collective, payload_bytes, self.group_size, self.model)

    def message_time(self, num_bytes: int) -> float:
        """Seconds one message of ``num_bytes`` occupies the wire, latency excluded (0 without a model)."""
        return num_bytes / self.model.bytes_per_s if self.model is not None else 0.0

    @property
    def latency_s(self) -> float:
        return self.model.latency_s if self.model is not None else 0.0

    def charge(self, collective: Collective, payload_bytes: int) -> tuple[float, float]:
        """Records ``collective`` in the ledger; returns its emulated ``(start, modeled seconds)``.

        A received message's link time is its sender's send, so the ledger counts it once, on the send.
        """
        sent = wire_bytes(collective, payload_bytes, self.group_size)
        modeled = self.modeled_time(collective, payload_bytes)
        recorded = 0.0 if collective is Collective.RECV else modeled
        self.ledger.record_call(self.channel, collective.value, payload_bytes, sent, recorded)
        return self.clock.now(), modeled

    def wait_until(self, end: float) -> float:
        """Waits until the emulated time ``end`` (the clock's rule); returns the seconds waited."""
        return self.clock.wait_until(end)

    def blocked_since(self, begin: float, collective: str, *, trainer_only: bool = True) -> None:
        """Records ``now - begin`` as time the caller was blocked in ``collective``.

        With ``trainer_only`` only the training thread's wait counts: a background synchronisation thread's
        wait is not the trainer's; the trainer records its own wait when it collects the result.
        """
        if not trainer_only or self.clock.is_owner():
            self.ledger.record_blocked(self.channel, collective, self.clock.now() - begin)

    def hold(self, start: float, seconds: float, collective: Collective) -> float:
        """Keeps the caller until ``start + seconds`` (link time shared by messages already waited for);
        records the extra wait as blocked and returns it."""
        extra = self.clock.wait_until(start + seconds)
        if extra > 0:
            self.ledger.record_blocked(self.channel, collective.value, extra)
        return extra

    def lane(self) -> LinkLane:
        """A new lane on this link (one direction, one message at a time)."""
        return LinkLane(self)


class LinkLane:
    """One direction of a worker's link: messages leave one after another, each ``bytes / rate`` long.

    :meth:`pace` reschedules a posted message behind the ones before it (the quantized ring's pipelined
    pieces); :meth:`wait_free` and :meth:`release` bracket a whole synchronisation that must not overlap the
    previous one on the link (Streaming DiLoCo's fragments).
    """

    def __init__(self, emulator: LinkEmulator) -> None:
        self.emulator = emulator
        self.free_at = float("-inf")

    def pace(self, message: Paced, num_bytes: int, *, arriving: bool) -> None:
        """Start ``message`` when the lane is free; an arriving message also pays one latency."""
        if self.emulator.model is None:
            return
        wire_s = self.emulator.message_time(num_bytes)
        start = max(message.start, self.free_at)
        self.free_at = start + wire_s
        message.start = start
        message.modeled_s = wire_s + (self.emulator.latency_s if arriving else 0.0)

    def wait_free(self) -> float:
        """Waits until the previous use of the lane has left the link; returns the seconds waited."""
        return self.emulator.clock.wait_until(self.free_at)

    def release(self) -> None:
        """Marks the lane busy until now (the caller's synchronisation has just left the link)."""
        self.free_at = self.emulator.clock.now()
