"""The trainer's intake: every rejection counted by reason, staleness dropping, ties, recomputed rewards."""

from __future__ import annotations

from dataclasses import replace

import pytest
from torch import nn

from farsync.rl.intake import RolloutIntake
from farsync.rl.messages import Rollout, RolloutLimits, encode_rollout
from farsync.rl.proofs import Verdict
from farsync.rl.tasks import CharTokenizer, make_task

TOKENIZER = CharTokenizer()
TASK = make_task("arithmetic", seed=0, num_heldout=20)
LIMITS = RolloutLimits(vocab_size=TOKENIZER.vocab_size, max_group_size=4)


def _group(
    version: int, group: str, answers: list[str], *, index: int = 0, worker: str = "w0"
) -> list[bytes]:
    problem = TASK.train_problem(index)
    return [
        encode_rollout(
            Rollout(
                task_id=problem.task_id,
                group_id=group,
                group_size=len(answers),
                prompt_ids=tuple(TOKENIZER.encode(problem.prompt)),
                completion_ids=tuple([*TOKENIZER.encode(answer), TOKENIZER.END_ID]),
                sampling_logprobs=tuple([-0.5] * (len(answer) + 1)),
                reward=1.0 if answer == problem.answer else 0.0,
                policy_version=version,
                worker_id=worker,
                seed=1,
                temperature=1.0,
            )
        )
        for answer in answers
    ]


def _mixed(version: int, group: str, worker: str = "w0") -> list[bytes]:
    answer = TASK.train_problem(0).answer
    return _group(version, group, [answer, "0", answer, "1"], worker=worker)


def _intake(max_staleness: int = 1, **kwargs: object) -> RolloutIntake:
    return RolloutIntake(TASK, TASK.reward, LIMITS, max_staleness=max_staleness, **kwargs)  # type: ignore[arg-type]


def test_complete_groups_come_out_with_recomputed_rewards() -> None:
    intake = _intake()
    for message in _mixed(version=3, group="g"):
        intake.add(message, current_version=3)
    assert intake.num_ready(3) == 1
    (group,) = intake.take_groups(8, current_version=3)
    assert group.rewards == [1.0, 0.0, 1.0, 0.0]
    assert intake.counters.accepted == 4 and intake.counters.groups_used == 1


def test_stale_rollouts_are_dropped_on_arrival_and_while_pending() -> None:
    intake = _intake(max_staleness=1)
    for message in _mixed(version=1, group="old"):
        intake.add(message, current_version=3)  # 2 versions old: dropped on arrival
    for message in _mixed(version=2, group="pending"):
        intake.add(message, current_version=3)  # 1 version old: kept
    assert intake.counters.dropped_stale == 4
    assert intake.num_ready(3) == 1
    assert intake.num_ready(4) == 0
    assert intake.take_groups(8, current_version=4) == []  # the trainer moved on: now too old
    assert intake.counters.dropped_stale == 8


def test_sync_mode_keeps_only_the_current_version() -> None:
    intake = _intake(max_staleness=0)
    for message in _mixed(version=4, group="a") + _mixed(version=5, group="b"):
        intake.add(message, current_version=5)
    assert [g.policy_version for g in intake.take_groups(8, current_version=5)] == [5]
    assert intake.counters.dropped_stale == 4


def test_tied_groups_are_dropped_and_counted() -> None:
    intake = _intake()
    for message in _group(0, "tied", ["0", "1", "2", "3"]):
        intake.add(message, current_version=0)
    assert intake.num_ready(0) == 1
    assert intake.take_groups(8, current_version=0) == []
    assert intake.counters.tied_groups == 1


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda r: replace(r, policy_version=9), "unknown_version"),
        (lambda r: replace(r, task_id="arithmetic/train/x"), "unknown_task"),
        (lambda r: replace(r, task_id="sorting/train/1"), "unknown_task"),
        (lambda r: replace(r, prompt_ids=(1, 2, 3)), "prompt_mismatch"),
        (lambda r: replace(r, completion_ids=(99,), sampling_logprobs=(-1.0,)), "vocab"),
    ],
)
def test_bad_rollouts_are_rejected_by_reason_and_the_intake_goes_on(edit, reason: str) -> None:  # type: ignore[no-untyped-def]
    from farsync.rl.messages import parse_rollout

    intake = _intake()
    good = _mixed(version=2, group="g")
    bad = encode_rollout(edit(parse_rollout(good[0], LIMITS)))
    intake.add(bad, current_version=2)
    assert intake.counters.rejected == {reason: 1}
    for message in good:
        intake.add(message, current_version=2)
    assert intake.num_ready(2) == 1


def test_a_rollout_that_does_not_fit_its_group_is_rejected() -> None:
    intake = _intake()
    messages = _mixed(version=2, group="g")
    intake.add(messages[0], current_version=2)
    other = _group(2, "g", ["1", "2", "3"])[0]  # same group id, other group size
    intake.add(other, current_version=2)
    for message in [*messages[1:], messages[1]]:  # the last one overflows the group
        intake.add(message, current_version=2)
    assert intake.counters.rejected == {"group_mismatch": 2}
    assert intake.num_ready(2) == 1


def test_claimed_rewards_are_not_trusted() -> None:
    from farsync.rl.messages import parse_rollout

    intake = _intake()
    lies = [encode_rollout(replace(parse_rollout(m, LIMITS), reward=1.0)) for m in _mixed(0, "g")]
    for message in lies:
        intake.add(message, current_version=0)
    (group,) = intake.take_groups(1, current_version=0)
    assert group.rewards == [1.0, 0.0, 1.0, 0.0]
    assert intake.counters.claimed_reward_mismatch == 2


class _RejectWorker:
    def __init__(self, liar: str) -> None:
        self.liar = liar
        self.calls = 0

    def verify(self, rollout: Rollout, model: nn.Module) -> Verdict:
        self.calls += 1
        return Verdict(rollout.worker_id != self.liar, "fingerprint mismatch")


def test_a_worker_caught_by_the_verifier_is_excluded() -> None:
    verifier = _RejectWorker("liar")
    intake = _intake(verifier=verifier, model_for_version=lambda version: nn.Linear(1, 1))
    for message in _mixed(0, "honest", worker="w0") + _mixed(0, "lies", worker="liar"):
        intake.add(message, current_version=0)
    assert intake.counters.excluded_workers == {"liar"}
    assert intake.counters.rejected == {"verification": 1, "excluded_worker": 3}
    assert verifier.calls == 5  # the honest group, then the liar's first rollout only
    assert intake.num_ready(0) == 1
