"""Fault injection for elastic runs: kill worker processes with SIGKILL and bring them back later.

The injector never reaches into a worker: it watches progress (each worker's round and step, as the
coordinator reads them from heartbeats) and acts on processes through a small :class:`Processes` interface
(the elastic launcher's worker pool), exactly as a pre-emption or a crashed machine would:

* scheduled kills: ``ScheduledKill(worker=2, round=3, step=25)`` kills worker 2 once its heartbeat shows
  round >= 3 and step >= 25;
* random kills: about every ``every_rounds`` rounds (uniform between half and one and a half times that) a
  random live, training worker is killed, never leaving fewer than ``min_alive`` running and never at or
  after ``last_round``;
* every killed worker is restarted ``restart_after_s`` seconds later (a new process, a new incarnation).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["FaultInjector", "FaultPlan", "Processes", "ScheduledKill"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScheduledKill:
    """Kill ``worker`` once its progress reaches ``round`` (and ``step``, if given)."""

    worker: int
    round: int
    step: int = 0


@dataclass(kw_only=True)
class FaultPlan:
    """What to break and when."""

    kills: list[ScheduledKill] = field(default_factory=list)
    """Kills at chosen points."""
    every_rounds: float = 0.0
    """Random kills about every this many rounds (0 disables)."""
    restart_after_s: float = 5.0
    """A killed worker comes back after this many seconds (negative: never)."""
    min_alive: int = 1
    """Random kills never leave fewer running workers than this."""
    jitter_s: float = 0.0
    """A random kill lands uniformly within this many seconds after its round is reached, so kills hit
    inner steps, collectives and healing alike."""
    last_round: int = 1 << 30
    """No random kill at or after this round (so restarts can rejoin before the run ends)."""
    seed: int = 0
    """Seed of the random choices."""


class Processes(Protocol):
    """The worker processes the injector may kill and restart, by slot."""

    def slots(self) -> list[int]: ...

    def is_running(self, slot: int) -> bool: ...

    def kill(self, slot: int) -> None: ...

    def start(self, slot: int) -> None: ...


class FaultInjector:
    """Applies a :class:`FaultPlan` to ``processes``; call :meth:`step` often with the latest progress."""

    def __init__(
        self, plan: FaultPlan, processes: Processes, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.plan, self.processes, self.clock = plan, processes, clock
        self.random = random.Random(plan.seed)
        self.scheduled = list(plan.kills)
        self.restarts: dict[int, float] = {}
        self.log: list[dict[str, Any]] = []
        self._next_random_round = self._draw(0) if plan.every_rounds > 0 else None
        self._random_due: float | None = None

    def _draw(self, after: int) -> int:
        k = self.plan.every_rounds
        return after + max(1, round(self.random.uniform(0.5 * k, 1.5 * k)))

    def _kill(self, slot: int, progress: tuple[int, int], why: str) -> None:
        self.processes.kill(slot)
        self.log.append(
            {
                "kind": "kill",
                "worker": slot,
                "round": progress[0],
                "step": progress[1],
                "time": self.clock(),
                "why": why,
            }
        )
        logger.warning("fault injector: SIGKILL worker %d at round %d step %d (%s)", slot, *progress, why)
        if self.plan.restart_after_s >= 0:
            self.restarts[slot] = self.clock() + self.plan.restart_after_s

    def step(self, progress: dict[int, tuple[int, int]]) -> None:
        """Kills what is due given ``progress`` (slot -> (round, step)) and restarts what has waited enough."""
        now = self.clock()
        for slot, due in list(self.restarts.items()):
            if now >= due:
                del self.restarts[slot]
                self.processes.start(slot)
                self.log.append({"kind": "restart", "worker": slot, "time": now})
        for kill in list(self.scheduled):
            seen = progress.get(kill.worker)
            if (
                seen is not None
                and self.processes.is_running(kill.worker)
                and seen >= (kill.round, kill.step)
            ):
                self.scheduled.remove(kill)
                self._kill(kill.worker, seen, "scheduled")
        self._random_kill(progress)

    def _random_kill(self, progress: dict[int, tuple[int, int]]) -> None:
        if self._next_random_round is None or not progress:
            return
        top = max(r for r, _ in progress.values())
        if self._random_due is None:
            if top < self._next_random_round:
                return
            self._next_random_round = self._draw(top)
            if top >= self.plan.last_round:
                return
            self._random_due = self.clock() + self.random.uniform(0.0, self.plan.jitter_s)
        if self.clock() < self._random_due:
            return
        self._random_due = None
        running = [s for s in self.processes.slots() if self.processes.is_running(s)]
        training = [s for s in running if s in progress and progress[s][0] >= 0 and s not in self.restarts]
        if len(running) <= self.plan.min_alive or not training:
            logger.info(
                "fault injector: skipping a kill (%d running, min_alive %d)",
                len(running),
                self.plan.min_alive,
            )
            return
        slot = self.random.choice(sorted(training))
        self._kill(slot, progress[slot], "random")

    def busy(self) -> bool:
        """True while a restart is still due."""
        return bool(self.restarts)
