"""Quorum formation: which workers synchronise together at each outer-round boundary (pure logic).

The coordinator feeds this book what it reads from the store (admissions, heartbeats, arrivals at a
boundary, reports that a boundary's work is done) and publishes the replies the book returns. No I/O and an
injected clock, so every rule is tested with a fake clock.

A run is a sequence of *boundaries*. At each one:

1. **Gather.** Members of the last quorum arrive (each with its round, the hash of its global weights and
   whether it holds a pseudo-gradient); new or restarted workers arrive too. The book waits until every
   member of the last quorum has arrived, died (heartbeat silent for ``failure_timeout_s``) or been
   replaced by a restart, and until at least ``min_workers`` live workers are there. With no quorum yet
   (start, coordinator restart) it waits for every admitted live worker.
2. **Decide.** The members are the live arrivals, sorted. The *source* is the lowest member at the highest
   round; members whose ``(round, hash)`` differ from the source's are *healers* and receive its state.
   The collective runs if any member holds a pseudo-gradient (a healed one contributes weight 0). A new
   membership, a restarted member or a failure at the last boundary gets a new quorum id (a new process
   group); the same membership keeps its group.
3. **Commit.** Members report whether healing and the collective succeeded. When every member has reported
   or died, the boundary commits if every report is a success; otherwise everyone retries: they arrive
   again with the pseudo-gradients they still hold, and only the collective is redone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from farsync.comm.schema import MessageRejected, rule, validate
from farsync.elastic.heartbeat import Liveness

__all__ = ["Arrival", "Decision", "QuorumBook", "Reply"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arrival:
    """A worker at a boundary: who it is and what state it holds."""

    worker: int
    incarnation: str
    round: int
    """Outer rounds this worker's global weights have completed."""
    step: int
    """Inner steps completed (at the end of the round it holds a pseudo-gradient for)."""
    sha: str
    """Hash of its global weights (equal hashes: no healing needed)."""
    pending: bool
    """True when it holds a pseudo-gradient for ``round`` to contribute."""


@dataclass(frozen=True)
class Decision:
    """What a quorum does at one boundary; published to every member."""

    boundary: int = rule(minimum=0)
    quorum_id: int = rule(minimum=0)
    members: tuple[int, ...] = rule(max_length=1 << 16)
    source: int = rule(minimum=0)
    healers: tuple[int, ...] = rule(max_length=1 << 16)
    round: int = rule(minimum=0)
    step: int = rule(minimum=0)
    reduce: bool = rule()
    reason: str = rule(max_length=1 << 16)

    def rank_of(self, worker: int) -> int:
        return self.members.index(worker)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["members"], data["healers"] = list(self.members), list(self.healers)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        """The decision in a (verified) reply, type-checked; raises MessageRejected when malformed."""
        decision = validate(data, cls)
        if decision.source not in decision.members or not set(decision.healers) <= set(decision.members):
            raise MessageRejected("Decision: source and healers must be members")
        return decision


@dataclass(frozen=True)
class Reply:
    """An answer for the worker waiting on ``request_id``."""

    request_id: str
    payload: dict[str, Any]


@dataclass
class _Commit:
    decision: Decision
    incarnations: dict[int, str]
    reports: dict[int, tuple[str, bool]] = field(default_factory=dict)


