"""Decentralised RL post-training: GRPO with inference decoupled from training.

Roles: inference workers sample version-tagged rollouts (:mod:`farsync.rl.messages`) and push them through a
:class:`~farsync.rl.transport.RolloutChannel`; trainers pull them, drop stale or malformed ones, compute
GRPO losses (:mod:`farsync.rl.grpo`) and publish new policy versions through a
:class:`~farsync.rl.transport.WeightPublisher`. See docs/rl.md.
"""

from __future__ import annotations

from farsync.rl.messages import (
    ROLLOUT_SCHEMA_VERSION,
    Rollout,
    RolloutLimits,
    RolloutRejected,
    encode_rollout,
    parse_rollout,
)
from farsync.rl.proofs import AcceptAll, NoProof, Prover, Verdict, Verifier
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
    "ROLLOUT_SCHEMA_VERSION",
    "AcceptAll",
    "ChannelFull",
    "InProcessRolloutChannel",
    "InProcessWeights",
    "NoProof",
    "Prover",
    "Rollout",
    "RolloutChannel",
    "RolloutLimits",
    "RolloutRejected",
    "Verdict",
    "Verifier",
    "WeightPublisher",
    "WeightSource",
    "WeightsUnavailable",
    "encode_rollout",
    "parse_rollout",
]
