"""The byte ledger: what one worker put on the wire, per collective, and how long its caller was blocked."""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ByteLedger", "LedgerEntry"]


@dataclass
class LedgerEntry:
    """Totals for one (channel, collective) pair."""

    calls: int = 0
    payload_bytes: int = 0
    bytes_sent: int = 0
    modeled_s: float = 0.0
    blocked_s: float = 0.0


@dataclass
class ByteLedger:
    """Per-worker totals, keyed by ``(channel, collective)``.

    ``channel`` separates traffic classes that cross different links: ``"sync"`` (between replicas, over the
    slow link) and ``"activations"`` (inside a pipelined replica). Thread-safe: background synchronisation
    threads record here too.
    """

    rank: int = 0
    entries: dict[tuple[str, str], LedgerEntry] = field(default_factory=lambda: defaultdict(LedgerEntry))
    peak_sync_bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_call(
        self, channel: str, collective: str, payload_bytes: int, bytes_sent: int, modeled_s: float
    ) -> None:
        with self._lock:
            entry = self.entries[(channel, collective)]
            entry.calls += 1
            entry.payload_bytes += payload_bytes
            entry.bytes_sent += bytes_sent
            entry.modeled_s += modeled_s

    def record_blocked(self, channel: str, collective: str, seconds: float) -> None:
        with self._lock:
            self.entries[(channel, collective)].blocked_s += seconds

    def record_sync_peak(self, bytes_sent: int) -> None:
        """Bytes of one synchronisation event (a round's, or a fragment's): the ledger keeps the largest."""
        with self._lock:
            self.peak_sync_bytes = max(self.peak_sync_bytes, bytes_sent)

    def bytes_sent(self, channel: str | None = None) -> int:
        with self._lock:
            return sum(
                e.bytes_sent for (ch, _), e in self.entries.items() if channel is None or ch == channel
            )

    def blocked_s(self, channel: str | None = None) -> float:
        with self._lock:
            return sum(e.blocked_s for (ch, _), e in self.entries.items() if channel is None or ch == channel)

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "rank": self.rank,
                "peak_sync_bytes": self.peak_sync_bytes,
                "entries": {f"{ch}/{op}": vars(e).copy() for (ch, op), e in sorted(self.entries.items())},
            }

    def load_dict(self, data: dict[str, Any]) -> None:
        """Restores totals from :meth:`to_dict` (used when resuming from a checkpoint)."""
        with self._lock:
            self.entries.clear()
            self.peak_sync_bytes = int(data.get("peak_sync_bytes", 0))
            for key, values in data.get("entries", {}).items():
                channel, op = key.split("/", 1)
                self.entries[(channel, op)] = LedgerEntry(**values)
