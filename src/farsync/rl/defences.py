"""Defences of a swarm node against poisoned shared rollouts, and the counts of what each drops.

This module owns the checks a receiving node runs on a peer's shared group (after the schema check of
:mod:`farsync.rl.swarm_messages` and re-tokenization) before training on it. They follow "Hail to the
Thief: Exploring Attacks and Defenses in Decentralised GRPO" (Blagoev, Ersoy and Chen 2025, arXiv
2511.09780):

* :class:`RewardCheck`: the receiver recomputes the verifiable reward of every completion and drops the
  group if any claim differs from its own score (the in-context attack claims a high reward for a wrong
  answer). Without it a node trains on the claimed rewards.
* :class:`TokenLogProbFilter`: the paper's defence for swarms that train one model (homogeneous): a
  completion an honest copy of the model produced contains no token that model finds very unlikely, so the
  receiver scores every completion token under its own policy and drops the group when any token's
  log-probability is below ``min_logprob`` (an injected trigger is such a token).
* :class:`JudgeFilter`: the paper's defence for swarms of different models (heterogeneous), where the
  receiver's likelihoods say little about a peer's honest text: a judge looks at each completion and the
  group is dropped if it rejects any. The paper's judge is an LLM; no LLM ships with farsync, so the built-in
  :func:`answer_format_judge` is a rule-based stand-in for the shipped tasks (a completion is exactly an
  answer of the task's form, nothing else); a user's judge (an LLM call, say) plugs in as
  ``"package.module:function"`` taking ``(prompt, completion)`` text and returning a bool.

A whole group is dropped, never one completion of it: GRPO's advantages are relative within the group, and a
group with a poisoned member is evidence against its sender. Every drop is counted per defence
(:class:`DefenceLog`) and logged.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn

from farsync.rl.policy import completion_logprobs
from farsync.rl.swarm_messages import SharedGroup
from farsync.rl.tasks import load_reward

__all__ = [
    "DEFENCES",
    "Defence",
    "DefenceLog",
    "JudgeFilter",
    "ReceivedGroup",
    "RewardCheck",
    "TokenLogProbFilter",
    "answer_format_judge",
    "build_defences",
    "screen_group",
]

logger = logging.getLogger(__name__)

DEFENCES = ("reward_check", "logprob_filter", "judge")
"""The defence names :func:`build_defences` accepts."""

Judge = Callable[[str, str], bool]
"""``(prompt, completion) -> True when the completion is acceptable``."""


@dataclass
class ReceivedGroup:
    """A peer's group after parsing and re-tokenization with the receiver's own tokenizer."""

    shared: SharedGroup
    """The message as parsed."""
    prompt_ids: list[int]
    """The receiver's token ids of the prompt."""
    completion_ids: list[list[int]]
    """The receiver's token ids of each completion, end token appended."""
    rewards: list[float]
    """Each completion's reward recomputed by the receiver."""
    _logprobs: tuple[Tensor, Tensor] | None = field(default=None, repr=False)

    def receiver_logprobs(self, model: nn.Module, temperature: float) -> tuple[Tensor, Tensor]:
        """``(logprobs [G, L], mask [G, L])`` of the completion tokens under ``model`` (no gradient; computed
        once and cached, since the log-prob filter and the trainer's importance ratio both use them)."""
        if self._logprobs is None:
            with torch.no_grad():
                pairs = [(self.prompt_ids, ids) for ids in self.completion_ids]
                self._logprobs = completion_logprobs(model, pairs, temperature)
        return self._logprobs


class Defence(Protocol):
    """A check of one received group: ``""`` keeps it, anything else is the reason it is dropped."""

    name: str

    def check(self, group: ReceivedGroup, model: nn.Module, temperature: float) -> str: ...


@dataclass
class RewardCheck:
    """Drops a group whose claimed rewards differ from the receiver's recomputed ones by more than
    ``tolerance`` (see the module doc)."""

    tolerance: float = 1e-6
    name: str = "reward_check"

    def check(self, group: ReceivedGroup, model: nn.Module, temperature: float) -> str:
        for claimed, own in zip(group.shared.rewards, group.rewards, strict=True):
            if abs(claimed - own) > self.tolerance:
                return f"claimed reward {claimed:g}, recomputed {own:g}"
        return ""


