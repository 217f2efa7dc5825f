"""Heartbeats: a worker thread that says "alive" through the store, and the coordinator's liveness table.

A worker's :class:`HeartbeatSender` sends a signed heartbeat to the coordinator's inbox every
``heartbeat_interval_s`` from its own thread and its own store connection, so a worker blocked in a long
inner step or a collective still beats. A heartbeat carries its channel's sequence number (and the worker's
round and step, which the fault injector reads). It travels through the inbox queue rather than a key, so a
stranger who overwrites keys cannot hide a live worker's heartbeats.

The coordinator's :class:`Liveness` never compares clocks across machines: it notes, on its own clock,
when each worker's sequence number last *changed*. A worker whose number has not moved for
``failure_timeout_s`` is dead. The clock is injected, so the rule is tested with a fake one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["HeartbeatSender", "Liveness"]

logger = logging.getLogger(__name__)


@dataclass
class _Seen:
    incarnation: str
    sequence: int
    last_change: float


class Liveness:
    """Last time each worker's heartbeat moved, on the coordinator's clock.

    Args:
        failure_timeout_s: silence after which a worker is dead.
        clock: monotonic seconds (``time.monotonic`` in production, a fake in tests).
    """

    def __init__(self, failure_timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failure_timeout_s = failure_timeout_s
        self.clock = clock
        self._seen: dict[int, _Seen] = {}

    def start(self, slot: int, incarnation: str) -> None:
        """A worker was admitted: it counts as just seen."""
        self._seen[slot] = _Seen(incarnation, -1, self.clock())

    def observe(self, slot: int, incarnation: str, sequence: int) -> None:
        """A heartbeat value read from the store; only a new sequence of the current incarnation counts."""
        seen = self._seen.get(slot)
        if seen is None or seen.incarnation != incarnation:
            return
        if sequence != seen.sequence:
            seen.sequence = sequence
            seen.last_change = self.clock()

    def forget(self, slot: int) -> None:
        self._seen.pop(slot, None)

    def is_alive(self, slot: int) -> bool:
        seen = self._seen.get(slot)
        return seen is not None and self.clock() - seen.last_change <= self.failure_timeout_s

    def silent_for(self, slot: int) -> float:
        seen = self._seen.get(slot)
        return float("inf") if seen is None else self.clock() - seen.last_change

    def dead(self) -> list[int]:
        """Slots tracked here whose heartbeat has been silent too long."""
        return sorted(slot for slot in self._seen if not self.is_alive(slot))


class HeartbeatSender(threading.Thread):
    """Calls ``beat(store)`` every ``interval_s`` on a connection of its own, reconnecting when it breaks.

    Args:
        connect: opens a new store connection (blocks, retrying, until the coordinator answers).
        beat: one heartbeat on that connection; it may also re-register after a coordinator restart.
        interval_s: seconds between beats.
    """

    def __init__(self, connect: Callable[[], Any], beat: Callable[[Any], None], interval_s: float) -> None:
        super().__init__(name="farsync-heartbeat", daemon=True)
        self._connect, self._beat, self.interval_s = connect, beat, interval_s
        self._stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        store: Any = None
        while not self._stop_event.is_set():
            try:
                if store is None:
                    store = self._connect()
                self._beat(store)
            except (RuntimeError, OSError, ValueError) as error:
                # The coordinator went away (or restarts): drop the connection and open a new one next beat.
                logger.info("heartbeat: store connection lost (%s); reconnecting", error)
                store = None
            except BaseException as error:  # noqa: BLE001 - kept for the main thread to re-raise
                self.error = error
                return
            self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
