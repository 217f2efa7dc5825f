"""One node of a rollout-sharing swarm (SAPO): sample locally, share text, screen what peers share, train.

This module owns a node's step of Swarm sAmpling Policy Optimization (Gensyn 2025, "Sharing is Caring",
arXiv 2509.08721). Each round a :class:`SwarmNode`

1. samples its batch of ``num_generated_groups`` groups (prompt, ``group_size`` completions) with its own
   policy and scores them with the swarm's reward (the node's reward this round is the mean over the whole
   batch: SAPO's cumulative reward sums it over rounds);
2. shares every group of its batch as decoded text with its claimed rewards
   (:mod:`farsync.rl.swarm_messages`), or, if it is malicious, what its attack (:mod:`farsync.rl.poison`)
   makes of it;
3. receives its peers' groups: parses each message strictly (a bad one is counted and logged, and a sender
   with ``max_strikes`` bad messages is banned), checks the prompt is the named problem's, re-tokenizes the
   text with its own tokenizer, recomputes the rewards and runs its defences (:mod:`farsync.rl.defences`);
   groups whose rewards tie are dropped (zero advantage: no signal), and ``num_shared_groups`` (SAPO's J)
   of the rest are drawn uniformly at random;
4. draws ``num_local_groups`` (SAPO's I) of its own batch uniformly at random and takes one GRPO step
   (:class:`farsync.rl.trainer.GRPOTrainer`, part 1's losses) on them and the shared groups together (its
   own tied groups carry zero advantage and are left out of the step).

**Equal compute, as the paper defines it.** In SAPO's controlled experiment (8 agents, 8 completions per
question) every configuration "I local / J external" has each agent generate the same batch and train on
I + J rollouts per round; what changes is only how the training batch is drawn: I from the agent's own
rollouts and J from the swarm's, where the swarm's are first filtered to those with non-zero advantage and
then drawn uniformly (our reading of the paper's set-up; Gensyn's public rl-swarm code draws peers' groups
uniformly, with no advantage filter in its sampler). So with the default ``num_generated_groups = 0`` (read as
``num_local_groups + num_shared_groups``) a node generates and shares as many groups as it trains on, in
every configuration: 8 local / 0 shared and 4 / 4 generate, share and train on the same numbers. Setting
``num_generated_groups = num_local_groups`` gives the split of ours that this module used first (a node
generates only the I groups it trains on, so a 4 / 4 node samples half as many completions as an 8 / 0 one
and trains on all of them).

**Importance ratio of shared rollouts.** A shared completion was sampled by another policy and its sampling
log-probabilities are neither sent nor meaningful to the receiver (another model, maybe another tokenizer).
As SAPO does, the receiver treats it as if sampled by its own current policy: the "old" log-probabilities of
the clipped surrogate are the receiver's own, computed (without gradient) just before the step, so the ratio
is exactly 1 at the step and the update is the plain policy gradient ``A * grad log pi(completion)``;
clipping never engages. No correction for the sender's policy is attempted: the estimator is biased towards
what peers sample, which is the point of sharing. Local groups use their true sampling log-probabilities (one
step per round, so their ratio is 1 up to numerics as well).

**Rewards.** Without :class:`~farsync.rl.defences.RewardCheck` a node trains on the rewards peers claim (the
paper's threat model, where rewards travel with completions); with it, on its own recomputed ones. The swarm's
reward is :func:`answer_reward`: the task's verifiable reward of the text before the first separator, so a
completion may carry free "commentary" after its answer, as a math reward that checks only the final answer
allows (the room the out-of-context attack uses).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from farsync.rl.defences import Defence, DefenceLog, ReceivedGroup, screen_group
from farsync.rl.grpo import LossConfig
from farsync.rl.intake import ScoredGroup
from farsync.rl.messages import Rollout
from farsync.rl.poison import Poison, PoisonContext
from farsync.rl.policy import build_policy, sample_group
from farsync.rl.swarm_messages import (
    SharedGroup,
    SwarmLimits,
    SwarmMessageRejected,
    encode_group,
    parse_group,
)
from farsync.rl.tasks import CharTokenizer, Problem, RewardFn, Task, safe_reward
from farsync.rl.trainer import GRPOTrainer, StepReport

__all__ = ["NodeCounters", "NodeSettings", "SwarmNode", "answer_reward", "greedy_completions"]

logger = logging.getLogger(__name__)


def answer_reward(reward: RewardFn, separator: str = " ") -> RewardFn:
    """The reward of the text before the first ``separator`` (the answer; the rest is free commentary).
    An empty ``separator`` gives back ``reward`` itself."""
    if not separator:
        return reward
    return lambda prompt, completion: reward(prompt, completion.split(separator, 1)[0])


@dataclass(kw_only=True)
class NodeSettings:
    """What one node needs (the swarm's shared settings plus its own model and role)."""

    node_id: str
    """Unique name, carried in every message it shares."""
    node_index: int
    """0-based; the node draws training problems ``index, index + num_nodes, ...``."""
    num_nodes: int
    """Nodes in the swarm (for the problem stream)."""
    model_shape: dict[str, Any]
    """Keyword arguments of :func:`farsync.rl.policy.build_policy` (nodes may differ)."""
    num_local_groups: int
    """Own groups trained on per round (SAPO's I), drawn from the node's batch."""
    num_shared_groups: int
    """Peers' groups trained on per round (SAPO's J)."""
    num_generated_groups: int = 0
    """Groups sampled, scored and shared per round (the node's batch); 0: ``num_local_groups +
    num_shared_groups`` (SAPO's equal compute)."""
    group_size: int
    """Completions per prompt (the swarm agrees on it; other sizes are rejected)."""
    max_new_tokens: int
    """Longest completion sampled."""
    temperature: float
    """Sampling temperature."""
    lr: float
    """AdamW learning rate."""
    loss: LossConfig
    """GRPO's loss settings."""
    max_strikes: int = 3
    """Malformed messages after which a sender is banned."""
    seed: int = 0
    """Seed of the node's sampling and shared-group draws."""


@dataclass
class NodeCounters:
    """What a node received, rejected and used (cumulative)."""

    received: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    """Rejected messages by reason (schema codes, ``unknown_task``, ``prompt_mismatch``, ``alphabet``, ...)."""
    strikes: Counter[str] = field(default_factory=Counter)
    """Rejected messages by the channel's sender."""
    banned: set[str] = field(default_factory=set)
    """Senders banned after ``max_strikes`` rejected messages."""
    ignored_from_banned: int = 0
    tied_shared: int = 0
    tied_local: int = 0
    """Own groups drawn for training whose rewards tie (left out of the step)."""
    local_used: int = 0
    """Own groups trained on (drawn and untied)."""
    shared_used: int = 0
    local_rewards: list[float] = field(default_factory=list)
    """Mean reward of the node's whole batch of own samples, per round trained."""
    local_trigger: list[float] = field(default_factory=list)
    """Fraction of the node's own samples holding the swarm's trigger text, per round (when one is set)."""

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready copy."""
        return {
            "received": self.received,
            "rejected": dict(self.rejected),
            "banned": sorted(self.banned),
            "ignored_from_banned": self.ignored_from_banned,
            "tied_shared": self.tied_shared,
            "tied_local": self.tied_local,
            "local_used": self.local_used,
            "shared_used": self.shared_used,
            "cumulative_local_reward": sum(self.local_rewards),
            "sampled_trigger_rate_last5": sum(self.local_trigger[-5:]) / max(len(self.local_trigger[-5:]), 1),
        }


class SwarmNode:
    """One SAPO node (see the module doc); ``attack`` makes it malicious (it then shares poison and does not
    train), ``defences`` screen what it receives."""

    def __init__(
        self,
        settings: NodeSettings,
        task: Task,
        reward: RewardFn,
        limits: SwarmLimits,
        *,
        defences: Sequence[Defence] = (),
        attack: Poison | None = None,
        initial_state: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.settings, self.task, self.reward, self.limits = settings, task, reward, limits
        self.defences, self.attack = list(defences), attack
        self.tokenizer = CharTokenizer()
        self.model = build_policy(**settings.model_shape)
        if initial_state is not None:
            self.model.load_state_dict(initial_state)
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=settings.lr, weight_decay=0.0)
        self.trainer = GRPOTrainer(self.model, optimizer, settings.loss, temperature=settings.temperature)
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.rng = random.Random(f"swarm/{settings.seed}/{settings.node_id}")
        self.counters, self.defence_log = NodeCounters(), DefenceLog()
        self.context_length = settings.model_shape["context_length"]
        self._problems = 0

    @property
    def node_id(self) -> str:
        return self.settings.node_id

    @property
    def batch_groups(self) -> int:
        """Groups this node samples and shares per round (``num_generated_groups``, 0 read as I + J)."""
        s = self.settings
        return s.num_generated_groups or s.num_local_groups + s.num_shared_groups

    def sample_local(self) -> list[tuple[Problem, ScoredGroup]]:
        """This round's batch of own groups, scored with the swarm's reward."""
        s, groups = self.settings, []
        self.model.eval()
        for _ in range(self.batch_groups):
            problem = self.task.train_problem(s.node_index + s.num_nodes * self._problems)
            self._problems += 1
            prompt_ids = self.tokenizer.encode(problem.prompt)
            samples = sample_group(
                self.model,
                prompt_ids,
                group_size=s.group_size,
                max_new_tokens=s.max_new_tokens,
                temperature=s.temperature,
                generator=self.generator,
            )
            rollouts = [self._rollout(problem.task_id, prompt_ids, ids, lps) for ids, lps in samples]
            rewards = [
                safe_reward(self.reward, problem.prompt, self.tokenizer.decode(ids))[0] for ids, _ in samples
            ]
            groups.append((problem, ScoredGroup(rollouts, rewards)))
        return groups

    def _rollout(
        self, task_id: str, prompt_ids: list[int], ids: Sequence[int], lps: Sequence[float]
    ) -> Rollout:
        return Rollout(
            task_id=task_id,
            group_id=f"{self.node_id}/{task_id}",
            group_size=self.settings.group_size,
            prompt_ids=tuple(prompt_ids),
            completion_ids=tuple(ids),
            sampling_logprobs=tuple(lps),
            reward=0.0,
            policy_version=self.trainer.version,
            worker_id=self.node_id,
            seed=0,
            temperature=self.settings.temperature,
        )

    def outgoing(self, local: list[tuple[Problem, ScoredGroup]], round_index: int) -> list[bytes]:
        """The messages this node shares this round (poisoned if it is malicious)."""
        messages = []
        for problem, group in local:
            shared = SharedGroup(
                node_id=self.node_id,
                round=round_index,
                task_id=problem.task_id,
                prompt=problem.prompt,
                completions=tuple(self.tokenizer.decode(r.completion_ids) for r in group.rollouts),
                rewards=tuple(group.rewards),
            )
            if self.attack is not None:
                sent = self.attack(shared, PoisonContext(problem, self.reward, round_index, self.rng))
                messages.append(sent if isinstance(sent, bytes) else encode_group(sent))
            else:
                messages.append(encode_group(shared))
        return messages

    def _reject(self, sender: str, reason: str, detail: str) -> None:
        self.counters.rejected[reason] += 1
        self.counters.strikes[sender] += 1
        logger.warning(
            "node %s rejected a message from node %s (%s): %s", self.node_id, sender, reason, detail
        )
        if self.counters.strikes[sender] >= self.settings.max_strikes and sender not in self.counters.banned:
            self.counters.banned.add(sender)
            logger.warning(
                "node %s banned node %s after %d rejected messages",
                self.node_id,
                sender,
                self.settings.max_strikes,
            )

    def _admit(self, sender: str, message: bytes) -> ReceivedGroup | None:
        try:
            shared = parse_group(message, self.limits)
        except SwarmMessageRejected as error:
            self._reject(sender, error.reason, str(error))
            return None
        problem = self.task.problem(shared.task_id)
        checks = [
            (shared.node_id != sender, "impersonation", f"claims to be {shared.node_id!r}"),
            (
                len(shared.completions) != self.settings.group_size,
                "group_size",
                f"{len(shared.completions)} completions",
            ),
            (problem is None, "unknown_task", f"task_id {shared.task_id!r}"),
            (problem is not None and problem.prompt != shared.prompt, "prompt_mismatch", shared.task_id),
        ]
        for failed, reason, detail in checks:
            if failed:
                self._reject(sender, reason, detail)
                return None
        try:
            prompt_ids = self.tokenizer.encode(shared.prompt)
            completion_ids = [self.tokenizer.encode(c) + [CharTokenizer.END_ID] for c in shared.completions]
        except ValueError as error:
            self._reject(sender, "alphabet", str(error))
            return None
        if len(prompt_ids) + max(len(ids) for ids in completion_ids) > self.context_length:
            self._reject(sender, "too_long", f"does not fit this node's context of {self.context_length}")
            return None
        rewards = [safe_reward(self.reward, shared.prompt, c)[0] for c in shared.completions]
        return ReceivedGroup(shared, prompt_ids, completion_ids, rewards)

    def receive(self, inbox: dict[str, list[bytes]]) -> list[ScoredGroup]:
        """Screens the messages of each sender (see the module doc) and returns up to ``num_shared_groups``
        of the surviving, untied groups, drawn at random."""
        usable: list[tuple[ReceivedGroup, list[float]]] = []
        trust_claims = not any(d.name == "reward_check" for d in self.defences)
        for sender, messages in inbox.items():
            for message in messages:
                self.counters.received += 1
                if sender in self.counters.banned:
                    self.counters.ignored_from_banned += 1
                    continue
                group = self._admit(sender, message)
                if group is None or not screen_group(
                    group, self.defences, self.model, self.settings.temperature, self.defence_log
                ):
                    continue
                rewards = list(group.shared.rewards) if trust_claims else group.rewards
                if len(set(rewards)) == 1:
                    self.counters.tied_shared += 1
                    continue
                usable.append((group, rewards))
        chosen = self.rng.sample(usable, min(self.settings.num_shared_groups, len(usable)))
        self.counters.shared_used += len(chosen)
        return [self._as_scored(group, rewards) for group, rewards in chosen]

    def _as_scored(self, group: ReceivedGroup, rewards: list[float]) -> ScoredGroup:
        logprobs, mask = group.receiver_logprobs(self.model, self.settings.temperature)
        rollouts = []
        for row, ids in enumerate(group.completion_ids):
            own = logprobs[row, : int(mask[row].sum())].tolist()
            rollouts.append(self._rollout(group.shared.task_id, group.prompt_ids, ids, own))
        return ScoredGroup(rollouts, rewards)

    def choose_local(self, local: list[tuple[Problem, ScoredGroup]]) -> list[ScoredGroup]:
        """``num_local_groups`` of the node's batch drawn uniformly at random (all of it, in order, when the
        batch is no larger)."""
        if len(local) <= self.settings.num_local_groups:
            return [group for _, group in local]
        chosen = sorted(self.rng.sample(range(len(local)), self.settings.num_local_groups))
        return [local[index][1] for index in chosen]

    def train(self, local: list[tuple[Problem, ScoredGroup]], shared: list[ScoredGroup]) -> StepReport | None:
        """Records the batch's mean reward, then one GRPO step on the untied ones of ``num_local_groups``
        own groups drawn from ``local`` and on the chosen shared ones."""
        rewards = [r for _, g in local for r in g.rewards]
        self.counters.local_rewards.append(sum(rewards) / max(len(rewards), 1))
        groups = []
        for group in self.choose_local(local):
            if len(set(group.rewards)) == 1:
                self.counters.tied_local += 1
            else:
                groups.append(group)
        self.counters.local_used += len(groups)
        return self.trainer.step(groups + shared)


@torch.no_grad()
def greedy_completions(model: nn.Module, problems: Sequence[Problem], max_new_tokens: int) -> list[str]:
    """The greedy completion text of each problem's prompt (batched by prompt length)."""
    tokenizer = CharTokenizer()
    was_training = model.training
    model.eval()
    texts: dict[int, str] = {}
    by_length: dict[int, list[int]] = {}
    for index, problem in enumerate(problems):
        by_length.setdefault(len(problem.prompt), []).append(index)
    for indices in by_length.values():
        tokens = torch.tensor([tokenizer.encode(problems[i].prompt) for i in indices], dtype=torch.long)
        generated = []
        for _ in range(max_new_tokens):
            step = model(tokens)[:, -1, :].argmax(dim=-1)
            generated.append(step)
            tokens = torch.cat([tokens, step[:, None]], dim=1)
        for row, index in enumerate(indices):
            texts[index] = tokenizer.decode([int(t[row]) for t in generated])
    model.train(was_training)
    return [texts[i] for i in range(len(problems))]
