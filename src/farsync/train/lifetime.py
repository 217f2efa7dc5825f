"""Worker processes that never outlive their launcher, and launchers that stop their workers on any signal.

A launcher (``farsync train``, the elastic launcher) owns its worker processes. Three things keep them tied:

* :class:`StopSignals` turns SIGTERM and SIGHUP in the launcher into a :class:`Stopped` exception (SIGINT is
  already ``KeyboardInterrupt``), so the launcher's ``finally`` blocks run and stop the workers;
* :func:`stop_processes` stops them: SIGTERM, a short grace period, then SIGKILL;
* :func:`become_worker_process`, called first thing in a worker, asks the kernel for SIGKILL when the parent
  dies (Linux ``prctl(PR_SET_PDEATHSIG)``; elsewhere a thread that watches the parent's pid), so even a
  SIGKILLed launcher, whose handlers never run, takes its workers with it. It also ignores SIGINT: a Ctrl-C
  reaches the whole terminal process group, and the launcher alone decides how the run stops, so the
  terminal shows one line per process instead of a traceback per worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any, Protocol

__all__ = ["StopSignals", "Stopped", "become_worker_process", "ignoring_interrupts", "stop_processes"]

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """The launcher received a stop signal (SIGTERM, SIGHUP); ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


class StopSignals:
    """Context manager: in the main thread, SIGTERM and SIGHUP raise :class:`Stopped` while it is entered.

    Elsewhere (a launcher run from a thread) it does nothing: Python delivers signals to the main thread.
    """

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in _STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._raise)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @staticmethod
    def _raise(signum: int, frame: FrameType | None) -> None:
        del frame
        raise Stopped(signum)


@contextlib.contextmanager
def ignoring_interrupts() -> Iterator[None]:
    """SIGINT ignored while children are started from the main thread: a process inherits an ignored SIGINT,
    and Python leaves it ignored, so a Ctrl-C while a worker is still importing cannot print a traceback."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(0.5)


def become_worker_process(parent: int) -> None:
    """Ties this process to ``parent`` (the launcher's pid): it is killed when the launcher dies.

    Also restores the default SIGTERM and SIGHUP (a forked worker inherits the launcher's handlers) and
    ignores SIGINT (the launcher stops its workers on Ctrl-C).
    """
    for signum in _STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError) as error:
            logger.debug("prctl(PR_SET_PDEATHSIG) unavailable: %s", error)
    if not armed:
        threading.Thread(
            target=_watch_parent, args=(parent,), name="farsync-parent-watch", daemon=True
        ).start()
    if os.getppid() != parent:  # the launcher died before the kernel was told to watch it
        os._exit(1)


class _Process(Protocol):
    @property
    def pid(self) -> int | None: ...

    def is_alive(self) -> bool: ...

    def join(self, timeout: float | None = None) -> None: ...


def stop_processes(processes: Sequence[_Process], grace_s: float = 3.0) -> list[int]:
    """Stops every live process: SIGTERM, up to ``grace_s`` to exit, then SIGKILL. Returns the pids stopped."""
    stopped = [p for p in processes if p.is_alive() and p.pid is not None]
    for process in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(process.pid or 0), signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in stopped:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in stopped:
        if process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(process.pid or 0), signal.SIGKILL)
            process.join(5.0)
    return [int(p.pid or 0) for p in stopped]
