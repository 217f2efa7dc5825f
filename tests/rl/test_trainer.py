"""The GRPO trainer: a step moves the policy toward rewarded completions; two trainers with farsync's DDP
(threads, gloo) take the same step as one trainer on both batches."""

from __future__ import annotations

import copy
from typing import Any

import torch

from farsync.algorithms.ddp import DDP
from farsync.comm.communicator import Communicator
from farsync.rl.grpo import LossConfig
from farsync.rl.intake import ScoredGroup
from farsync.rl.messages import Rollout
from farsync.rl.policy import build_policy, completion_logprobs
from farsync.rl.trainer import GRPOTrainer
from farsync.sim.ranks import run_ranks

SHAPE = {"num_layers": 1, "width": 16, "num_heads": 2, "context_length": 12, "vocab_size": 12}


def _group(
    model: torch.nn.Module,
    prompt: tuple[int, ...],
    completions: list[tuple[int, ...]],
    rewards: list[float],
    version: int = 0,
) -> ScoredGroup:
    with torch.no_grad():
        logprobs, _ = completion_logprobs(model, [(prompt, c) for c in completions], temperature=1.0)
    rollouts = [
        Rollout(
            task_id="t/train/0",
            group_id=f"g{prompt}",
            group_size=len(completions),
            prompt_ids=prompt,
            completion_ids=c,
            sampling_logprobs=tuple(logprobs[i, : len(c)].tolist()),
            reward=r,
            policy_version=version,
            worker_id="w",
            seed=0,
            temperature=1.0,
        )
        for i, (c, r) in enumerate(zip(completions, rewards, strict=True))
    ]
    return ScoredGroup(rollouts, rewards)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_policy(**SHAPE)


def _groups(model: torch.nn.Module, rank: int) -> list[ScoredGroup]:
    prompt = (1 + rank, 2, 3)
    return [_group(model, prompt, [(4, 0), (5, 0), (4, 5, 0)], [1.0, 0.0, 0.0])]


def test_a_step_raises_the_rewarded_completion_and_reports_mismatch() -> None:
    model = _model()
    trainer = GRPOTrainer(model, torch.optim.SGD(model.parameters(), lr=0.5), LossConfig(), temperature=1.0)
    groups = _groups(model, 0)
    report = trainer.step(groups)
    assert report is not None
    assert report.logprob_mismatch < 1e-5  # sampled with these very weights
    assert report.logprob_mismatch_current == report.logprob_mismatch
    assert report.mean_staleness == 0.0
    with torch.no_grad():
        after, _ = completion_logprobs(model, [((1, 2, 3), (4, 0)), ((1, 2, 3), (5, 0))], temperature=1.0)
    before = torch.tensor(groups[0].rollouts[0].sampling_logprobs).sum()
    assert after[0].sum() > before  # the rewarded completion became more likely
    assert after[1].sum() < torch.tensor(groups[0].rollouts[1].sampling_logprobs).sum()


def test_two_ddp_trainers_step_like_one_trainer_on_both_batches() -> None:
    initial = _model()  # built once: the global RNG is shared by the rank threads

    def rank_main(rank: int, world_size: int, group: Any, store: Any) -> dict[str, torch.Tensor]:
        model = copy.deepcopy(initial)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
        ddp = DDP(model, optimizer, Communicator(group, rank, world_size))
        trainer = GRPOTrainer(model, optimizer, LossConfig(), temperature=1.0, grad_clip=0.0, algorithm=ddp)
        with ddp:
            trainer.step(_groups(model, rank))
            trainer.step([])  # an empty batch on every rank still steps together
        return copy.deepcopy(model.state_dict())

    ranks = run_ranks(rank_main, 2, prefix="rl-ddp")
    single = copy.deepcopy(initial)
    optimizer = torch.optim.AdamW(single.parameters(), lr=1e-2, weight_decay=0.0)
    trainer = GRPOTrainer(single, optimizer, LossConfig(), temperature=1.0, grad_clip=0.0)
    trainer.step(_groups(single, 0) + _groups(single, 1))
    optimizer.zero_grad(set_to_none=False)
    optimizer.step()
    for name, value in single.state_dict().items():
        torch.testing.assert_close(ranks[0][name], ranks[1][name], rtol=0, atol=0)
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-4, atol=1e-5)
