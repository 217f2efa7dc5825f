"""Offline difficulty filtering: keep the training problems the starting policy sometimes solves.

INTELLECT-2 (arXiv 2505.07291, section 3.2) filters its problems before RL by the pass rate of a base model:
a problem the model always solves or never solves yields a group whose rewards all tie, which GRPO cannot
learn from, yet costs a full group of samples. :func:`pass_rates` samples ``num_samples`` completions of each
candidate problem with the starting policy; :func:`keep_by_difficulty` keeps the indices whose pass rate lies
strictly between ``low`` and ``high``.
"""

from __future__ import annotations

import torch
from torch import nn

from farsync.rl.policy import sample_group
from farsync.rl.tasks import CharTokenizer, RewardFn, Task, safe_reward

__all__ = ["keep_by_difficulty", "pass_rates"]


@torch.no_grad()
def pass_rates(
    model: nn.Module,
    task: Task,
    indices: list[int],
    reward: RewardFn,
    *,
    num_samples: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
) -> list[float]:
    """Fraction of ``num_samples`` sampled completions earning reward >= 1, per training problem index."""
    tokenizer = CharTokenizer()
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    rates = []
    for index in indices:
        problem = task.train_problem(index)
        samples = sample_group(
            model,
            tokenizer.encode(problem.prompt),
            group_size=num_samples,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            generator=generator,
        )
        solved = sum(
            safe_reward(reward, problem.prompt, tokenizer.decode(ids))[0] >= 1.0 for ids, _ in samples
        )
        rates.append(solved / num_samples)
    model.train(was_training)
    return rates


def keep_by_difficulty(indices: list[int], rates: list[float], *, low: float, high: float) -> list[int]:
    """The indices whose pass rate is strictly between ``low`` and ``high``."""
    if len(indices) != len(rates):
        raise ValueError(f"{len(indices)} indices but {len(rates)} pass rates")
    return [index for index, rate in zip(indices, rates, strict=True) if low < rate < high]
