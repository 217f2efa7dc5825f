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

Modelled compute (``step_time_s > 0``, virtual mode only): ``now()`` ignores real time altogether and the
training loop charges ``step_time_s`` per inner step (:meth:`Clock.add_compute`), so the clock is the time the
run would take on a machine whose inner step computes in ``step_time_s`` over the emulated link. This makes
the emulated wall-clock independent of how busy this machine is (a benchmark comparing methods by time on a
shared 2-core box would otherwise measure the other jobs) and lets a user ask what a GPU whose step takes
0.3 s would see on a 100 Mbit/s link. Only inner steps cost time: evaluation, the outer step and the
compressors' encode/decode are free in this mode (small beside a step at scale; measured compute includes
them), and every worker computes at the same speed, so no worker waits for a straggler.
"""

from __future__ import annotations

import threading
import time
from typing import Literal

__all__ = ["Clock"]


class Clock:
    """Monotonic seconds since the run started, plus emulated waiting (``sleep``, ``virtual`` or ``off``)."""

    def __init__(
        self, mode: Literal["sleep", "virtual", "off"] = "sleep", *, step_time_s: float = 0.0
    ) -> None:
        if step_time_s < 0 or (step_time_s > 0 and mode != "virtual"):
            raise ValueError(
                f"step_time_s={step_time_s}: must be 0, or > 0 with mode 'virtual' (got {mode!r})"
            )
        self.mode = mode
        self.step_time_s = step_time_s
        """Modelled seconds of one inner step (module docstring); 0: real time is measured."""
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

    @property
    def models_compute(self) -> bool:
        """True when inner steps cost ``step_time_s`` each and real time is not counted."""
        return self.step_time_s > 0

    def now(self) -> float:
        if self.step_time_s > 0:
            return self.offset
        return time.perf_counter() - self._start + self.offset

    def add_compute(self, num_steps: int = 1) -> None:
        """Charges ``num_steps`` inner steps of modelled compute to this thread (nothing if not modelled)."""
        if self.step_time_s > 0:
            self._local.offset = self.offset + num_steps * self.step_time_s

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
