"""Swarm defences by hand: a poisoned group dropped, a clean one kept, a reward mismatch dropped, and the
counts of what each drops."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from farsync.rl.defences import (
    DefenceLog,
    JudgeFilter,
    ReceivedGroup,
    RewardCheck,
    TokenLogProbFilter,
    answer_format_judge,
    build_defences,
    screen_group,
)
from farsync.rl.swarm_messages import SharedGroup
from farsync.rl.swarm_node import answer_reward
from farsync.rl.tasks import CharTokenizer, arithmetic_reward

TOKENIZER = CharTokenizer()
REWARD = answer_reward(arithmetic_reward)


class FixedModel(nn.Module):
    """Predicts the same distribution at every position: the end token and digits likely, every letter and
    the space at probability 1e-4 (log-prob -9.21), whatever came before."""

    def __init__(self) -> None:
        super().__init__()
        probs = torch.full((TOKENIZER.vocab_size,), 1e-4)
        digits = TOKENIZER.encode("0123456789")
        probs[digits] = 0.05
        probs[TOKENIZER.END_ID] = 1.0 - float(probs.sum() - probs[TOKENIZER.END_ID])
        self.logits = probs.log()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, tokens: Tensor) -> Tensor:
        return self.logits.expand(tokens.shape[0], tokens.shape[1], -1).clone()


def _received(
    completions: tuple[str, ...], claimed: tuple[float, ...] | None = None, sender: str = "n1"
) -> ReceivedGroup:
    prompt = "47+48="
    own = [REWARD(prompt, c) for c in completions]
    shared = SharedGroup(
        node_id=sender,
        round=0,
        task_id="arithmetic/train/5",
        prompt=prompt,
        completions=completions,
        rewards=tuple(own) if claimed is None else claimed,
    )
    ids = [TOKENIZER.encode(c) + [TOKENIZER.END_ID] for c in completions]
    return ReceivedGroup(shared, TOKENIZER.encode(prompt), ids, own)


def test_reward_check_keeps_true_claims_and_drops_a_mismatch() -> None:
    check = RewardCheck()
    assert check.check(_received(("95", "93")), FixedModel(), 1.0) == ""
    assert "claimed reward 1" in check.check(_received(("95", "96"), claimed=(1.0, 1.0)), FixedModel(), 1.0)
    assert check.check(_received(("95", "96"), claimed=(0.0, 0.0)), FixedModel(), 1.0) != ""


def test_logprob_filter_drops_an_injected_trigger_and_keeps_a_clean_group() -> None:
    model = FixedModel()
    # Clean: digits (log 0.05 = -3.0) and the end token: every token above -7.
    assert TokenLogProbFilter(min_logprob=-7.0).check(_received(("95", "931")), model, 1.0) == ""
    # Poisoned: " zz" tokens are at log 1e-4 = -9.21 < -7.
    assert "log-prob -9.21" in TokenLogProbFilter(min_logprob=-7.0).check(
        _received(("95 zz", "93")), model, 1.0
    )


def test_logprob_filter_threshold_is_the_lowest_token() -> None:
    model = FixedModel()
    group = _received(("95", "93"))
    lowest = math.log(0.05)
    assert TokenLogProbFilter(min_logprob=lowest - 1e-3).check(group, model, 1.0) == ""
    assert TokenLogProbFilter(min_logprob=lowest + 1e-3).check(group, model, 1.0) != ""


def test_logprob_filter_ignores_padding_of_shorter_completions() -> None:
    # Completions of different lengths share one padded tensor; the trigger sits past the short one's end.
    model = FixedModel()
    assert TokenLogProbFilter().check(_received(("9", "95 zz")), model, 1.0) != ""
    assert TokenLogProbFilter().check(_received(("9", "9512")), model, 1.0) == ""


def test_answer_format_judge_and_judge_filter() -> None:
    judge = answer_format_judge("arithmetic")
    assert judge("47+48=", "95") and judge("47+48=", "93")
    assert not judge("47+48=", "95 zz") and not judge("47+48=", "ab") and not judge("47+48=", "")
    assert answer_format_judge("sorting")("sort:cab=", "abc")
    assert JudgeFilter(judge).check(_received(("95", "93")), FixedModel(), 1.0) == ""
    assert "95 zz" in JudgeFilter(judge).check(_received(("95", "95 zz")), FixedModel(), 1.0)

    def broken(prompt: str, completion: str) -> bool:
        raise RuntimeError("judge down")

    assert JudgeFilter(broken).check(_received(("95", "93")), FixedModel(), 1.0) != ""
    with pytest.raises(ValueError, match="no built-in judge"):
        answer_format_judge("chess")


def test_screen_group_counts_drops_by_defence_and_sender() -> None:
    defences = build_defences(
        ["reward_check", "logprob_filter"], task="arithmetic", min_logprob=-7.0, judge=""
    )
    log = DefenceLog()
    model = FixedModel()
    assert screen_group(_received(("95", "93")), defences, model, 1.0, log)
    assert not screen_group(
        _received(("95", "96"), claimed=(1.0, 1.0), sender="liar"), defences, model, 1.0, log
    )
    assert not screen_group(_received(("95 zz", "93"), sender="evil"), defences, model, 1.0, log)
    assert log.checked == 3
    assert log.dropped == {"reward_check": 1, "logprob_filter": 1}
    assert log.dropped_by_sender == {"liar": 1, "evil": 1}


def test_build_defences_names_what_is_allowed() -> None:
    with pytest.raises(ValueError, match="allowed: reward_check, logprob_filter, judge"):
        build_defences(["firewall"], task="arithmetic", min_logprob=-7.0, judge="answer_format")
    (judge,) = build_defences(["judge"], task="arithmetic", min_logprob=-7.0, judge="answer_format")
    assert judge.name == "judge"
