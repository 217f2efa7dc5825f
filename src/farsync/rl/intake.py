"""The trainer's intake: untrusted rollout messages in, complete, fresh, re-scored groups out.

This module owns every check a trainer makes on what inference workers send before training on it, and
the counters that report them. :meth:`RolloutIntake.add` parses a message (:mod:`farsync.rl.messages`),
then rejects, counts and logs a rollout

* from an excluded worker, or whose ``policy_version`` is newer than the trainer's (an unknown version),
* older than ``max_staleness`` versions (dropped as stale; Echo's bounded-staleness rule, arXiv 2508.05387),
* whose ``task_id`` names no problem of the task, or whose prompt is not that problem's prompt,
* inconsistent with the rest of its group (task, size, version or worker differ, or the group overflows),
* that the :class:`~farsync.rl.proofs.Verifier` refuses (its worker is then excluded).

Rewards are recomputed here with the run's reward function (the worker's claim is only compared and a
mismatch counted), so a worker cannot inflate them. :meth:`RolloutIntake.take_groups` hands out complete
groups, oldest first, re-checking staleness at that moment; groups whose rewards all tie are dropped and
counted (INTELLECT-2's filtering, arXiv 2505.07291).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from farsync.rl.messages import Rollout, RolloutLimits, RolloutRejected, parse_rollout
from farsync.rl.proofs import Verifier
from farsync.rl.tasks import CharTokenizer, RewardFn, Task, safe_reward

__all__ = ["IntakeCounters", "RolloutIntake", "ScoredGroup"]

logger = logging.getLogger(__name__)


@dataclass
class ScoredGroup:
    """A complete group of rollouts of one prompt with the rewards the trainer computed."""

    rollouts: list[Rollout]
    """The group's rollouts (same prompt, policy version and worker)."""
    rewards: list[float]
    """Recomputed reward of each rollout."""

    @property
    def policy_version(self) -> int:
        """The version all rollouts of the group were sampled with."""
        return self.rollouts[0].policy_version


