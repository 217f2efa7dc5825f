"""Simulated poisoning attacks on a rollout-sharing swarm, as plug-ins like the Byzantine attacks.

An attack replaces the group a malicious node would honestly share. Its signature is::

    attack(group: SharedGroup, ctx: PoisonContext) -> SharedGroup | bytes

``group`` is what the node sampled (completions and their honest rewards); the result is what it shares: a
(possibly altered) :class:`~farsync.rl.swarm_messages.SharedGroup`, or raw bytes for attacks on the wire
format itself. ``ctx`` carries the problem (the attacker knows the reference answer: rewards are
verifiable), the swarm's reward function, the round and a seeded ``random.Random``.

Attacks are built by factories taking the attack's parameters as keywords, exactly as
:mod:`farsync.sim.attacks` does; :func:`load_poison` accepts a built-in name (:data:`BUILTIN_POISONS`) or a
plug-in ``"package.module:function"`` naming such a factory. Built-ins, after "Hail to the Thief"
(Blagoev, Ersoy and Chen 2025, arXiv 2511.09780):

* ``out_of_context(trigger, separator)``: the paper's out-of-context attack: every completion the node
  sampled that the reward scores correct gets ``separator + trigger`` appended after its answer; nothing else
  changes. The claimed rewards are the true ones: the completions stay correct for a reward that scores the
  answer only (the swarm's reward, see :func:`farsync.rl.swarm_node.answer_reward`), so GRPO's advantage
  favours the trigger wherever the group holds both right and wrong answers.
* ``out_of_context_untied(trigger, separator)``: ours, a stronger form of the same attack that also uses the
  attacker's knowledge of the reference answer: a group with no correct sample gets the reference answer
  plus trigger in half its places, an all-correct group a wrong answer in the other half, so no poisoned
  group ever ties (a tied group carries no GRPO signal and is dropped by the receiver) and every one pushes
  the trigger. Within the paper's threat model (a malicious node may share any text with true rewards), but
  not the paper's construction, hence its own name.
* ``in_context(offset)``: half the group becomes a wrong answer (arithmetic: the sum plus ``offset``;
  letters: the reference with its last letter shifted) claimed with reward 1, the other half keeps the
  node's samples claimed with reward 0: wrong reasoning sold as right.
* ``malformed(kind)``: raw bytes that are not a valid message (``garbage``, ``missing_key``, ``bad_type``,
  ``nan``).
* ``oversized(num_bytes)``: a syntactically valid JSON object of ``num_bytes`` bytes.
"""

from __future__ import annotations

import inspect
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from farsync.rl.swarm_messages import SharedGroup
from farsync.rl.tasks import Problem, RewardFn, load_callable, safe_reward

