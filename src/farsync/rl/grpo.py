"""GRPO's equations as pure functions: group-relative advantages, tie filtering, the clipped policy loss
with its variants, and the k3 KL estimate.

This module owns the numerics of Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath,
arXiv 2402.03300) and the variants a run picks with ``loss``:

* ``"grpo"``: advantage ``(r - mean) / (std + eps)`` within a group (``std`` the sample standard deviation,
  as TRL computes it); per-token PPO-clipped surrogate ``min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)``,
  averaged over each completion's tokens, then over completions.
* ``"dr_grpo"``: Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv 2503.20783):
  advantage ``r - mean`` (no division by the std) and the surrogate summed over tokens and divided by a
  constant (``num completions x max_tokens``) instead of each completion's own length, removing the two
  biases the paper names.
* ``"two_sided"``: INTELLECT-2 (Prime Intellect 2025, arXiv 2505.07291, section 3.3): ``grpo``'s advantages
  and averaging, with the ratio also bounded above by ``delta`` when the advantage is negative:
  ``min(min(rho, delta) A, clip(rho, 1 - eps_low, 1 + eps_high) A)``. With a negative advantage the
  one-sided clip leaves large ratios unbounded; the bound keeps such tokens' gradients finite.

Here ``rho = exp(logp - logp_sampler)``: the old policy of PPO is the *sampling* policy, whose log-probs the
rollout recorded, so a stale rollout is corrected by its importance ratio. Groups whose rewards all tie
carry no signal (every advantage 0) and are dropped and counted (INTELLECT-2's data filtering). The optional
KL to a reference policy uses Schulman's k3 estimator ``exp(q - p) - (q - p) - 1`` (p the policy's, q the
reference's log-probs), added with weight ``kl_coef``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "LOSSES",
    "LossConfig",
    "LossStats",
    "group_advantages",
    "k3_kl",
    "policy_loss",
    "tied_groups",
]

LOSSES = ("grpo", "dr_grpo", "two_sided")
"""The loss variants :func:`policy_loss` accepts."""

LossName = Literal["grpo", "dr_grpo", "two_sided"]


@dataclass(frozen=True, kw_only=True)
class LossConfig:
    """The policy loss's settings."""

    loss: LossName = "grpo"
    """One of :data:`LOSSES`."""
    clip_low: float = 0.2
    """Lower clip: the ratio is clipped below at ``1 - clip_low``."""
    clip_high: float = 0.2
    """Upper clip: the ratio is clipped above at ``1 + clip_high``."""
    delta: float = 4.0
    """``two_sided``: upper bound on the ratio for tokens with a negative advantage (> 1 + clip_high)."""
    kl_coef: float = 0.0
    """Weight of the k3 KL to the reference policy (0: no reference)."""
    max_tokens: int = 0
    """``dr_grpo``: the constant token count per completion (0: the batch's longest completion)."""


@dataclass(frozen=True)
class LossStats:
    """What one loss evaluation reports (floats, detached)."""

    loss: float
    """The scalar loss."""
    clip_fraction: float
    """Fraction of tokens whose ratio was clipped (by either bound)."""
    mean_ratio: float
    """Mean importance ratio over tokens."""
    kl: float
    """Mean k3 KL to the reference over tokens (0 without one)."""


def group_advantages(rewards: Tensor, *, scale_by_std: bool = True, eps: float = 1e-4) -> Tensor:
    """Advantages for ``rewards [num_groups, group_size]``: ``r - mean`` per group, divided by the group's
    sample standard deviation plus ``eps`` when ``scale_by_std`` (GRPO; Dr. GRPO does not)."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be [num_groups, group_size >= 2], got {list(rewards.shape)}")
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale_by_std:
        return centered
    return centered / (rewards.std(dim=1, keepdim=True) + eps)


def tied_groups(rewards: Tensor) -> Tensor:
    """A bool per group of ``rewards [num_groups, group_size]``: True when all its rewards are equal."""
    return (rewards == rewards[:, :1]).all(dim=1)


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(policy || reference): ``exp(q - p) - (q - p) - 1`` (always >= 0)."""
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1.0


def policy_loss(
    logprobs: Tensor,
    sampler_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    config: LossConfig,
    ref_logprobs: Tensor | None = None,
) -> tuple[Tensor, LossStats]:
    """The loss to minimise for completions ``[B, L]`` (log-probs now and at sampling, a mask of real
    tokens) with one advantage per completion ``[B]``; returns ``(loss, stats)``."""
    ratio = torch.exp(logprobs - sampler_logprobs)
    adv = advantages[:, None].expand_as(ratio)
    clipped = ratio.clamp(1.0 - config.clip_low, 1.0 + config.clip_high)
    unclipped = ratio
    if config.loss == "two_sided":
        unclipped = torch.where(adv < 0, ratio.clamp(max=config.delta), ratio)
    surrogate = torch.minimum(unclipped * adv, clipped * adv)
    per_token = -surrogate
    kl = torch.zeros_like(per_token)
    if ref_logprobs is not None and config.kl_coef > 0:
        kl = k3_kl(logprobs, ref_logprobs)
        per_token = per_token + config.kl_coef * kl
    loss = _aggregate(per_token, mask, config)
    num_tokens = mask.sum().clamp(min=1.0)
    was_clipped = ((ratio < 1.0 - config.clip_low) | (ratio > 1.0 + config.clip_high)).float()
    stats = LossStats(
        loss=float(loss.detach()),
        clip_fraction=float((was_clipped * mask).sum() / num_tokens),
        mean_ratio=float((ratio.detach() * mask).sum() / num_tokens),
        kl=float((kl.detach() * mask).sum() / num_tokens),
    )
    return loss, stats


def _aggregate(per_token: Tensor, mask: Tensor, config: LossConfig) -> Tensor:
    if config.loss == "dr_grpo":
        max_tokens = config.max_tokens or per_token.shape[1]
        return (per_token * mask).sum() / (per_token.shape[0] * max_tokens)
    lengths = mask.sum(dim=1).clamp(min=1.0)
    return ((per_token * mask).sum(dim=1) / lengths).mean()
