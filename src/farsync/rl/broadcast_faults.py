"""Fault injection for weight broadcast: relays that corrupt shards or break a transfer off half-way.

This module owns the test and benchmark doubles of :class:`~farsync.rl.broadcast_relay.Relay` that
:mod:`farsync.rl.broadcast` must survive: :class:`CorruptingRelay` flips random bytes of a shard or
truncates it (in transit: the next read may be intact), and :class:`BreakingRelay` fails every read after the
first ``num_good_reads`` shard reads (a connection lost mid-transfer). Both count what they did, so a test or
benchmark can compare what was injected with what the consumer rejected.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from typing import Any

from farsync.rl.broadcast_relay import Relay, RelayError

__all__ = ["BreakingRelay", "CorruptingRelay"]


def _is_shard(name: str) -> bool:
    return name.endswith(".safetensors")


class CorruptingRelay:
    """Wraps a relay; each shard read is corrupted with probability ``p_corrupt``.

    A corrupted read either flips 1 to ``max_flips`` random bytes (half the time) or truncates the shard at a
    random length. ``corrupted`` counts corrupted reads per shard name; ``num_reads`` counts all shard reads.
    """

    def __init__(self, inner: Relay, p_corrupt: float, *, seed: int = 0, max_flips: int = 4) -> None:
        if not 0.0 <= p_corrupt <= 1.0:
            raise ValueError(f"p_corrupt must be in [0, 1], got {p_corrupt}")
        self.inner, self.p_corrupt, self.max_flips = inner, p_corrupt, max_flips
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.corrupted: Counter[str] = Counter()
        self.num_reads = 0

    def read(self, name: str, max_bytes: int, timeout_s: float) -> bytes:
        data = self.inner.read(name, max_bytes, timeout_s)
        if not _is_shard(name):
            return data
        with self._lock:
            self.num_reads += 1
            if self._rng.random() >= self.p_corrupt or not data:
                return data
            self.corrupted[name] += 1
            damaged = bytearray(data)
            if self._rng.random() < 0.5:
                for _ in range(self._rng.randint(1, self.max_flips)):
                    damaged[self._rng.randrange(len(damaged))] ^= 1 << self._rng.randrange(8)
                return bytes(damaged)
            return bytes(damaged[: self._rng.randrange(len(damaged))])

    def report(self, consumer_id: str, record: dict[str, Any], timeout_s: float) -> None:
        self.inner.report(consumer_id, record, timeout_s)


class BreakingRelay:
    """Wraps a relay; after ``num_good_reads`` shard reads every shard read raises :class:`RelayError`.

    ``shard_reads`` lists the shard names read successfully, in order; :meth:`heal` ends the outage.
    """

    def __init__(self, inner: Relay, num_good_reads: int) -> None:
        self.inner, self.num_good_reads = inner, num_good_reads
        self._lock = threading.Lock()
        self.shard_reads: list[str] = []
        self.broken = True

    def heal(self) -> None:
        self.broken = False

    def read(self, name: str, max_bytes: int, timeout_s: float) -> bytes:
        if _is_shard(name):
            with self._lock:
                if self.broken and len(self.shard_reads) >= self.num_good_reads:
                    raise RelayError(f"connection to the relay lost while reading {name}")
                self.shard_reads.append(name)
        return self.inner.read(name, max_bytes, timeout_s)

    def report(self, consumer_id: str, record: dict[str, Any], timeout_s: float) -> None:
        self.inner.report(consumer_id, record, timeout_s)
