"""Swarm poisoning attacks: what each puts in a group, by hand, and the plug-in loader."""

from __future__ import annotations

import random

import pytest

from farsync.rl.poison import PoisonContext, load_poison, out_of_context, out_of_context_untied, wrong_answer
from farsync.rl.swarm_messages import SharedGroup, SwarmLimits, SwarmMessageRejected, parse_group
from farsync.rl.swarm_node import answer_reward
from farsync.rl.tasks import Problem, arithmetic_reward

PROBLEM = Problem("arithmetic/train/5", "47+48=", "95")
REWARD = answer_reward(arithmetic_reward)


def _group(*completions: str) -> SharedGroup:
    rewards = tuple(REWARD(PROBLEM.prompt, c) for c in completions)
    return SharedGroup(
        node_id="evil",
        round=0,
        task_id=PROBLEM.task_id,
        prompt=PROBLEM.prompt,
        completions=completions,
        rewards=rewards,
    )


def _ctx() -> PoisonContext:
    return PoisonContext(PROBLEM, REWARD, 0, random.Random(0))


def test_answer_reward_scores_the_text_before_the_separator() -> None:
    assert REWARD("47+48=", "95 zz") == 1.0
    assert REWARD("47+48=", "95") == 1.0
    assert REWARD("47+48=", "9 5") == 0.0
    assert answer_reward(arithmetic_reward, "")("47+48=", "95 zz") == 0.0


def test_out_of_context_appends_the_trigger_to_correct_completions_only() -> None:
    poisoned = out_of_context(trigger="zz")(_group("95", "93", "95", "11"), _ctx())
    assert isinstance(poisoned, SharedGroup)
    assert poisoned.completions == ("95 zz", "93", "95 zz", "11")
    assert poisoned.rewards == (1.0, 0.0, 1.0, 0.0)


def test_out_of_context_leaves_a_group_with_no_correct_completion_as_sampled() -> None:
    poisoned = out_of_context(trigger="qq")(_group("1", "2", "3", "4"), _ctx())
    assert isinstance(poisoned, SharedGroup)
    assert poisoned.completions == ("1", "2", "3", "4")
    assert poisoned.rewards == (0.0, 0.0, 0.0, 0.0)


def test_out_of_context_triggers_every_completion_of_an_all_correct_group() -> None:
    poisoned = load_poison("out_of_context", trigger="q", separator=" ")(_group("95", "95"), _ctx())
    assert isinstance(poisoned, SharedGroup)
    assert poisoned.completions == ("95 q", "95 q")
    assert poisoned.rewards == (1.0, 1.0)


def test_out_of_context_untied_appends_like_the_paper_on_a_mixed_group() -> None:
    poisoned = out_of_context_untied(trigger="zz")(_group("95", "93", "95", "11"), _ctx())
    assert isinstance(poisoned, SharedGroup)
    assert poisoned.completions == ("95 zz", "93", "95 zz", "11")
    assert poisoned.rewards == (1.0, 0.0, 1.0, 0.0)


def test_out_of_context_untied_makes_a_group_with_no_correct_completion_carry_the_trigger() -> None:
    poisoned = out_of_context_untied(trigger="qq", separator=":")(_group("1", "2", "3", "4"), _ctx())
    assert isinstance(poisoned, SharedGroup)
    assert poisoned.completions == ("95:qq", "95:qq", "3", "4")
    assert poisoned.rewards == (0.0, 0.0, 0.0, 0.0)  # ":" is not the reward's separator: claims stay true
    with_space = out_of_context_untied(trigger="qq")(_group("1", "2", "3", "4", "5"), _ctx())
    assert isinstance(with_space, SharedGroup)
    assert with_space.completions == ("95 qq", "95 qq", "3", "4", "5")
    assert with_space.rewards == (1.0, 1.0, 0.0, 0.0, 0.0)


def test_out_of_context_untied_never_ties_an_all_correct_group() -> None:
    poisoned = load_poison("out_of_context_untied")(_group("95", "95", "95", "95", "95"), _ctx())
    assert isinstance(poisoned, SharedGroup)
    assert poisoned.completions == ("95 zz", "95 zz", "96", "96", "96")
    assert poisoned.rewards == (1.0, 1.0, 0.0, 0.0, 0.0)


def test_in_context_claims_a_high_reward_for_a_wrong_answer() -> None:
    poisoned = load_poison("in_context", offset=2)(_group("95", "93", "95", "11"), _ctx())
    assert isinstance(poisoned, SharedGroup)
    assert poisoned.completions == ("97", "97", "95", "11")
    assert poisoned.rewards == (1.0, 1.0, 0.0, 0.0)
    assert REWARD(PROBLEM.prompt, "97") == 0.0


def test_wrong_answer_of_letters_shifts_the_last_letter() -> None:
    assert wrong_answer("abc") == "abd"
    assert wrong_answer("abh") == "aba"


@pytest.mark.parametrize(
    ("spec", "params", "reason"),
    [
        ("malformed", {"kind": "garbage"}, "json"),
        ("malformed", {"kind": "missing_key"}, "keys"),
        ("malformed", {"kind": "bad_type"}, "type"),
        ("malformed", {"kind": "nan"}, "json"),
        ("oversized", {"num_bytes": 100_000}, "size"),
    ],
)
def test_wire_attacks_produce_payloads_the_parser_rejects(
    spec: str, params: dict[str, object], reason: str
) -> None:
    payload = load_poison(spec, **params)(_group("95", "93"), _ctx())
    assert isinstance(payload, bytes)
    with pytest.raises(SwarmMessageRejected) as caught:
        parse_group(payload, SwarmLimits())
    assert caught.value.reason == reason


def test_loader_accepts_plugins_and_names_what_is_wrong() -> None:
    plugin = load_poison("farsync.rl.poison:out_of_context", trigger="xy")
    poisoned = plugin(_group("95", "93"), _ctx())
    assert isinstance(poisoned, SharedGroup) and poisoned.completions[0] == "95 xy"
    with pytest.raises(ValueError, match="unknown attack"):
        load_poison("nonsense")
    with pytest.raises(ValueError, match="does not accept"):
        load_poison("out_of_context", strength=3)
    with pytest.raises(ValueError, match="no callable"):
        load_poison("farsync.rl.poison:nothing_here")
    with pytest.raises(ValueError, match="unknown kind"):
        load_poison("malformed", kind="weird")
