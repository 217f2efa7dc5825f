"""Swarm mode: N SAPO nodes, each with its own policy, sharing decoded rollouts round by round.

This module owns the swarm's membership, exchange and bookkeeping (a node's own step is
:mod:`farsync.rl.swarm_node`). Swarm sAmpling Policy Optimization (Gensyn 2025, "Sharing is Caring",
arXiv 2509.08721): every node samples and shares a batch of ``num_generated_groups`` groups (default
``num_local_groups + num_shared_groups``, the paper's equal compute) and trains its own policy (sizes may
differ) on ``num_local_groups`` of them drawn at random and ``num_shared_groups`` untied groups its peers
shared as text (see :mod:`farsync.rl.swarm_node`).

Rounds are synchronous: in round ``r`` the live nodes (``join_round <= r < leave_round``) sample and share,
then each honest node receives what its live peers shared this round and takes one GRPO step. A node that
joins late starts from the swarm's initial weights; a node that leaves stops sharing and receiving, and
nothing more is sent to it. The exchange goes over part 1's :class:`~farsync.rl.transport.RolloutChannel`:
one channel per (receiver, sender) pair, so a receiver knows which peer a message came from, as over an
authenticated connection (a message claiming another sender is rejected), either in memory or as files in
the run directory (:class:`~farsync.rl.files.DirectoryRolloutChannel`, whose reads stop past the size limit).
Every byte a node shares or receives is recorded in its :class:`~farsync.comm.ledger.ByteLedger` (channel
``"swarm"``, operations ``share`` per copy sent and ``receive``).

A fraction of the nodes may be malicious (:mod:`farsync.rl.poison`): they share what their attack makes of
their groups and do not train. Honest nodes run the configured defences (:mod:`farsync.rl.defences`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from farsync.comm.ledger import ByteLedger
from farsync.rl.defences import build_defences
from farsync.rl.files import DirectoryRolloutChannel
from farsync.rl.grpo import LossConfig
from farsync.rl.poison import load_poison
from farsync.rl.swarm_messages import SwarmLimits
from farsync.rl.swarm_node import NodeSettings, SwarmNode, answer_reward, greedy_completions
from farsync.rl.tasks import CharTokenizer, make_task, safe_reward
from farsync.rl.transport import InProcessRolloutChannel, RolloutChannel

__all__ = ["SwarmSettings", "run_swarm", "task_vocab_size"]

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class SwarmSettings:
    """A swarm run (validated by :meth:`validate`)."""

    task: str = "arithmetic"
    """Shipped task (:data:`farsync.rl.tasks.TASKS`)."""
    task_seed: int = 0
    """Seed of the task's problems."""
    num_heldout: int = 100
    """Held-out problems for the final evaluation."""
    num_nodes: int = 8
    """Nodes in the swarm (malicious ones included)."""
    num_rounds: int = 50
    """Rounds (one GRPO step per honest live node each)."""
    num_local_groups: int = 4
    """SAPO's I: own groups per step."""
    num_shared_groups: int = 4
    """SAPO's J: peers' groups per step (0: no sharing; nothing is sent)."""
    num_generated_groups: int = 0
    """Groups each node samples and shares per round; 0: I + J (SAPO's equal compute); I: ours, unequal."""
    group_size: int = 8
    """Completions per prompt."""
    max_new_tokens: int = 8
    """Longest completion (end token included)."""
    temperature: float = 1.0
    """Sampling temperature."""
    lr: float = 1e-3
    """Each node's AdamW learning rate."""
    loss: LossConfig = field(default_factory=LossConfig)
    """GRPO's loss settings (part 1's)."""
    model_shape: dict[str, Any] = field(default_factory=dict)
    """Every node's :func:`~farsync.rl.policy.build_policy` arguments (vocab_size is filled in)."""
    node_shapes: list[dict[str, Any]] = field(default_factory=list)
    """Per-node shapes overriding ``model_shape`` (empty: all the same); nodes may differ in size, or in
    architecture through part 1's ``kind = "hf"`` keys."""
    join_rounds: list[int] = field(default_factory=list)
    """Per-node round of joining (empty: all join at 0)."""
    leave_rounds: list[int] = field(default_factory=list)
    """Per-node round of leaving (-1: stays; empty: all stay)."""
    commentary_separator: str = " "
    """The reward scores the text before it (:func:`~farsync.rl.swarm_node.answer_reward`; empty: strict)."""
    malicious_fraction: float = 0.0
    """Fraction of nodes that are malicious (the last ``round(fraction x num_nodes)`` nodes)."""
    attack: str = "out_of_context"
    """The malicious nodes' attack (:func:`farsync.rl.poison.load_poison` spec)."""
    attack_params: dict[str, Any] = field(default_factory=dict)
    """Keyword parameters of the attack's factory."""
    trigger: str = "zz"
    """Text whose presence in an honest node's greedy output counts as the attack's success."""
    defences: list[str] = field(default_factory=list)
    """Honest nodes' defences in order (:data:`farsync.rl.defences.DEFENCES`)."""
    min_logprob: float = -7.0
    """``logprob_filter``: lowest receiver log-probability a shared token may have."""
    judge: str = "answer_format"
    """``judge``: the built-in rule judge or ``"package.module:function"``."""
    limits: SwarmLimits = field(default_factory=SwarmLimits)
    """What a node accepts from a peer."""
    max_strikes: int = 3
    """Rejected messages after which a sender is banned."""
    transport: Literal["memory", "directory"] = "memory"
    """Channels in memory, or files in ``run_dir/swarm`` (needs a run directory)."""
    seed: int = 0
    """Seed of the nodes' initial weights (when none are given) and sampling."""

    def validate(self) -> None:
        """Raises ``ValueError`` naming the first bad setting and what is allowed."""
        checks = [
            (self.num_nodes >= 1, "num_nodes", "must be >= 1"),
            (self.num_rounds >= 1, "num_rounds", "must be >= 1"),
            (self.num_local_groups >= 1, "num_local_groups", "must be >= 1"),
            (self.num_shared_groups >= 0, "num_shared_groups", "must be >= 0"),
            (
                self.num_generated_groups == 0 or self.num_generated_groups >= self.num_local_groups,
                "num_generated_groups",
                "must be 0 (I + J) or >= num_local_groups",
            ),
            (
                2 <= self.group_size <= self.limits.max_group_size,
                "group_size",
                "must be in [2, limits.max_group_size]",
            ),
            (0.0 <= self.malicious_fraction < 1.0, "malicious_fraction", "must be in [0, 1)"),
            (self.lr > 0 and self.temperature > 0, "lr", "lr and temperature must be > 0"),
            (len(self.node_shapes) in (0, self.num_nodes), "node_shapes", "needs one shape per node or none"),
            (len(self.join_rounds) in (0, self.num_nodes), "join_rounds", "needs one round per node or none"),
            (
                len(self.leave_rounds) in (0, self.num_nodes),
                "leave_rounds",
                "needs one round per node or none",
            ),
            (self.transport in ("memory", "directory"), "transport", "allowed: memory, directory"),
        ]
        for ok, key, allowed in checks:
            if not ok:
                raise ValueError(f"swarm.{key} = {getattr(self, key)!r}: {allowed}")