@dataclass
class IntakeCounters:
    """What the intake accepted, dropped and rejected (cumulative)."""

    received: int = 0
    """Messages seen."""
    accepted: int = 0
    """Rollouts that passed every check."""
    rejected: Counter[str] = field(default_factory=Counter)
    """Rejected rollouts by reason (parser codes, ``unknown_version``, ``unknown_task``, ...)."""
    dropped_stale: int = 0
    """Rollouts (and members of pending groups) older than ``max_staleness`` versions."""
    tied_groups: int = 0
    """Complete groups dropped because all rewards tie."""
    groups_used: int = 0
    """Complete groups handed to the trainer."""
    reward_errors: int = 0
    """Rewards that raised or were not finite numbers (scored 0)."""
    claimed_reward_mismatch: int = 0
    """Rollouts whose claimed reward differs from the recomputed one."""
    excluded_workers: set[str] = field(default_factory=set)
    """Workers caught by the verifier; their rollouts are refused."""

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready copy."""
        return {
            "received": self.received,
            "accepted": self.accepted,
            "rejected": dict(self.rejected),
            "dropped_stale": self.dropped_stale,
            "tied_groups": self.tied_groups,
            "groups_used": self.groups_used,
            "reward_errors": self.reward_errors,
            "claimed_reward_mismatch": self.claimed_reward_mismatch,
            "excluded_workers": sorted(self.excluded_workers),
        }


class RolloutIntake:
    """Checks, groups and re-scores rollouts for one trainer (see the module doc).

    Args:
        task: the task whose problems the ``task_id`` of a rollout must name.
        reward: the run's reward function ``(prompt, completion) -> float``.
        limits: the parser's limits.
        max_staleness: rollouts more than this many versions older than the trainer's are dropped (0: sync).
        verifier: optional; called with the model of the rollout's version from ``model_for_version``.
        model_for_version: the policy of a given version, or ``None`` when no longer held (then unverified).
    """

    def __init__(
        self,
        task: Task,
        reward: RewardFn,
        limits: RolloutLimits,
        *,
        max_staleness: int,
        verifier: Verifier | None = None,
        model_for_version: Callable[[int], nn.Module | None] | None = None,
    ) -> None:
        self.task, self.reward, self.limits = task, reward, limits
        self.max_staleness = max_staleness
        self.verifier, self.model_for_version = verifier, model_for_version
        self.tokenizer = CharTokenizer()
        self.counters = IntakeCounters()
        self._pending: dict[str, ScoredGroup] = {}

    def _reject(self, reason: str, detail: str, worker: str = "?") -> None:
        self.counters.rejected[reason] += 1
        logger.warning("rollout from worker %s rejected (%s): %s", worker, reason, detail)

    def add(self, message: bytes, current_version: int) -> None:
        """Checks one message and files it in its group; a bad one is counted and logged, never raised."""
        self.counters.received += 1
        try:
            rollout = parse_rollout(message, self.limits)
        except RolloutRejected as error:
            self._reject(error.reason, str(error))
            return
        worker = rollout.worker_id
        if worker in self.counters.excluded_workers:
            self._reject("excluded_worker", "worker was caught by the verifier", worker)
            return
        if rollout.policy_version > current_version:
            self._reject(
                "unknown_version", f"version {rollout.policy_version} > trainer's {current_version}", worker
            )
            return
        if current_version - rollout.policy_version > self.max_staleness:
            self.counters.dropped_stale += 1
            return
        if not self._matches_task(rollout) or not self._fits_group(rollout) or not self._verified(rollout):
            return
        reward, ok = safe_reward(
            self.reward, self.task_prompt(rollout), self.tokenizer.decode(rollout.completion_ids)
        )
        self.counters.reward_errors += not ok
        self.counters.claimed_reward_mismatch += abs(reward - rollout.reward) > 1e-6
        group = self._pending.setdefault(rollout.group_id, ScoredGroup([], []))
        group.rollouts.append(rollout)
        group.rewards.append(reward)
        self.counters.accepted += 1

    def task_prompt(self, rollout: Rollout) -> str:
        """The prompt text of the rollout's problem (its ids were checked against it)."""
        return self.tokenizer.decode(rollout.prompt_ids)

    def _matches_task(self, rollout: Rollout) -> bool:
        problem = self.task.problem(rollout.task_id)
        if problem is None:
            self._reject("unknown_task", f"task_id {rollout.task_id!r}", rollout.worker_id)
            return False
        if list(rollout.prompt_ids) != self.tokenizer.encode(problem.prompt):
            self._reject("prompt_mismatch", f"prompt ids differ from {rollout.task_id}", rollout.worker_id)
            return False
        return True

    def _fits_group(self, rollout: Rollout) -> bool:
        group = self._pending.get(rollout.group_id)
        if group is None:
            return True
        first = group.rollouts[0]
        same = (first.task_id, first.group_size, first.policy_version, first.worker_id) == (
            rollout.task_id,
            rollout.group_size,
            rollout.policy_version,
            rollout.worker_id,
        )
        if not same or len(group.rollouts) >= first.group_size:
            self._reject(
                "group_mismatch", f"rollout does not fit group {rollout.group_id}", rollout.worker_id
            )
            return False
        return True

    def _verified(self, rollout: Rollout) -> bool:
        if self.verifier is None or self.model_for_version is None:
            return True
        model = self.model_for_version(rollout.policy_version)
        if model is None:
            return True
        verdict = self.verifier.verify(rollout, model)
        if verdict.accepted:
            return True
        self._reject("verification", verdict.reason, rollout.worker_id)
        self.counters.excluded_workers.add(rollout.worker_id)
        logger.warning(
            "worker %s excluded: a rollout failed verification (%s)", rollout.worker_id, verdict.reason
        )
        for group_id in [
            g for g, group in self._pending.items() if group.rollouts[0].worker_id == rollout.worker_id
        ]:
            del self._pending[group_id]
        return False

    def num_ready(self, current_version: int) -> int:
        """Complete groups that are still fresh enough."""
        return sum(
            len(g.rollouts) == g.rollouts[0].group_size
            and current_version - g.policy_version <= self.max_staleness
            for g in self._pending.values()
        )

    def take_groups(self, max_groups: int, current_version: int) -> list[ScoredGroup]:
        """Up to ``max_groups`` complete fresh groups, oldest first, with tied groups dropped (and counted
        but still using up a place, as they cost the sampler the same); stale pending groups are dropped."""
        for group_id, group in list(self._pending.items()):
            if current_version - group.policy_version > self.max_staleness:
                self.counters.dropped_stale += len(group.rollouts)
                del self._pending[group_id]
        complete = [gid for gid, g in self._pending.items() if len(g.rollouts) == g.rollouts[0].group_size]
        complete.sort(key=lambda gid: self._pending[gid].policy_version)
        taken: list[ScoredGroup] = []
        for group_id in complete[:max_groups]:
            group = self._pending.pop(group_id)
            if len(set(group.rewards)) == 1:
                self.counters.tied_groups += 1
                continue
            taken.append(group)
        self.counters.groups_used += len(taken)
        return taken
