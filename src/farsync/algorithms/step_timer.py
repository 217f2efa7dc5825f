"""Measuring how long one inner step computes, so a synchronisation can be sized to hide behind compute.

An overlapped algorithm starts its all-reduce at the end of a round and needs the result only after the
next H inner steps (or tau steps, for a Streaming DiLoCo fragment). An adaptive compressor can keep its
message inside that window only if it knows how long the window is: ``steps x inner-step compute time``.

The algorithm sees the user's loop only through optimizer hooks, so the timer measures the real time
between consecutive ``after_inner_step`` calls and is restarted after the algorithm's own synchronisation
work, which must not count as compute. The estimate is the median of the recent intervals: the mean would
be dragged up by the occasional evaluation the loop runs between two steps. A clock that models compute
(``network.step_time_s``) is the answer itself: the window is then sized on the modelled step, as the run's
emulated time is.
"""

from __future__ import annotations

import statistics
import time
from collections import deque

from farsync.comm.clock import Clock

__all__ = ["InnerStepTimer"]


class InnerStepTimer:
    """Real seconds between inner steps (median of the last ``window`` intervals)."""

    def __init__(self, clock: Clock | None = None, window: int = 64) -> None:
        if window < 1:
            raise ValueError(f"window={window}: must be >= 1")
        self._modelled = clock.step_time_s if clock is not None and clock.models_compute else None
        self._last: float | None = None
        self._intervals: deque[float] = deque(maxlen=window)

    def tick(self) -> None:
        """Called once per inner step, right after it."""
        now = time.perf_counter()
        if self._last is not None:
            self._intervals.append(now - self._last)
        self._last = now

    def restart(self) -> None:
        """Forget the time since the last tick (call after the algorithm's own sync work)."""
        self._last = time.perf_counter()

    def step_s(self) -> float | None:
        """Estimated compute seconds of one inner step; ``None`` before two steps were seen."""
        if self._modelled is not None:
            return self._modelled
        if not self._intervals:
            return None
        return float(statistics.median(self._intervals))

    def window_s(self, num_steps: int) -> float | None:
        """Estimated compute seconds of ``num_steps`` inner steps; ``None`` before any estimate exists."""
        step = self.step_s()
        return None if step is None else num_steps * step