def _channels(
    settings: SwarmSettings, ids: list[str], run_dir: Path | None
) -> dict[tuple[str, str], RolloutChannel]:
    if settings.transport == "directory" and run_dir is None:
        raise ValueError("swarm.transport = 'directory' needs a run directory")
    channels: dict[tuple[str, str], RolloutChannel] = {}
    for receiver in ids:
        for sender in ids:
            if receiver == sender:
                continue
            if settings.transport == "directory" and run_dir is not None:
                path = run_dir / "swarm" / receiver / f"from-{sender}"
                channels[(receiver, sender)] = DirectoryRolloutChannel(
                    path, max_message_bytes=settings.limits.max_message_bytes
                )
            else:
                channels[(receiver, sender)] = InProcessRolloutChannel()
    return channels


def _build_nodes(
    settings: SwarmSettings,
    initial_state: dict[str, torch.Tensor] | None,
    node_states: Sequence[dict[str, torch.Tensor] | None] = (),
) -> list[SwarmNode]:
    if node_states and len(node_states) != settings.num_nodes:
        raise ValueError(
            f"node_states has {len(node_states)} states: needs one per node ({settings.num_nodes}) or none"
        )
    task = make_task(settings.task, seed=settings.task_seed, num_heldout=settings.num_heldout)
    reward = answer_reward(task.reward, settings.commentary_separator)
    num_malicious = round(settings.malicious_fraction * settings.num_nodes)
    vocab = {"vocab_size": task_vocab_size()}
    nodes = []
    for index in range(settings.num_nodes):
        shape = {
            **settings.model_shape,
            **(settings.node_shapes[index] if settings.node_shapes else {}),
            **vocab,
        }
        malicious = index >= settings.num_nodes - num_malicious
        node_settings = NodeSettings(
            node_id=f"node{index}",
            node_index=index,
            num_nodes=settings.num_nodes,
            model_shape=shape,
            num_local_groups=settings.num_local_groups,
            num_shared_groups=settings.num_shared_groups,
            num_generated_groups=settings.num_generated_groups,
            group_size=settings.group_size,
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            lr=settings.lr,
            loss=settings.loss,
            max_strikes=settings.max_strikes,
            seed=settings.seed * 1000 + index,
        )
        own_shape = shape != {**settings.model_shape, **vocab}
        torch.manual_seed(settings.seed * 1000 + index)  # the weights of a node without an initial state
        state = None if own_shape else initial_state
        if node_states and node_states[index] is not None:
            state = node_states[index]
        defences = build_defences(
            settings.defences, task=settings.task, min_logprob=settings.min_logprob, judge=settings.judge
        )
        attack = load_poison(settings.attack, **settings.attack_params) if malicious else None
        nodes.append(
            SwarmNode(
                node_settings,
                task,
                reward,
                settings.limits,
                defences=[] if malicious else defences,
                attack=attack,
                initial_state=state,
            )
        )
    return nodes


