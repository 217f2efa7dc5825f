"""GRPO's equations against values worked out by hand (arXiv 2402.03300, 2503.20783, 2505.07291)."""

from __future__ import annotations

import math

import pytest
import torch

from farsync.rl.grpo import LossConfig, group_advantages, k3_kl, policy_loss, tied_groups


def test_grpo_advantages_divide_by_the_sample_std() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    # mean 0.5; sample std sqrt(4 * 0.25 / 3) = 0.577350
    expected = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    advantages = group_advantages(rewards)
    assert advantages.tolist()[0] == pytest.approx([expected, -expected, -expected, expected], abs=1e-6)


def test_dr_grpo_advantages_only_center() -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 8.0]])
    assert group_advantages(rewards, scale_by_std=False).tolist() == [[-1.0, 0.0, 1.0], [-1.0, -1.0, 2.0]]


def test_tied_groups_are_flagged() -> None:
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert tied_groups(rewards).tolist() == [True, False, True]


def _one_completion(advantage: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # Ratios 1.5 and 0.5 against the sampler.
    logprobs = torch.log(torch.tensor([[1.5, 0.5]])).requires_grad_(True)
    return logprobs, torch.zeros(1, 2), torch.tensor([advantage]), torch.ones(1, 2)


def test_grpo_clips_positive_advantage_ratio_at_one_plus_eps() -> None:
    logprobs, sampler, advantages, mask = _one_completion(1.0)
    loss, stats = policy_loss(logprobs, sampler, advantages, mask, LossConfig(loss="grpo"))
    # token 1: min(1.5, 1.2) = 1.2; token 2: min(0.5, 0.8) = 0.5; loss = -(1.2 + 0.5) / 2
    assert float(loss.detach()) == pytest.approx(-0.85)
    assert stats.clip_fraction == pytest.approx(1.0)
    assert stats.mean_ratio == pytest.approx(1.0)
    loss.backward()
    assert logprobs.grad is not None
    # token 1 is clipped (no gradient); token 2 keeps d(-r A / 2)/dlogp = -0.5 * 1 / 2
    assert logprobs.grad.tolist()[0] == pytest.approx([0.0, -0.25])


def test_grpo_leaves_large_ratio_unbounded_for_negative_advantage() -> None:
    logprobs, sampler, advantages, mask = _one_completion(-1.0)
    loss, _ = policy_loss(logprobs, sampler, advantages, mask, LossConfig(loss="grpo"))
    # token 1: min(-1.5, -1.2) = -1.5; token 2: min(-0.5, -0.8) = -0.8; loss = 2.3 / 2
    assert float(loss.detach()) == pytest.approx(1.15)
    loss.backward()
    assert logprobs.grad is not None
    assert logprobs.grad.tolist()[0] == pytest.approx([0.75, 0.0])


def test_two_sided_bounds_the_ratio_by_delta_for_negative_advantage() -> None:
    logprobs, sampler, advantages, mask = _one_completion(-1.0)
    config = LossConfig(loss="two_sided", delta=1.4)
    loss, _ = policy_loss(logprobs, sampler, advantages, mask, config)
    # token 1: min(-min(1.5, 1.4), -1.2) = -1.4; token 2: -0.8; loss = 2.2 / 2
    assert float(loss.detach()) == pytest.approx(1.1)
    loss.backward()
    assert logprobs.grad is not None
    assert logprobs.grad.tolist()[0] == pytest.approx([0.0, 0.0])


def test_two_sided_equals_grpo_for_positive_advantage() -> None:
    logprobs, sampler, advantages, mask = _one_completion(1.0)
    grpo, _ = policy_loss(logprobs, sampler, advantages, mask, LossConfig(loss="grpo"))
    two_sided, _ = policy_loss(logprobs, sampler, advantages, mask, LossConfig(loss="two_sided", delta=1.4))
    assert float(two_sided.detach()) == pytest.approx(float(grpo.detach()))


def _two_lengths() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # Completion A: 2 tokens, advantage +1; completion B: 1 token, advantage -3; all ratios 1.
    logprobs = torch.zeros(2, 2)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    return logprobs, torch.zeros(2, 2), torch.tensor([1.0, -3.0]), mask


def test_grpo_averages_per_completion_then_over_completions() -> None:
    loss, _ = policy_loss(*_two_lengths(), LossConfig(loss="grpo"))
    # A: -(1 + 1) / 2 = -1; B: 3 / 1 = 3; mean = 1
    assert float(loss.detach()) == pytest.approx(1.0)


def test_dr_grpo_divides_the_token_sum_by_a_constant() -> None:
    loss, _ = policy_loss(*_two_lengths(), LossConfig(loss="dr_grpo"))
    # (-1 - 1 + 3) / (2 completions x 2 tokens)
    assert float(loss.detach()) == pytest.approx(0.25)
    loss, _ = policy_loss(*_two_lengths(), LossConfig(loss="dr_grpo", max_tokens=5))
    assert float(loss.detach()) == pytest.approx(0.1)


def test_k3_kl_by_hand_and_added_with_its_weight() -> None:
    p, q = math.log(0.5), math.log(0.25)
    expected = 0.5 - math.log(0.5) - 1.0  # exp(q - p) - (q - p) - 1
    assert float(k3_kl(torch.tensor(p), torch.tensor(q))) == pytest.approx(expected)
    logprobs = torch.full((1, 1), p)
    ref = torch.full((1, 1), q)
    config = LossConfig(kl_coef=0.5)
    loss, stats = policy_loss(logprobs, logprobs.clone(), torch.tensor([0.0]), torch.ones(1, 1), config, ref)
    assert float(loss.detach()) == pytest.approx(0.5 * expected)
    assert stats.kl == pytest.approx(expected)
