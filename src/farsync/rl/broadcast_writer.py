"""A background writer for policy versions where the newest wins: the trainer never waits for the disk.

This module owns :class:`LatestWinsWriter`, the thread behind ``RelayPublisher(background=True)``
(:mod:`farsync.rl.broadcast`). ``submit`` hands over a snapshot and returns at once. One version is written
at a time; a version submitted while another is being written waits in a single slot, and a newer one replaces
it there (the replaced version is never published, and counted in ``num_skipped``): consumers only ever want
the newest version, and a queue would fall further behind on a slow disk. In a synchronous RL loop a version
is not replaced, since the trainer waits for rollouts of the last one before it makes the next.

A write that fails is logged; the next ``submit`` or :meth:`flush` raises it. :meth:`flush` waits, up to
``timeout_s``, until nothing is waiting or being written.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from torch import Tensor

__all__ = ["LatestWinsWriter"]

logger = logging.getLogger(__name__)


class LatestWinsWriter:
    """Writes ``(version, tensors)`` snapshots with ``write`` on a daemon thread, newest first (module docstring)."""

    def __init__(self, write: Callable[[int, dict[str, Tensor]], None], timeout_s: float) -> None:
        self._write, self.timeout_s = write, timeout_s
        self._condition = threading.Condition()
        self._waiting: tuple[int, dict[str, Tensor]] | None = None
        self._writing = False
        self._closing = False
        self._error: BaseException | None = None
        self.num_skipped = 0
        self._thread = threading.Thread(target=self._loop, name="publish", daemon=True)
        self._thread.start()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"a background publish failed: {error}") from error

    def submit(self, version: int, tensors: dict[str, Tensor]) -> None:
        with self._condition:
            self._raise_error()
            if self._waiting is not None:
                self.num_skipped += 1
                logger.info("version %d replaced by %d before it was written", self._waiting[0], version)
            self._waiting = (version, tensors)
            self._condition.notify_all()

    def flush(self) -> None:
        with self._condition:
            idle = self._condition.wait_for(
                lambda: self._waiting is None and not self._writing, self.timeout_s
            )
            if not idle:
                raise TimeoutError(f"a background publish took longer than {self.timeout_s:.0f}s")
            self._raise_error()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            with self._condition:
                self._closing = True
                self._condition.notify_all()
            self._thread.join(timeout=self.timeout_s)

    def _loop(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._waiting is not None or self._closing)
                if self._waiting is None:
                    return
                (version, tensors), self._waiting = self._waiting, None
                self._writing = True
            try:
                self._write(version, tensors)
            except Exception as error:  # noqa: BLE001 -- reported to the trainer by the next submit/flush
                logger.error("background publish of version %d failed: %s", version, error)
                with self._condition:
                    self._error = error
            finally:
                with self._condition:
                    self._writing = False
                    self._condition.notify_all()
