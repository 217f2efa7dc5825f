"""Decentralised RL post-training: GRPO with inference decoupled from training.

Roles: inference workers sample version-tagged rollouts (:mod:`farsync.rl.messages`) and push them through a
:class:`~farsync.rl.transport.RolloutChannel`; trainers pull them, drop stale or malformed ones, compute
GRPO losses (:mod:`farsync.rl.grpo`) and publish new policy versions through a
:class:`~farsync.rl.transport.WeightPublisher`. :func:`run_rl` runs it all (``farsync rl``) and takes a
user's reward function. See docs/rl.md.
"""

from __future__ import annotations

from farsync.rl.grpo import LOSSES, LossConfig, group_advantages, k3_kl, policy_loss, tied_groups
from farsync.rl.intake import IntakeCounters, RolloutIntake, ScoredGroup
from farsync.rl.messages import (
    ROLLOUT_SCHEMA_VERSION,
    Rollout,
    RolloutLimits,
    RolloutRejected,
    encode_rollout,
    parse_rollout,
)
from farsync.rl.proofs import AcceptAll, NoProof, Prover, Verdict, Verifier
from farsync.rl.runner import RLStalled, run_rl
from farsync.rl.tasks import TASKS, CharTokenizer, Problem, RewardFn, Task, load_reward, make_task
from farsync.rl.trainer import GRPOTrainer, StepReport
from farsync.rl.transport import (
    ChannelFull,
    InProcessRolloutChannel,
    InProcessWeights,
    RolloutChannel,
    WeightPublisher,
    WeightSource,
    WeightsUnavailable,
)

__all__ = [
    "LOSSES",
    "ROLLOUT_SCHEMA_VERSION",
    "TASKS",
    "AcceptAll",
    "ChannelFull",
    "CharTokenizer",
    "GRPOTrainer",
    "InProcessRolloutChannel",
    "InProcessWeights",
    "IntakeCounters",
    "LossConfig",
    "NoProof",
    "Problem",
    "Prover",
    "RLStalled",
    "RewardFn",
    "Rollout",
    "RolloutChannel",
    "RolloutIntake",
    "RolloutLimits",
    "RolloutRejected",
    "ScoredGroup",
    "StepReport",
    "Task",
    "Verdict",
    "Verifier",
    "WeightPublisher",
    "WeightSource",
    "WeightsUnavailable",
    "encode_rollout",
    "group_advantages",
    "k3_kl",
    "load_reward",
    "make_task",
    "parse_rollout",
    "policy_loss",
    "run_rl",
    "tied_groups",
]
