"""The sampler's recorded log-probs equal the trainer's recomputation; seeds replay; pass@1 scores greedily."""

from __future__ import annotations

import pytest
import torch

from farsync.rl.policy import build_policy, completion_logprobs, pass_at_1, sample_group
from farsync.rl.tasks import CharTokenizer, Problem, arithmetic_reward

TOKENIZER = CharTokenizer()


def _model(kind: str = "gpt") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_policy(
        num_layers=1, width=32, num_heads=2, context_length=16, vocab_size=TOKENIZER.vocab_size, kind=kind
    )


@pytest.mark.parametrize("kind", ["gpt", "hf"])
def test_trainer_logprobs_match_the_sampler_and_seeds_replay(kind: str) -> None:
    if kind == "hf":
        pytest.importorskip("transformers")
    model = _model(kind)
    prompt = TOKENIZER.encode("12+7=")
    samples = sample_group(
        model,
        prompt,
        group_size=6,
        max_new_tokens=5,
        temperature=0.7,
        generator=torch.Generator().manual_seed(5),
    )
    again = sample_group(
        model,
        prompt,
        group_size=6,
        max_new_tokens=5,
        temperature=0.7,
        generator=torch.Generator().manual_seed(5),
    )
    assert samples == again
    logprobs, mask = completion_logprobs(model, [(prompt, ids) for ids, _ in samples], temperature=0.7)
    for row, (ids, recorded) in enumerate(samples):
        assert 1 <= len(ids) <= 5 and (TOKENIZER.END_ID not in ids[:-1])
        assert mask[row].sum() == len(ids)
        torch.testing.assert_close(logprobs[row, : len(ids)], torch.tensor(recorded), atol=1e-5, rtol=0)


def test_completion_logprobs_by_hand_on_a_constant_model() -> None:
    class Uniform(torch.nn.Module):
        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(*tokens.shape, 4)
            logits[..., 1] = 1.0  # token 1 has probability e / (e + 3)
            return logits

    logprobs, mask = completion_logprobs(Uniform(), [((2, 3), (1, 0)), ((2,), (3,))], temperature=1.0)
    high, low = torch.log(torch.tensor(torch.e / (torch.e + 3))), torch.log(torch.tensor(1 / (torch.e + 3)))
    torch.testing.assert_close(
        logprobs, torch.stack([torch.stack([high, low]), torch.stack([low, torch.tensor(0.0)])])
    )
    assert mask.tolist() == [[1.0, 1.0], [1.0, 0.0]]


def test_pass_at_1_counts_greedy_answers_that_earn_the_reward() -> None:
    answer = TOKENIZER.encode("7")[0]

    class AlwaysSeven(torch.nn.Module):
        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(*tokens.shape, TOKENIZER.vocab_size)
            last_is_seven = tokens == answer
            logits[..., answer] = 1.0
            logits[..., TOKENIZER.END_ID] = last_is_seven.float() * 2.0
            return logits

    problems = [Problem("t/0", "3+4=", "7"), Problem("t/1", "1+5=", "6"), Problem("t/2", "10+1=", "11")]
    assert pass_at_1(AlwaysSeven(), problems, arithmetic_reward, TOKENIZER, max_new_tokens=3) == 1 / 3