class QuorumBook:
    """Membership, boundaries and commits of one coordinator's life (see the module docstring).

    Args:
        min_workers: below this many live workers no quorum is formed; arrivals wait.
        failure_timeout_s: heartbeat silence after which a worker is dead.
        clock: monotonic seconds.
    """

    def __init__(
        self, *, min_workers: int, failure_timeout_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.min_workers = min_workers
        self.clock = clock
        self.liveness = Liveness(failure_timeout_s, clock)
        self.admitted: dict[int, str] = {}
        self.progress: dict[int, tuple[int, int]] = {}
        self.arrivals: dict[int, tuple[str, Arrival]] = {}
        self.current: Decision | None = None
        self.commit: _Commit | None = None
        self.boundary = 0
        self.quorum_id = -1
        self.broken = False
        self.finished = False
        self.events: list[dict[str, Any]] = []
        self._born = clock()
        self.num_quorum_changes = 0
        self.worker_failures = 0
        self._failure_notes: list[str] = []
        self._incarnations: dict[int, str] = {}

    # ---------------------------------------------------------------------------------- membership
    @property
    def failure_timeout_s(self) -> float:
        return self.liveness.failure_timeout_s

    @failure_timeout_s.setter
    def failure_timeout_s(self, value: float) -> None:
        self.liveness.failure_timeout_s = value

    def admit(self, slot: int | None, incarnation: str, num_slots: int) -> tuple[int | None, str]:
        """Admits a worker into ``slot`` (or the lowest free one); returns (slot, "") or (None, why not).

        A new incarnation asking for a slot held by an older one replaces it: the old one is a failure.
        """
        if slot is not None and not 0 <= slot < num_slots:
            return None, f"worker slot {slot} is outside 0..{num_slots - 1} (num_workers = {num_slots})"
        if slot is None:
            free = [s for s in range(num_slots) if s not in self.admitted]
            if not free:
                return None, f"all {num_slots} worker slots are taken by live workers"
            slot = free[0]
        old = self.admitted.get(slot)
        if old is not None and old != incarnation:
            self._fail(slot, "restarted (a new incarnation took its slot)")
        self.admitted[slot] = incarnation
        if old != incarnation:
            self.liveness.start(slot, incarnation)
        return slot, ""

    def is_current(self, slot: int, incarnation: str) -> bool:
        return self.admitted.get(slot) == incarnation

    def beat(self, slot: int, incarnation: str, sequence: int, round_index: int = -1, step: int = -1) -> None:
        if self.is_current(slot, incarnation):
            self.liveness.observe(slot, incarnation, sequence)
            self.progress[slot] = (round_index, step)

    def leave(self, slot: int, incarnation: str, finished: bool) -> None:
        """A worker left on purpose (``finished``: it completed training, so the run is over)."""
        if not self.is_current(slot, incarnation):
            return
        del self.admitted[slot]
        self.liveness.forget(slot)
        self.arrivals.pop(slot, None)
        self.finished = self.finished or finished

    def alive(self, slot: int) -> bool:
        return slot in self.admitted and self.liveness.is_alive(slot)

    def _event(self, event: dict[str, Any]) -> None:
        self.events.append({**event, "time_s": round(self.clock() - self._born, 3)})

    def _fail(self, slot: int, why: str) -> None:
        self.worker_failures += 1
        self._failure_notes.append(f"{slot} {why}")
        self._event({"kind": "failure", "worker": slot, "reason": why, "boundary": self.boundary})
        logger.warning("worker %d lost: %s", slot, why)
        self.admitted.pop(slot, None)
        self.liveness.forget(slot)
        self.arrivals.pop(slot, None)
        self.progress.pop(slot, None)

    # ---------------------------------------------------------------------------------- boundaries
    def arrive(self, request_id: str, arrival: Arrival) -> list[Reply]:
        """A worker waits at the next boundary; its reply comes when the quorum is decided."""
        if not self.is_current(arrival.worker, arrival.incarnation):
            return [
                Reply(
                    request_id, {"error": "unknown", "detail": "not admitted (or declared dead); join again"}
                )
            ]
        if self.finished:
            return [Reply(request_id, {"finished": True})]
        self.arrivals[arrival.worker] = (request_id, arrival)
        return []

    def done(self, request_id: str, slot: int, incarnation: str, boundary: int, ok: bool) -> list[Reply]:
        """A member finished (or failed) healing and the collective of ``boundary``."""
        commit = self.commit
        if (
            commit is None
            or commit.decision.boundary != boundary
            or commit.incarnations.get(slot) != incarnation
        ):
            return [Reply(request_id, {"commit": False, "detail": "not a member of this boundary's quorum"})]
        commit.reports[slot] = (request_id, ok)
        return []

    def tick(self) -> list[Reply]:
        """Applies heartbeat timeouts, then commits or decides what is ready; returns replies to publish."""
        for slot in self.liveness.dead():
            if slot in self.admitted:
                self._fail(slot, f"heartbeat silent for more than {self.failure_timeout_s:g}s")
        if self.finished:
            replies = [Reply(rid, {"finished": True}) for rid, _ in self.arrivals.values()]
            self.arrivals.clear()
            return replies + self._try_commit()
        if self.commit is not None:
            return self._try_commit()
        return self._try_decide()

    def _gone(self, slot: int, incarnation: str) -> bool:
        return not self.is_current(slot, incarnation)

    def _try_commit(self) -> list[Reply]:
        commit = self.commit
        if commit is None:
            return []
        waiting = [
            s for s, inc in commit.incarnations.items() if s not in commit.reports and not self._gone(s, inc)
        ]
        if waiting:
            return []
        ok = bool(commit.reports) and all(flag for _, flag in commit.reports.values())
        self.commit = None
        self.current = commit.decision
        self.boundary = commit.decision.boundary + 1
        if not ok:
            self.broken = True
            self._event(
                {
                    "kind": "retry",
                    "boundary": commit.decision.boundary,
                    "quorum_id": commit.decision.quorum_id,
                }
            )
        return [Reply(rid, {"commit": ok}) for rid, _ in commit.reports.values()]

    def waiting_reason(self) -> str | None:
        """Why the next quorum is not formed yet (None when it can be)."""
        arrived = {s for s in self.arrivals if self.alive(s)}
        if self.current is not None:
            missing = [m for m in self.current.members if m not in arrived and self.alive(m)]
            if missing:
                return f"waiting for members {missing} to reach the round boundary"
        else:
            missing = [s for s in self.admitted if s not in arrived and self.alive(s)]
            if missing:
                return f"waiting for admitted workers {sorted(missing)} to arrive"
        if len(arrived) < self.min_workers:
            return (
                f"{len(arrived)} of min_workers={self.min_workers} workers alive and ready; waiting for more"
            )
        return None

    def _try_decide(self) -> list[Reply]:
        if not self.arrivals or self.waiting_reason() is not None:
            return []
        arrived = {s: a for s, (_, a) in self.arrivals.items() if self.alive(s)}
        decision = self._decide(arrived)
        replies = [Reply(rid, decision.to_dict()) for s, (rid, _) in self.arrivals.items() if s in arrived]
        self.commit = _Commit(decision, {s: arrived[s].incarnation for s in decision.members})
        self.arrivals.clear()
        return replies

    def _decide(self, arrived: dict[int, Arrival]) -> Decision:
        members = tuple(sorted(arrived))
        top_round = max(a.round for a in arrived.values())
        at_top = [s for s in members if arrived[s].round == top_round]
        source = min(at_top, key=lambda s: (not arrived[s].pending, s))
        reference = arrived[source]
        healers = tuple(
            s for s in members if (arrived[s].round, arrived[s].sha) != (reference.round, reference.sha)
        )
        # Any pseudo-gradient at the boundary means an outer step: even one whose owner is healed (weight 0)
        # must run the collective, because that owner is inside its outer step and will apply its result.
        reduce = any(arrived[s].pending for s in members)
        previous = self.current.members if self.current is not None else ()
        incarnations = {s: arrived[s].incarnation for s in members}
        # A restarted worker keeps its slot but not the old process group: a new incarnation is a change.
        changed = self.current is None or incarnations != self._incarnations or self.broken
        reason = self._reason(previous, members, healers, incarnations)
        self._incarnations = incarnations
        if changed:
            self.quorum_id += 1
            if self.current is not None:
                self.num_quorum_changes += 1
            self._event(
                {
                    "kind": "quorum",
                    "quorum_id": self.quorum_id,
                    "boundary": self.boundary,
                    "round": reference.round,
                    "members": list(members),
                    "healers": list(healers),
                    "reason": reason,
                }
            )
        self.broken = False
        self._failure_notes = []
        return Decision(
            boundary=self.boundary,
            quorum_id=self.quorum_id,
            members=members,
            source=source,
            healers=healers,
            round=reference.round,
            step=reference.step,
            reduce=reduce,
            reason=reason if changed else "unchanged",
        )

    def _reason(
        self,
        previous: tuple[int, ...],
        members: tuple[int, ...],
        healers: tuple[int, ...],
        incarnations: dict[int, str],
    ) -> str:
        if self.current is None:
            return "start" if self.quorum_id < 0 else "formed again (no previous quorum)"
        parts = []
        joined = sorted(set(members) - set(previous))
        joined += [s for s in members if s in previous and self._incarnations.get(s) != incarnations[s]]
        left = sorted(set(previous) - set(members))
        if left:
            parts.append(f"left {left}")
        if self._failure_notes:
            parts.append("failures: " + "; ".join(self._failure_notes))
        if joined:
            parts.append(f"joined {joined}")
        if healers:
            parts.append(f"healing {list(healers)}")
        if self.broken:
            parts.append("retry after a failed collective")
        return ", ".join(parts) or "unchanged"

    def status(self) -> str:
        """One line for terminals: phase, members and what the next quorum waits for."""
        if self.finished:
            return "run finished"
        if self.commit is not None:
            return (
                f"boundary {self.commit.decision.boundary}: quorum {self.commit.decision.quorum_id} syncing"
            )
        reason = self.waiting_reason()
        alive = sorted(s for s in self.admitted if self.alive(s))
        return f"boundary {self.boundary}: alive {alive}; " + (reason or "forming quorum")
