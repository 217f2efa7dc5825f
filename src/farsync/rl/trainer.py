"""The GRPO trainer: one optimizer step on a batch of scored groups, and what it reports.

This module owns the generic trainer of the field's design: it receives token ids, one advantage per
completion (spread over its tokens) and the log-probabilities recorded at sampling time; the algorithm
(advantages, filtering) happened where the groups were assembled. Each step also measures how far the
trainer's log-probabilities of the sampled tokens are from the sampler's (before the update, so with the
weights of the current version): for rollouts of the current version the gap is pure numerical mismatch, for
older ones it includes the policy's drift, which is what makes unbounded async RL collapse unnoticed.

Data parallelism over several trainers reuses farsync's algorithms: pass ``algorithm`` (e.g.
:class:`farsync.algorithms.ddp.DDP` over a communicator, attached to this trainer's optimizer); its hooks fire
inside ``optimizer.step()``. With an algorithm attached, a trainer whose batch is empty still steps (with zero
gradients) so every rank makes the same collective calls.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from farsync.algorithms.base import Algorithm
from farsync.rl.grpo import LossConfig, group_advantages, policy_loss
from farsync.rl.intake import ScoredGroup
from farsync.rl.policy import completion_logprobs

__all__ = ["GRPOTrainer", "StepReport"]

logger = logging.getLogger(__name__)


@dataclass
class StepReport:
    """What one trainer step did."""

    num_groups: int
    loss: float
    mean_reward: float
    clip_fraction: float
    mean_ratio: float
    kl: float
    logprob_mismatch: float
    """Mean |trainer - sampler| log-prob over sampled tokens, all rollouts."""
    logprob_mismatch_current: float
    """The same over rollouts of the current version only (numerical mismatch; NaN if none)."""
    mean_staleness: float
    """Mean (current version - rollout version) over the batch's groups."""
    grad_norm: float


class GRPOTrainer:
    """Trains a policy on scored groups with :func:`farsync.rl.grpo.policy_loss`.

    Args:
        model: the policy (its ``state_dict`` is what gets published).
        optimizer: over ``model``'s parameters.
        loss: the loss settings (``dr_grpo`` also switches advantages to ``r - mean``).
        temperature: the sampling temperature (log-probs are of ``softmax(logits / temperature)``).
        grad_clip: gradient-norm clip (0 disables).
        reference: keep a frozen copy of the initial policy for the KL term when ``loss.kl_coef > 0``.
        algorithm: an optional farsync algorithm attached to ``optimizer`` (data parallelism).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss: LossConfig,
        *,
        temperature: float,
        grad_clip: float = 1.0,
        algorithm: Algorithm | None = None,
    ) -> None:
        self.model, self.optimizer, self.loss_config = model, optimizer, loss
        self.temperature, self.grad_clip, self.algorithm = temperature, grad_clip, algorithm
        self.reference: nn.Module | None = None
        if loss.kl_coef > 0:
            self.reference = copy.deepcopy(model).eval()
            self.reference.requires_grad_(False)
        self.version = 0

    def step(self, groups: list[ScoredGroup]) -> StepReport | None:
        """One optimizer step on ``groups``; returns ``None`` when there was nothing to train on (no step
        is taken, unless an algorithm needs every rank to step)."""
        if not groups:
            if self.algorithm is not None:
                self.optimizer.zero_grad(set_to_none=False)
                self.optimizer.step()
            return None
        rollouts = [r for g in groups for r in g.rollouts]
        rewards = torch.tensor([g.rewards for g in groups])
        scale = self.loss_config.loss != "dr_grpo"
        advantages = group_advantages(rewards, scale_by_std=scale).reshape(-1)
        pairs = [(r.prompt_ids, r.completion_ids) for r in rollouts]
        self.model.train()
        logprobs, mask = completion_logprobs(self.model, pairs, self.temperature)
        sampler = torch.zeros_like(mask)
        for row, rollout in enumerate(rollouts):
            sampler[row, : len(rollout.sampling_logprobs)] = torch.tensor(rollout.sampling_logprobs)
        ref = None
        if self.reference is not None:
            with torch.no_grad():
                ref, _ = completion_logprobs(self.reference, pairs, self.temperature)
        loss, stats = policy_loss(logprobs, sampler, advantages, mask, self.loss_config, ref)
        mismatch = self._mismatch(logprobs.detach(), sampler, mask, rollouts)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        grad_norm = float(
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip or float("inf"))
        )
        self.optimizer.step()
        return StepReport(
            num_groups=len(groups),
            loss=stats.loss,
            mean_reward=float(rewards.mean()),
            clip_fraction=stats.clip_fraction,
            mean_ratio=stats.mean_ratio,
            kl=stats.kl,
            logprob_mismatch=mismatch[0],
            logprob_mismatch_current=mismatch[1],
            mean_staleness=sum(self.version - g.policy_version for g in groups) / len(groups),
            grad_norm=grad_norm,
        )

    def _mismatch(
        self, logprobs: torch.Tensor, sampler: torch.Tensor, mask: torch.Tensor, rollouts: list[Any]
    ) -> tuple[float, float]:
        gap = (logprobs - sampler).abs() * mask
        overall = float(gap.sum() / mask.sum().clamp(min=1.0))
        current = torch.tensor([r.policy_version == self.version for r in rollouts])
        if not bool(current.any()):
            return overall, float("nan")
        return overall, float(gap[current].sum() / mask[current].sum().clamp(min=1.0))
