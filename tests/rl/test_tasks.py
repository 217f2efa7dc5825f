"""Tasks: deterministic problems, disjoint held-out sets, rewards recomputed from the prompt, user rewards."""

from __future__ import annotations

import logging

import pytest

from farsync.rl.tasks import (
    CharTokenizer,
    arithmetic_reward,
    load_reward,
    make_task,
    reversal_reward,
    safe_reward,
    sorting_reward,
)


def test_rewards_recompute_the_answer_from_the_prompt() -> None:
    assert arithmetic_reward("37+58=", "95") == 1.0
    assert arithmetic_reward("37+58=", "96") == 0.0
    assert arithmetic_reward("x+1=", "1") == 0.0
    assert reversal_reward("rev:cfab=", "bafc") == 1.0
    assert reversal_reward("rev:cfab=", "cfab") == 0.0
    assert sorting_reward("sort:cfab=", "abcf") == 1.0
    assert sorting_reward("sort:cfab=", "abfc") == 0.0


@pytest.mark.parametrize("name", ["arithmetic", "reversal", "sorting"])
def test_problems_are_deterministic_correct_and_heldout_disjoint(name: str) -> None:
    task, again = make_task(name, seed=3, num_heldout=50), make_task(name, seed=3, num_heldout=50)
    assert [p.prompt for p in task.heldout] == [p.prompt for p in again.heldout]
    assert task.train_problem(17) == again.train_problem(17)
    assert make_task(name, seed=4, num_heldout=50).heldout != task.heldout
    heldout = {p.prompt for p in task.heldout}
    assert len(heldout) == 50
    for index in range(300):
        problem = task.train_problem(index)
        assert problem.prompt not in heldout
        assert task.reward(problem.prompt, problem.answer) == 1.0
    assert task.problem("arithmetic/train/x") is None
    assert task.problem(f"{name}/heldout/50") is None
    assert task.problem(f"{name}/heldout/3") == task.heldout[3]


def test_unknown_task_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="allowed: arithmetic, reversal, sorting"):
        make_task("chess")


def test_tokenizer_round_trip_stops_at_the_end_token() -> None:
    tokenizer = CharTokenizer()
    ids = tokenizer.encode("12+7=")
    assert tokenizer.decode([*ids, tokenizer.END_ID, *ids]) == "12+7="
    assert max(ids) < tokenizer.vocab_size and tokenizer.END_ID not in ids
    with pytest.raises(ValueError, match="not in the task alphabet"):
        tokenizer.encode("A")


def _raises(prompt: str, completion: str) -> float:
    raise KeyError("boom")


def test_a_reward_that_raises_or_returns_garbage_scores_zero_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="farsync.rl.tasks"):
        assert safe_reward(_raises, "1+1=", "2") == (0.0, False)
        assert safe_reward(lambda p, c: float("nan"), "1+1=", "2") == (0.0, False)
        assert safe_reward(lambda p, c: "1", "1+1=", "2") == (0.0, False)  # type: ignore[arg-type, return-value]
    assert len(caplog.records) == 3
    assert safe_reward(lambda p, c: 0.5, "1+1=", "2") == (0.5, True)


def test_load_reward_by_name() -> None:
    assert load_reward("farsync.rl.tasks:sorting_reward") is sorting_reward
    for spec, message in [
        ("farsync.rl.tasks", "expected 'package.module:function'"),
        ("no_such_module_xyz:f", "cannot import"),
        ("farsync.rl.tasks:nothing", "no callable"),
    ]:
        with pytest.raises(ValueError, match=message):
            load_reward(spec)
