"""The two interfaces that carry everything between RL roles, and their in-process implementations.

This module owns the seams between trainers and inference workers:

* :class:`WeightPublisher` / :class:`WeightSource`: a trainer publishes each new policy version (a state
  dict); a worker fetches the newest one. The SHARDCAST-like implementation (sharded, checksummed, over an
  existing transport) is :mod:`farsync.rl.broadcast`; :class:`InProcessWeights` serves tests and threads.
* :class:`RolloutChannel`: workers ``push`` encoded rollout messages (bytes, see
  :mod:`farsync.rl.messages`); trainers ``pull`` them. :class:`InProcessRolloutChannel` is a bounded queue;
  :class:`farsync.rl.files.DirectoryRolloutChannel` crosses processes through a run directory.

Every blocking call takes a timeout: ``fetch_latest`` raises :class:`WeightsUnavailable` when no version
newer than the caller's arrives in time; ``pull`` returns what it has (possibly nothing) when the time is up;
``push`` raises :class:`ChannelFull` rather than block forever.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "ChannelFull",
    "InProcessRolloutChannel",
    "InProcessWeights",
    "RolloutChannel",
    "WeightPublisher",
    "WeightSource",
    "WeightsUnavailable",
]

logger = logging.getLogger(__name__)


class WeightsUnavailable(TimeoutError):
    """No policy version newer than the caller's arrived before the timeout."""


class ChannelFull(TimeoutError):
    """A rollout channel stayed full for the whole push timeout."""


@runtime_checkable
class WeightPublisher(Protocol):
    """The trainer's side of weight broadcast."""

    def publish(self, version: int, state_dict: Mapping[str, Tensor]) -> None:
        """Makes ``state_dict`` available as policy ``version`` (versions only increase)."""
        ...


@runtime_checkable
class WeightSource(Protocol):
    """A worker's side of weight broadcast."""

    def latest_version(self) -> int:
        """The newest complete version published, or -1 if none; never blocks."""
        ...

    def fetch_latest(self, timeout_s: float, newer_than: int = -1) -> tuple[int, dict[str, Tensor]]:
        """The newest complete version and its state dict, waiting up to ``timeout_s`` for one newer than
        ``newer_than``; raises :class:`WeightsUnavailable` when none arrives."""
        ...


@runtime_checkable
class RolloutChannel(Protocol):
    """Carries encoded rollout messages from inference workers to trainers."""

    def push(self, message: bytes, timeout_s: float = 10.0) -> None:
        """Sends one message; raises :class:`ChannelFull` if it cannot be queued within ``timeout_s``."""
        ...

    def pull(self, max_n: int, timeout_s: float) -> list[bytes]:
        """Up to ``max_n`` messages, waiting up to ``timeout_s`` for the first; ``[]`` when none came."""
        ...

    def pending(self) -> int:
        """Messages pushed and not yet pulled (approximate across processes); workers throttle on it."""
        ...


class InProcessWeights:
    """A :class:`WeightPublisher` and :class:`WeightSource` in one process (threads, tests).

    ``publish`` stores detached CPU copies, so later training steps do not change a published version.
    Only the newest version is kept (a reader gets its own copy under the lock).
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._version = -1
        self._state: dict[str, Tensor] = {}
        self.num_published = 0

    def publish(self, version: int, state_dict: Mapping[str, Tensor]) -> None:
        copied = {name: tensor.detach().to("cpu", copy=True) for name, tensor in state_dict.items()}
        with self._condition:
            if version <= self._version:
                raise ValueError(f"version {version} is not newer than the published {self._version}")
            self._version, self._state = version, copied
            self.num_published += 1
            self._condition.notify_all()

    def latest_version(self) -> int:
        with self._condition:
            return self._version

    def fetch_latest(self, timeout_s: float, newer_than: int = -1) -> tuple[int, dict[str, Tensor]]:
        with self._condition:
            if not self._condition.wait_for(lambda: self._version > newer_than, timeout=timeout_s):
                raise WeightsUnavailable(f"no policy version newer than {newer_than} within {timeout_s:.1f}s")
            return self._version, {name: torch.clone(t) for name, t in self._state.items()}


class InProcessRolloutChannel:
    """A bounded in-process :class:`RolloutChannel` (a thread-safe FIFO of message bytes)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=capacity)

    def push(self, message: bytes, timeout_s: float = 10.0) -> None:
        try:
            self._queue.put(bytes(message), timeout=timeout_s)
        except queue.Full:
            raise ChannelFull(f"rollout channel full for {timeout_s:.1f}s") from None

    def pending(self) -> int:
        return self._queue.qsize()

    def pull(self, max_n: int, timeout_s: float) -> list[bytes]:
        messages: list[bytes] = []
        try:
            messages.append(self._queue.get(timeout=max(0.0, timeout_s)))
        except queue.Empty:
            return messages
        while len(messages) < max_n:
            try:
                messages.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return messages