@dataclass
class TokenLogProbFilter:
    """Drops a group holding a completion token whose log-probability under the receiver's policy (at the
    sampling temperature) is below ``min_logprob`` (homogeneous swarms; see the module doc)."""

    min_logprob: float = -7.0
    name: str = "logprob_filter"

    def check(self, group: ReceivedGroup, model: nn.Module, temperature: float) -> str:
        logprobs, mask = group.receiver_logprobs(model, temperature)
        masked = torch.where(mask > 0, logprobs, torch.zeros_like(logprobs))
        lowest = float(masked.min())
        if lowest < self.min_logprob:
            row = int(masked.min(dim=1).values.argmin())
            return f"completion {group.shared.completions[row]!r} has a token of log-prob {lowest:.2f}"
        return ""


@dataclass
class JudgeFilter:
    """Drops a group with a completion the ``judge`` rejects (heterogeneous swarms; see the module doc)."""

    judge: Judge
    name: str = "judge"

    def check(self, group: ReceivedGroup, model: nn.Module, temperature: float) -> str:
        for completion in group.shared.completions:
            try:
                accepted = bool(self.judge(group.shared.prompt, completion))
            except Exception as error:  # noqa: BLE001 - a user's judge must not stop the node
                logger.warning("judge raised on %r: %r; completion rejected", completion, error)
                accepted = False
            if not accepted:
                return f"judge rejected completion {completion!r}"
        return ""


_ANSWER_FORMS = {"arithmetic": re.compile(r"[0-9]{1,4}"), "reversal": re.compile(r"[a-z]{1,16}")}
_ANSWER_FORMS["sorting"] = _ANSWER_FORMS["reversal"]


def answer_format_judge(task: str) -> Judge:
    """A rule-based judge for a shipped task: accepts a completion that is exactly one answer of the task's
    form (digits for ``arithmetic``, letters for ``reversal`` and ``sorting``), right or wrong, and nothing
    else. Our stand-in for the paper's LLM judge (see the module doc)."""
    if task not in _ANSWER_FORMS:
        raise ValueError(f"no built-in judge for task {task!r}; allowed: {', '.join(sorted(_ANSWER_FORMS))}")
    form = _ANSWER_FORMS[task]
    return lambda prompt, completion: form.fullmatch(completion) is not None


@dataclass
class DefenceLog:
    """Groups each defence dropped (cumulative), and how many it saw."""

    checked: int = 0
    """Groups that reached the defences."""
    dropped: Counter[str] = field(default_factory=Counter)
    """Dropped groups by defence name (the first defence that dropped a group gets it)."""
    dropped_by_sender: Counter[str] = field(default_factory=Counter)
    """Dropped groups by sending node."""

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready copy."""
        return {
            "checked": self.checked,
            "dropped": dict(self.dropped),
            "dropped_by_sender": dict(self.dropped_by_sender),
        }


def screen_group(
    group: ReceivedGroup,
    defences: Sequence[Defence],
    model: nn.Module,
    temperature: float,
    log: DefenceLog,
) -> bool:
    """Runs ``defences`` in order on ``group``; False (counted and logged) at the first that drops it."""
    log.checked += 1
    for defence in defences:
        reason = defence.check(group, model, temperature)
        if reason:
            log.dropped[defence.name] += 1
            log.dropped_by_sender[group.shared.node_id] += 1
            logger.info("group from node %s dropped by %s: %s", group.shared.node_id, defence.name, reason)
            return False
    return True


def build_defences(names: Sequence[str], *, task: str, min_logprob: float, judge: str) -> list[Defence]:
    """The defences named (in order, from :data:`DEFENCES`); ``judge`` is ``"answer_format"`` (the built-in,
    for ``task``) or ``"package.module:function"``. Raises ``ValueError`` naming what is allowed."""
    built: list[Defence] = []
    for name in names:
        if name == "reward_check":
            built.append(RewardCheck())
        elif name == "logprob_filter":
            built.append(TokenLogProbFilter(min_logprob=min_logprob))
        elif name == "judge":
            function = answer_format_judge(task) if judge == "answer_format" else load_reward(judge)
            built.append(JudgeFilter(judge=function))  # type: ignore[arg-type]
        else:
            raise ValueError(f"unknown defence {name!r}; allowed: {', '.join(DEFENCES)}")
    return built