def task_vocab_size() -> int:
    """The character tokenizer's vocabulary size (every shipped task uses it)."""
    return CharTokenizer().vocab_size


def _live(settings: SwarmSettings, index: int, round_index: int) -> bool:
    joined = settings.join_rounds[index] if settings.join_rounds else 0
    leaves = settings.leave_rounds[index] if settings.leave_rounds else -1
    return joined <= round_index and (leaves < 0 or round_index < leaves)


def _round(
    settings: SwarmSettings,
    nodes: list[SwarmNode],
    channels: dict[tuple[str, str], RolloutChannel],
    ledgers: dict[str, ByteLedger],
    round_index: int,
) -> None:
    live = [n for i, n in enumerate(nodes) if _live(settings, i, round_index)]
    local = {}
    for node in live:
        local[node.node_id] = node.sample_local()
        if settings.trigger and node.attack is None:
            texts = [
                node.tokenizer.decode(r.completion_ids) for _, g in local[node.node_id] for r in g.rollouts
            ]
            node.counters.local_trigger.append(sum(settings.trigger in t for t in texts) / max(len(texts), 1))
        if settings.num_shared_groups == 0:
            continue
        for message in node.outgoing(local[node.node_id], round_index):
            for peer in live:
                if peer is not node:
                    channels[(peer.node_id, node.node_id)].push(message, timeout_s=10.0)
                    ledgers[node.node_id].record_call("swarm", "share", len(message), len(message), 0.0)
    for node in live:
        if node.attack is not None:
            continue
        inbox: dict[str, list[bytes]] = {}
        if settings.num_shared_groups > 0:
            for peer in live:
                if peer is not node:
                    messages = channels[(node.node_id, peer.node_id)].pull(10_000, timeout_s=0.0)
                    inbox[peer.node_id] = messages
                    for message in messages:
                        ledgers[node.node_id].record_call("swarm", "receive", len(message), len(message), 0.0)
        shared = node.receive(inbox)
        node.train(local[node.node_id], shared)


