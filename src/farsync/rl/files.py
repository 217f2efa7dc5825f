"""A rollout channel in a run directory, for workers in other processes.

This module owns the file layout that carries rollouts between processes on one machine
(or a shared file system), following prime-rl's practice of typed, versioned files:

* :class:`DirectoryRolloutChannel`: ``push`` writes a message to a hidden temporary file and renames it to
  ``<time>-<pid>-<n>.json`` (a rename is atomic, so a reader never sees half a message); ``pull`` claims a
  file by renaming it into ``claimed/`` (only one consumer wins a rename), reads at most
  ``max_message_bytes + 1`` bytes (so an oversized message is rejected by the parser, not read whole) and
  deletes it.

Policy versions travel through the SHARDCAST-like relay instead (:mod:`farsync.rl.broadcast`).
"""

from __future__ import annotations

import logging
import os
import time
from itertools import count
from pathlib import Path

from farsync.rl.transport import ChannelFull

__all__ = ["DirectoryRolloutChannel"]

logger = logging.getLogger(__name__)

_POLL_S = 0.005


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


class DirectoryRolloutChannel:
    """A :class:`~farsync.rl.transport.RolloutChannel` over files in ``directory`` (see the module doc)."""

    def __init__(
        self, directory: str | Path, *, capacity: int = 100_000, max_message_bytes: int = 1 << 20
    ) -> None:
        self.directory = Path(directory)
        self.claimed = self.directory / "claimed"
        self.claimed.mkdir(parents=True, exist_ok=True)
        self.capacity, self.max_message_bytes = capacity, max_message_bytes
        self._counter = count()

    def _ready(self) -> list[str]:
        return sorted(name for name in os.listdir(self.directory) if name.endswith(".json"))

    def pending(self) -> int:
        return len(self._ready())

    def push(self, message: bytes, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.pending() >= self.capacity:
            if time.monotonic() > deadline:
                raise ChannelFull(f"{self.directory} held {self.capacity} messages for {timeout_s:.1f}s")
            time.sleep(_POLL_S * 10)
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._counter):09d}.json"
        _write_atomically(self.directory / name, bytes(message))

    def pull(self, max_n: int, timeout_s: float) -> list[bytes]:
        deadline = time.monotonic() + timeout_s
        messages: list[bytes] = []
        while True:
            for name in self._ready()[: max_n - len(messages)]:
                target = self.claimed / f"{name}.{os.getpid()}"
                try:
                    os.replace(self.directory / name, target)
                except FileNotFoundError:
                    continue  # another consumer claimed it first
                with open(target, "rb") as handle:
                    messages.append(handle.read(self.max_message_bytes + 1))
                target.unlink()
            if messages or time.monotonic() >= deadline:
                return messages
            time.sleep(_POLL_S)
