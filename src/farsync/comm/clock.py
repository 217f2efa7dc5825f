"""The run clock and the WAN emulator's waiting rule.

A collective on a real slow link takes ``wire_time`` (see :mod:`farsync.comm.cost`). On loopback it takes
far less, so after the real collective finishes the emulator waits for the remainder: the collective's
emulated end is ``start + max(real, modeled)``.

Two ways to wait:

* ``sleep``: really sleep, so wall-clock time is what the slow link would give (the default for runs);
* ``virtual``: add the remainder to a per-thread offset instead of sleeping. ``now()`` is then the time the
  run *would* have taken. Benchmarks use it so that a DDP baseline that would spend hours on a 10 Mbit/s link
  still finishes in minutes; ``benchmarks/netns_check.py`` checks the prediction against a kernel-shaped link.

Background synchronisation threads keep their own offset, started from the submitting thread's offset, so
a collective that overlaps compute costs the training thread nothing until it waits for the result.
"""

from __future__ import annotations

import threading
import time
from typing import Literal

__all__ = ["Clock"]


class Clock:
    """Monotonic seconds since the run started, plus emulated waiting (``sleep``, ``virtual`` or ``off``)."""

    def __init__(self, mode: Literal["sleep", "virtual", "off"] = "sleep") -> None:
        self.mode = mode
        self._start = time.perf_counter()
        self._local = threading.local()
        self._owner = threading.get_ident()

    def is_owner(self) -> bool:
        """True on the thread that created the clock (the training thread)."""
        return threading.get_ident() == self._owner

    @property
    def offset(self) -> float:
        """Virtual seconds this thread has waited on top of real time (0 unless mode is ``virtual``)."""
        return float(getattr(self._local, "offset", 0.0))

    def adopt(self, offset: float) -> None:
        """Starts this (background) thread from another thread's virtual offset."""
        self._local.offset = offset

    def now(self) -> float:
        return time.perf_counter() - self._start + self.offset

    def wait_until(self, target: float) -> float:
        """Waits until the emulated time ``target``; returns the seconds waited (0 if already past)."""
        remaining = target - self.now()
        if remaining <= 0 or self.mode == "off":
            return 0.0
        if self.mode == "sleep":
            time.sleep(remaining)
        else:
            self._local.offset = self.offset + remaining
        return remaining
