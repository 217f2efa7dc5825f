"""A rollout channel and a weight store in a run directory, for workers in other processes.

This module owns the file layouts that carry rollouts and policy versions between processes on one machine
(or a shared file system), following prime-rl's practice of typed, versioned files:

* :class:`DirectoryRolloutChannel`: ``push`` writes a message to a hidden temporary file and renames it to
  ``<time>-<pid>-<n>.json`` (a rename is atomic, so a reader never sees half a message); ``pull`` claims a
  file by renaming it into ``claimed/`` (only one consumer wins a rename), reads at most
  ``max_message_bytes + 1`` bytes (so an oversized message is rejected by the parser, not read whole) and
  deletes it.
* :class:`DirectoryWeights`: ``publish`` writes ``v<version>.safetensors`` then, last, the
  ``v<version>.complete`` marker holding the file's sha256; a reader trusts only versions with a marker and
  checks the hash. Each reader records the version it holds under ``readers/``; a version is deleted only
  when it is older than every reader's and older than the newest ``keep`` versions (the slowest consumer
  never loses the weights it is reading). Weights are read with safetensors, never unpickled.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Mapping
from itertools import count
from pathlib import Path

from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from farsync.rl.transport import ChannelFull, WeightsUnavailable

__all__ = ["DirectoryRolloutChannel", "DirectoryWeights"]

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


class DirectoryWeights:
    """A :class:`~farsync.rl.transport.WeightPublisher` and :class:`~farsync.rl.transport.WeightSource`
    over files in ``directory`` (see the module doc). ``reader_id`` names this reader (empty: a publisher)."""

    def __init__(self, directory: str | Path, *, reader_id: str = "", keep: int = 2) -> None:
        self.directory = Path(directory)
        self.readers = self.directory / "readers"
        self.readers.mkdir(parents=True, exist_ok=True)
        self.reader_id, self.keep = reader_id, keep
        self.bytes_published = 0
        self.bytes_fetched = 0

    def _complete_versions(self) -> list[int]:
        versions = []
        for name in os.listdir(self.directory):
            if name.startswith("v") and name.endswith(".complete") and name[1:-9].isdigit():
                versions.append(int(name[1:-9]))
        return sorted(versions)

    def publish(self, version: int, state_dict: Mapping[str, Tensor]) -> None:
        data = save_safetensors({name: t.detach().cpu().contiguous() for name, t in state_dict.items()})
        _write_atomically(self.directory / f"v{version:08d}.safetensors", data)
        digest = hashlib.sha256(data).hexdigest()
        _write_atomically(self.directory / f"v{version:08d}.complete", digest.encode("ascii"))
        self.bytes_published += len(data)
        self._collect_garbage()

    def _collect_garbage(self) -> None:
        versions = self._complete_versions()
        held = []
        for path in self.readers.iterdir():
            text = path.read_text(encoding="ascii", errors="replace").strip()
            if text.isdigit():
                held.append(int(text))
        floor = min([*held, *versions[-self.keep :]]) if versions else 0
        for version in versions:
            if version < floor:
                (self.directory / f"v{version:08d}.complete").unlink(missing_ok=True)
                (self.directory / f"v{version:08d}.safetensors").unlink(missing_ok=True)

    def latest_version(self) -> int:
        versions = self._complete_versions()
        return versions[-1] if versions else -1

    def fetch_latest(self, timeout_s: float, newer_than: int = -1) -> tuple[int, dict[str, Tensor]]:
        deadline = time.monotonic() + timeout_s
        while True:
            version = self.latest_version()
            if version > newer_than:
                state = self._read(version)
                if state is not None:
                    return version, state
            if time.monotonic() >= deadline:
                raise WeightsUnavailable(f"no policy version newer than {newer_than} within {timeout_s:.1f}s")
            time.sleep(_POLL_S * 4)

    def _read(self, version: int) -> dict[str, Tensor] | None:
        try:
            expected = (self.directory / f"v{version:08d}.complete").read_text(encoding="ascii").strip()
            data = (self.directory / f"v{version:08d}.safetensors").read_bytes()
        except FileNotFoundError:
            return None  # collected between listing and reading: the caller retries with a newer one
        if hashlib.sha256(data).hexdigest() != expected:
            logger.warning(
                "policy version %d in %s fails its sha256 check; not loaded", version, self.directory
            )
            return None
        if self.reader_id:
            _write_atomically(self.readers / self.reader_id, str(version).encode("ascii"))
        self.bytes_fetched += len(data)
        return dict(load_safetensors(data))
