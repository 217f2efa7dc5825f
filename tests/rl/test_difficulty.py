"""Offline difficulty filtering: pass rates by sampling, and only problems solved sometimes are kept."""

from __future__ import annotations

import torch

from farsync.rl.difficulty import keep_by_difficulty, pass_rates
from farsync.rl.tasks import CharTokenizer, make_task

TOKENIZER = CharTokenizer()
TASK = make_task("arithmetic", seed=0, num_heldout=8)


def test_keep_only_rates_strictly_between_the_bounds() -> None:
    assert keep_by_difficulty([3, 4, 5, 6], [0.0, 0.25, 1.0, 0.875], low=0.0, high=1.0) == [4, 6]
    assert keep_by_difficulty([3, 4, 5, 6], [0.0, 0.25, 1.0, 0.875], low=0.25, high=0.9) == [6]


class _Answers(torch.nn.Module):
    """Emits problem 0's answer then the end token, with probability ``p`` per token of the right one."""

    def __init__(self, answer: str, p: float) -> None:
        super().__init__()
        self.ids = [*TOKENIZER.encode(answer), TOKENIZER.END_ID]
        self.p = p

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        produced = tokens.shape[1] - len(TOKENIZER.encode(TASK.train_problem(0).prompt))
        target = self.ids[min(produced, len(self.ids) - 1)]
        logits = torch.full((*tokens.shape, TOKENIZER.vocab_size), -1e9)
        wrong = (target + 1) % TOKENIZER.vocab_size
        logits[..., target] = torch.log(torch.tensor(self.p))
        logits[..., wrong] = torch.log(torch.tensor(1 - self.p)) if self.p < 1 else -1e9
        return logits


def test_pass_rates_count_solved_samples() -> None:
    answer = TASK.train_problem(0).answer
    kwargs = {"num_samples": 64, "max_new_tokens": 4, "temperature": 1.0, "seed": 0}
    assert pass_rates(_Answers(answer, 1.0), TASK, [0], TASK.reward, **kwargs) == [1.0]  # type: ignore[arg-type]
    (rate,) = pass_rates(_Answers(answer, 0.8), TASK, [0], TASK.reward, **kwargs)  # type: ignore[arg-type]
    expected = 0.8 ** (len(answer) + 1)  # every token right, the end token included
    assert abs(rate - expected) < 0.2 and 0 < rate < 1
