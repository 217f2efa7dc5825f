"""Running a synchronisation in the background while the training thread goes on computing.

One worker thread per algorithm executes submitted jobs in order (collectives on a group must be issued in
the same order on every member, so there is never more than one thread talking on a group). The job's
thread starts from the training thread's virtual clock offset; the training thread, when it finally needs
the result, waits until the job's emulated end (through :class:`~farsync.comm.link.LinkEmulator`).
Communication that finishes while compute is still going therefore costs no wall time, which is the point
of the one-step-delay overlap.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Generic, TypeVar

from farsync.comm.clock import Clock
from farsync.comm.ledger import ByteLedger
from farsync.comm.link import LinkEmulator

__all__ = ["BackgroundSync", "Pending"]

T = TypeVar("T")


class Pending(Generic[T]):
    """A submitted job; :meth:`wait` returns its result once its emulated end has passed."""

    def __init__(self, future: concurrent.futures.Future[tuple[T, float]], emulator: LinkEmulator) -> None:
        self._future, self._emulator = future, emulator

    def done(self) -> bool:
        if not self._future.done():
            return False
        _, end = self._future.result()
        return self._emulator.clock.now() >= end

    def wait(self) -> T:
        begin = self._emulator.clock.now()
        value, end = self._future.result()
        self._emulator.wait_until(end)
        self._emulator.blocked_since(begin, "background", trainer_only=False)
        return value


class BackgroundSync:
    """A single background thread for one algorithm's synchronisations."""

    def __init__(self, clock: Clock, ledger: ByteLedger) -> None:
        self.clock, self.ledger = clock, ledger
        # No link model: the job's own collectives charged the link; here only the wait for its end remains.
        self._emulator = LinkEmulator(None, clock, ledger, "sync", 1)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="farsync-sync")

    def submit(self, job: Callable[[], T]) -> Pending[T]:
        offset = self.clock.offset

        def run() -> tuple[T, float]:
            self.clock.adopt(offset)
            value = job()
            return value, self.clock.now()

        return Pending(self._pool.submit(run), self._emulator)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