def _evaluate(settings: SwarmSettings, node: SwarmNode) -> dict[str, Any]:
    texts = greedy_completions(node.model, node.task.heldout, settings.max_new_tokens)
    problems = node.task.heldout
    strict = sum(
        safe_reward(node.task.reward, p.prompt, t)[0] >= 1 for p, t in zip(problems, texts, strict=True)
    )
    answered = sum(
        safe_reward(node.reward, p.prompt, t)[0] >= 1 for p, t in zip(problems, texts, strict=True)
    )
    triggered = sum(settings.trigger in t for t in texts) if settings.trigger else 0
    count = max(len(problems), 1)
    return {
        "pass_at_1": strict / count,
        "answer_pass_at_1": answered / count,
        "trigger_rate": triggered / count,
    }


def run_swarm(
    settings: SwarmSettings,
    *,
    initial_state: dict[str, torch.Tensor] | None = None,
    node_states: Sequence[dict[str, torch.Tensor] | None] = (),
    run_dir: Path | None = None,
    on_round: Callable[[int, list[SwarmNode]], None] | None = None,
) -> dict[str, Any]:
    """Runs the swarm for ``settings.num_rounds`` rounds; returns its summary (per node: held-out pass@1,
    the trigger rate of its greedy outputs, cumulative local reward, what it rejected and its defences
    dropped, bytes shared and received). ``initial_state`` is every node's starting policy (nodes of another
    shape, or all nodes when it is ``None``, start from fresh weights); ``node_states`` (one per node, ``None``
    for "as ``initial_state``") gives nodes their own starting policies (a swarm of unequal nodes).
    ``on_round(round_index, nodes)`` is called after every round (the CLI's progress and metrics.jsonl)."""
    settings.validate()
    begin = time.perf_counter()
    nodes = _build_nodes(settings, initial_state, node_states)
    ids = [n.node_id for n in nodes]
    channels = _channels(settings, ids, run_dir)
    ledgers = {node_id: ByteLedger(rank=i) for i, node_id in enumerate(ids)}
    for round_index in range(settings.num_rounds):
        _round(settings, nodes, channels, ledgers, round_index)
        if on_round is not None:
            on_round(round_index, nodes)
    per_node = []
    for node in nodes:
        row: dict[str, Any] = {"node": node.node_id, "malicious": node.attack is not None}
        row["num_params"] = sum(p.numel() for p in node.model.parameters())
        row["rounds_trained"] = len(node.counters.local_rewards)
        row.update(node.counters.as_dict())
        row["reward_by_round"] = list(node.counters.local_rewards)
        row["defences"] = node.defence_log.as_dict()
        row["ledger"] = ledgers[node.node_id].to_dict()
        row["bytes_shared"] = sum(
            e.bytes_sent for (ch, op), e in ledgers[node.node_id].entries.items() if op == "share"
        )
        row["bytes_received"] = sum(
            e.bytes_sent for (ch, op), e in ledgers[node.node_id].entries.items() if op == "receive"
        )
        if node.attack is None:
            row.update(_evaluate(settings, node))
        per_node.append(row)
    honest = [r for r in per_node if not r["malicious"]]
    summary: dict[str, Any] = {"nodes": per_node, "wall_s": time.perf_counter() - begin}
    keys = (
        "pass_at_1",
        "answer_pass_at_1",
        "trigger_rate",
        "sampled_trigger_rate_last5",
        "cumulative_local_reward",
        "tied_local",
        "local_used",
        "tied_shared",
        "shared_used",
    )
    for key in keys:
        values = [float(r[key]) for r in honest]
        summary[f"mean_{key}"] = sum(values) / len(values) if values else math.nan
    summary["bytes_total"] = sum(r["bytes_shared"] for r in per_node)
    return summary