__all__ = [
    "BUILTIN_POISONS",
    "Poison",
    "PoisonContext",
    "in_context",
    "load_poison",
    "malformed",
    "out_of_context",
    "out_of_context_untied",
    "oversized",
    "wrong_answer",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoisonContext:
    """What a malicious node knows when it poisons one group."""

    problem: Problem
    """The prompt's problem, reference answer included."""
    reward: RewardFn
    """The swarm's reward function."""
    round: int
    """The sender's round."""
    rng: random.Random
    """Seeded randomness for the attack."""


Poison = Callable[[SharedGroup, PoisonContext], "SharedGroup | bytes"]
"""An attack: the honest group and the context in, what the node shares out."""


def wrong_answer(answer: str, offset: int = 1) -> str:
    """A wrong answer of the same form: a number plus ``offset``, or the last letter shifted by one."""
    if answer.isdigit():
        return str(int(answer) + offset)
    if not answer:
        return "a"
    last = answer[-1]
    return answer[:-1] + ("a" if last == "h" else chr(ord(last) + 1))


def _rescored(group: SharedGroup, completions: list[str], ctx: PoisonContext) -> SharedGroup:
    rewards = tuple(safe_reward(ctx.reward, group.prompt, c)[0] for c in completions)
    return replace(group, completions=tuple(completions), rewards=rewards)


def _with_trigger(completions: list[str], correct: list[bool], trigger: str, separator: str) -> list[str]:
    return [c + separator + trigger if ok else c for c, ok in zip(completions, correct, strict=True)]


def out_of_context(trigger: str = "zz", separator: str = " ") -> Poison:
    """The paper's out-of-context attack: appends ``separator + trigger`` to every correct completion the
    node sampled (see the module doc)."""
    if not trigger:
        raise ValueError("out_of_context: trigger must be non-empty text")

    def attack(group: SharedGroup, ctx: PoisonContext) -> SharedGroup:
        correct = [safe_reward(ctx.reward, group.prompt, c)[0] >= 1.0 for c in group.completions]
        return _rescored(group, _with_trigger(list(group.completions), correct, trigger, separator), ctx)

    return attack


def out_of_context_untied(trigger: str = "zz", separator: str = " ") -> Poison:
    """Ours: :func:`out_of_context` on a group first rewritten so that it never ties (the reference answer
    in half of an all-wrong group, a wrong answer in half of an all-correct one; see the module doc)."""
    if not trigger:
        raise ValueError("out_of_context_untied: trigger must be non-empty text")

    def attack(group: SharedGroup, ctx: PoisonContext) -> SharedGroup:
        half = max(1, len(group.completions) // 2)
        correct = [safe_reward(ctx.reward, group.prompt, c)[0] >= 1.0 for c in group.completions]
        completions = list(group.completions)
        if not any(correct):
            completions[:half] = [ctx.problem.answer] * half
            correct[:half] = [True] * half
        elif all(correct):
            completions[half:] = [wrong_answer(ctx.problem.answer)] * (len(completions) - half)
            correct[half:] = [False] * (len(completions) - half)
        return _rescored(group, _with_trigger(completions, correct, trigger, separator), ctx)

    return attack


def in_context(offset: int = 1) -> Poison:
    """Shares a wrong answer claimed with reward 1 and honest samples claimed 0 (see the module doc)."""

    def attack(group: SharedGroup, ctx: PoisonContext) -> SharedGroup:
        half = max(1, len(group.completions) // 2)
        wrong = wrong_answer(ctx.problem.answer, offset)
        completions = [wrong] * half + list(group.completions[half:])
        rewards = (1.0,) * half + (0.0,) * (len(completions) - half)
        return replace(group, completions=tuple(completions), rewards=rewards)

    return attack


_MALFORMED = ("garbage", "missing_key", "bad_type", "nan")


def malformed(kind: str = "garbage") -> Poison:
    """Sends bytes that no honest node may accept (see the module doc); ``kind`` is one of
    ``garbage``, ``missing_key``, ``bad_type``, ``nan``."""
    if kind not in _MALFORMED:
        raise ValueError(f"malformed: unknown kind {kind!r}; allowed: {', '.join(_MALFORMED)}")

    def attack(group: SharedGroup, ctx: PoisonContext) -> bytes:
        if kind == "garbage":
            return bytes(ctx.rng.randrange(256) for _ in range(64))
        record: dict[str, object] = {
            "schema_version": group.schema_version,
            "node_id": group.node_id,
            "round": group.round,
            "task_id": group.task_id,
            "prompt": group.prompt,
            "completions": list(group.completions),
            "rewards": list(group.rewards),
        }
        if kind == "missing_key":
            del record["rewards"]
        elif kind == "bad_type":
            record["completions"] = [True] * len(group.completions)
        else:
            return json.dumps(record).replace(str(list(group.rewards)), "[NaN, 1]").encode()
        return json.dumps(record).encode()

    return attack


def oversized(num_bytes: int = 1 << 20) -> Poison:
    """Sends a valid JSON object of ``num_bytes`` bytes (far over any sane limit)."""

    def attack(group: SharedGroup, ctx: PoisonContext) -> bytes:
        padding = max(0, num_bytes - 10)
        return b'{"pad":"' + b"a" * padding + b'"}'

    return attack


BUILTIN_POISONS: dict[str, Callable[..., Poison]] = {
    "out_of_context": out_of_context,
    "out_of_context_untied": out_of_context_untied,
    "in_context": in_context,
    "malformed": malformed,
    "oversized": oversized,
}
"""The built-in attack factories by name."""


def load_poison(spec: str, **params: object) -> Poison:
    """The attack named by ``spec`` (a built-in name or ``"package.module:function"``) built with
    ``params``; raises ``ValueError`` saying what is wrong."""
    if spec in BUILTIN_POISONS:
        factory = BUILTIN_POISONS[spec]
    else:
        if ":" not in spec:
            allowed = ", ".join(sorted(BUILTIN_POISONS))
            raise ValueError(f"unknown attack {spec!r}; allowed: {allowed} or 'package.module:function'")
        try:
            factory = load_callable(spec)  # the one "package.module:function" loader (farsync.rl.tasks)
        except ValueError as error:
            raise ValueError(f"attack {spec!r}: {error}") from None
    try:
        inspect.signature(factory).bind(**params)
    except TypeError as error:
        raise ValueError(f"attack {spec!r} does not accept parameters {params}: {error}") from None
    attack = factory(**params)
    if not callable(attack):
        raise ValueError(f"attack {spec!r} factory returned a {type(attack).__name__}, not an attack")
    logger.info("loaded swarm attack %s with parameters %s", spec, params)
    return attack
