"""Validation of incoming updates and the strike book that excludes repeat offenders.

:func:`validate_update` screens an update before it reaches an aggregation rule: wrong shape or dtype,
non-finite values and an excessive norm are all rejected with a human-readable reason. The same checks run on
an :class:`UpdateSummary` (:func:`check_summary`), which is what a distributed reducer all-gathers so that
every worker reaches the same verdict on every sender. :class:`StrikeBook`
counts those rejections per worker and excludes a worker once it has collected ``max_strikes`` of them, a
simplified form of the banning used by BTARD (Gorbunov et al. 2021, arXiv 2106.11257).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

__all__ = ["StrikeBook", "UpdateSummary", "check_summary", "summarize_update", "validate_update"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpdateSummary:
    """What validation needs to know about an update, small enough to all-gather from every worker.

    A distributed reducer cannot see every worker's full update before aggregating it, but every worker can
    see every worker's summary (a few numbers), so all of them reach the same verdict on every sender.
    """

    shape: tuple[int, ...]
    """Shape of the update (a valid update is flat)."""
    dtype: torch.dtype
    """Dtype of the update."""
    finite: bool
    """Whether every value is finite."""
    norm: float
    """Euclidean norm, accumulated in float64 (``inf`` when any value is not finite)."""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def summarize_update(update: torch.Tensor) -> UpdateSummary:
    """The :class:`UpdateSummary` of ``update``."""
    finite = bool(torch.isfinite(update).all())
    # float64 accumulation: a finite fp32 update can have a norm that overflows fp32.
    norm = float(torch.linalg.vector_norm(update, dtype=torch.float64)) if finite else math.inf
    return UpdateSummary(shape=tuple(update.shape), dtype=update.dtype, finite=finite, norm=norm)


def check_summary(
    summary: UpdateSummary,
    *,
    expected_numel: int,
    expected_dtype: torch.dtype,
    max_norm: float | None,
) -> str | None:
    """Return why the update ``summary`` describes must be rejected, or ``None`` (see :func:`validate_update`)."""
    if max_norm is not None and not (math.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"max_norm must be None or a finite number > 0, got {max_norm!r}")
    if len(summary.shape) != 1 or summary.numel != expected_numel:
        return f"wrong shape: expected ({expected_numel},), got {summary.shape}"
    if summary.dtype != expected_dtype:
        return f"wrong dtype: expected {expected_dtype}, got {summary.dtype}"
    if not summary.finite:
        return "non-finite values"
    if max_norm is not None and summary.norm > max_norm:
        return f"norm {summary.norm:.6g} above bound {max_norm:.6g}"
    return None


def validate_update(
    update: torch.Tensor,
    *,
    expected_numel: int,
    expected_dtype: torch.dtype,
    max_norm: float | None,
) -> str | None:
    """Return why ``update`` must be rejected, or ``None`` if it is acceptable.

    An acceptable update is a flat tensor of ``expected_numel`` elements and ``expected_dtype``, with only
    finite values and, when ``max_norm`` is set, a Euclidean norm of at most ``max_norm``. Checks run in
    that order and the first failure is reported.
    """
    if max_norm is not None and not (math.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"max_norm must be None or a finite number > 0, got {max_norm!r}")
    if not isinstance(update, torch.Tensor):
        return f"not a tensor: got {type(update).__name__}"
    return check_summary(
        summarize_update(update),
        expected_numel=expected_numel,
        expected_dtype=expected_dtype,
        max_norm=max_norm,
    )


@dataclass(frozen=True)
class _Strike:
    round: int
    reason: str


class StrikeBook:
    """Per-worker record of rejected updates; a worker with ``max_strikes`` strikes is excluded for good.

    Each strike is logged as a warning naming the worker and the reason, and exclusion once more (``log=False``
    keeps a book quiet, e.g. on all but one of many workers that keep identical books). Strikes
    are never forgiven; a checkpoint carries them through :meth:`state_dict` and :meth:`load_state_dict`.
    """

    def __init__(self, max_strikes: int, *, log: bool = True) -> None:
        if isinstance(max_strikes, bool) or not isinstance(max_strikes, int) or max_strikes < 1:
            raise ValueError(f"max_strikes must be an integer >= 1, got {max_strikes!r}")
        self.max_strikes = max_strikes
        self.log = log
        self._strikes: dict[int, list[_Strike]] = {}

    def record(self, worker: int, round: int, reason: str) -> bool:
        """Record a strike against ``worker`` in ``round``; return ``True`` if the worker is now excluded."""
        strikes = self._strikes.setdefault(worker, [])
        strikes.append(_Strike(round=round, reason=reason))
        if not self.log:
            return self.is_excluded(worker)
        logger.warning(
            "worker %d strike %d/%d in round %d: %s", worker, len(strikes), self.max_strikes, round, reason
        )
        if len(strikes) == self.max_strikes:
            logger.warning("worker %d excluded after %d strikes", worker, len(strikes))
        return self.is_excluded(worker)

    def exclude(self, worker: int, round: int, reason: str) -> None:
        """Exclude ``worker`` now, whatever its strikes (a proven offence, e.g. a wrong aggregate)."""
        strikes = self._strikes.setdefault(worker, [])
        if len(strikes) >= self.max_strikes:
            return
        strikes.extend(_Strike(round=round, reason=reason) for _ in range(self.max_strikes - len(strikes)))
        if self.log:
            logger.warning("worker %d excluded in round %d: %s", worker, round, reason)

    def num_strikes(self, worker: int) -> int:
        """Number of strikes recorded against ``worker``."""
        return len(self._strikes.get(worker, []))

    def is_excluded(self, worker: int) -> bool:
        """Whether ``worker`` has reached ``max_strikes`` strikes."""
        return self.num_strikes(worker) >= self.max_strikes

    @property
    def excluded(self) -> list[int]:
        """Excluded workers, in increasing order."""
        return sorted(worker for worker in self._strikes if self.is_excluded(worker))

    def state_dict(self) -> dict[str, object]:
        """JSON-serialisable snapshot: ``max_strikes`` and a list of ``{worker, round, reason}`` strikes."""
        strikes = [
            {"worker": worker, "round": strike.round, "reason": strike.reason}
            for worker in sorted(self._strikes)
            for strike in self._strikes[worker]
        ]
        return {"max_strikes": self.max_strikes, "strikes": strikes}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Replace the recorded strikes with those in ``state``; this book keeps its own ``max_strikes``."""
        records = state.get("strikes")
        if not isinstance(records, list):
            raise ValueError(f"state['strikes'] must be a list, got {type(records).__name__}")
        loaded: dict[int, list[_Strike]] = {}
        for record in records:
            if not isinstance(record, dict):
                raise ValueError(f"each strike must be a dict, got {type(record).__name__}")
            worker, round_index, reason = record.get("worker"), record.get("round"), record.get("reason")
            if not isinstance(worker, int) or not isinstance(round_index, int) or not isinstance(reason, str):
                raise ValueError(f"strike must have int worker, int round and str reason, got {record!r}")
            loaded.setdefault(worker, []).append(_Strike(round=round_index, reason=reason))
        if state.get("max_strikes") != self.max_strikes:
            logger.info(
                "loading strikes recorded with max_strikes=%s into a book with max_strikes=%d",
                state.get("max_strikes"),
                self.max_strikes,
            )
        self._strikes = loaded
