"""Swarm mode: a node's intake of peers' messages, the importance ratio of shared groups, and tiny end-to-end
swarms (malformed and oversized senders, late join and leave, mixed model sizes, both transports)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from farsync.rl.defences import RewardCheck
from farsync.rl.grpo import LossConfig
from farsync.rl.intake import ScoredGroup
from farsync.rl.poison import in_context
from farsync.rl.swarm import SwarmSettings, _build_nodes, run_swarm, task_vocab_size
from farsync.rl.swarm_messages import SharedGroup, SwarmLimits, encode_group
from farsync.rl.swarm_node import NodeSettings, SwarmNode, answer_reward
from farsync.rl.tasks import Problem, make_task

SHAPE = {"num_layers": 1, "width": 16, "num_heads": 2, "context_length": 16}


def _node(node_id: str = "me", **overrides: object) -> SwarmNode:
    task = make_task("arithmetic", seed=0, num_heldout=8)
    settings = NodeSettings(
        node_id=node_id,
        node_index=0,
        num_nodes=2,
        model_shape={**SHAPE, "vocab_size": task_vocab_size()},
        num_local_groups=1,
        num_shared_groups=4,
        group_size=2,
        max_new_tokens=4,
        temperature=1.0,
        lr=1e-3,
        loss=LossConfig(),
        max_strikes=2,
    )
    for key, value in overrides.items():
        setattr(settings, key, value)
    torch.manual_seed(0)
    return SwarmNode(settings, task, answer_reward(task.reward), SwarmLimits())


def _message(sender: str = "peer", completions: tuple[str, ...] = ("95", "93"), **changes: object) -> bytes:
    task = make_task("arithmetic", seed=0, num_heldout=8)
    problem = task.train_problem(1)
    answer = problem.answer
    fields: dict[str, object] = {
        "node_id": sender,
        "round": 0,
        "task_id": problem.task_id,
        "prompt": problem.prompt,
        "completions": tuple(c.replace("95", answer) for c in completions),
        "rewards": (1.0, 0.0),
    }
    fields.update(changes)
    return encode_group(SharedGroup(**fields))  # type: ignore[arg-type]


def test_receive_rejects_bad_messages_by_reason_and_bans_the_sender() -> None:
    node = _node(max_strikes=4)
    inbox = {
        "peer": [_message(), b"{not json", _message(sender="someone_else")],
        "other": [
            _message(sender="other", prompt="1+1="),
            _message(sender="other", task_id="chess/train/1"),
            _message(sender="other", completions=("95", "9!")),
            _message(sender="other", completions=("95", "93", "94"), rewards=(1.0, 0.0, 0.0)),
        ],
    }
    shared = node.receive(inbox)
    assert len(shared) == 1
    assert dict(node.counters.rejected) == {
        "json": 1,
        "impersonation": 1,
        "prompt_mismatch": 1,
        "unknown_task": 1,
        "alphabet": 1,
        "group_size": 1,
    }
    assert node.counters.banned == {"other"}
    node.receive({"peer": [b"", b"[]", _message(), _message()]})
    assert node.counters.banned == {"other", "peer"}
    assert node.counters.ignored_from_banned == 2


def test_receive_trusts_claims_without_the_reward_check_and_drops_lies_with_it() -> None:
    lie = _message(completions=("96", "93"), rewards=(1.0, 0.0))  # 96 is wrong: reward 0 recomputed
    naive = _node()
    (group,) = naive.receive({"peer": [lie]})
    assert group.rewards == [1.0, 0.0]
    checked = _node()
    checked.defences = [RewardCheck()]
    assert checked.receive({"peer": [lie]}) == []
    assert checked.defence_log.dropped == {"reward_check": 1}


def test_shared_groups_train_at_importance_ratio_one() -> None:
    node = _node()
    shared = node.receive({"peer": [_message()]})
    assert len(shared) == 1
    report = node.trainer.step(shared)
    assert report is not None
    assert report.mean_ratio == pytest.approx(1.0, abs=1e-5)
    assert report.logprob_mismatch == pytest.approx(0.0, abs=1e-5)


def _settings(**changes: object) -> SwarmSettings:
    base = SwarmSettings(
        num_nodes=4,
        num_rounds=2,
        num_local_groups=1,
        num_shared_groups=2,
        group_size=4,
        max_new_tokens=5,
        num_heldout=8,
        model_shape=SHAPE,
        max_strikes=2,
    )
    for key, value in changes.items():
        setattr(base, key, value)
    return base


@pytest.mark.parametrize("transport", ["memory", "directory"])
def test_tiny_swarm_survives_malformed_and_oversized_senders(transport: str, tmp_path: Path) -> None:
    summary = run_swarm(
        _settings(
            transport=transport,
            malicious_fraction=0.5,
            attack="oversized",
            attack_params={"num_bytes": 100_000},
            num_rounds=3,
        ),
        run_dir=tmp_path,
    )
    honest = [n for n in summary["nodes"] if not n["malicious"]]
    assert [n["rounds_trained"] for n in honest] == [3, 3]
    for node in honest:
        # Each node shares I + J = 3 groups a round. Round 1: each malicious peer's first 2 messages rejected
        # (size), banned after 2, its third ignored unread; rounds 2-3: 3 more each ignored.
        assert node["rejected"] == {"size": 4}
        assert node["banned"] == ["node2", "node3"]
        assert node["ignored_from_banned"] == 2 * (1 + 3 + 3)
    json.dumps(summary)


@pytest.mark.parametrize("kind", ["garbage", "missing_key", "bad_type", "nan"])
def test_tiny_swarm_rejects_logs_and_bans_a_malformed_sender(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="farsync.rl.swarm_node")
    summary = run_swarm(
        _settings(
            malicious_fraction=0.25,
            attack="malformed",
            attack_params={"kind": kind},
            num_rounds=3,
            num_generated_groups=1,  # one message a round per sender
        )
    )
    honest = [n for n in summary["nodes"] if not n["malicious"]]
    assert [n["rounds_trained"] for n in honest] == [3, 3, 3]
    reason = {"garbage": "json", "missing_key": "keys", "bad_type": "type", "nan": "json"}[kind]
    for node in honest:
        # Rounds 1-2: node3's one message a round rejected; banned at the second (max_strikes 2); round 3 unread.
        assert node["rejected"] == {reason: 2}
        assert node["banned"] == ["node3"]
        assert node["ignored_from_banned"] == 1
        assert f"node {node['node']} rejected a message from node node3 ({reason})" in caplog.text
        assert f"node {node['node']} banned node node3 after 2 rejected messages" in caplog.text


def test_ledger_counts_every_byte_shared_and_received() -> None:
    summary = run_swarm(_settings())
    nodes = summary["nodes"]
    shared = sum(n["bytes_shared"] for n in nodes)
    received = sum(n["bytes_received"] for n in nodes)
    assert shared == received > 0
    # 4 nodes x 2 rounds x (I + J = 3 groups), each copy sent to 3 peers.
    assert sum(n["ledger"]["entries"]["swarm/share"]["calls"] for n in nodes) == 4 * 2 * 3 * 3
    assert summary["bytes_total"] == shared
    # A batch set apart from I + J: 2 groups a round each.
    wide = run_swarm(_settings(num_generated_groups=2))["nodes"]
    assert sum(n["ledger"]["entries"]["swarm/share"]["calls"] for n in wide) == 4 * 2 * 2 * 3


def test_no_sharing_sends_nothing() -> None:
    summary = run_swarm(_settings(num_shared_groups=0, num_local_groups=2))
    assert summary["bytes_total"] == 0
    assert all(n["shared_used"] == 0 for n in summary["nodes"])


def test_late_join_leave_and_mixed_model_sizes() -> None:
    small, large = dict(SHAPE), {**SHAPE, "width": 32}
    summary = run_swarm(
        _settings(
            num_rounds=3,
            join_rounds=[0, 0, 1, 0],
            leave_rounds=[-1, 1, -1, -1],
            node_shapes=[small, small, large, large],
        )
    )
    nodes = {n["node"]: n for n in summary["nodes"]}
    assert [nodes[f"node{i}"]["rounds_trained"] for i in range(4)] == [3, 1, 2, 3]
    for node in nodes.values():
        assert len(node["reward_by_round"]) == node["rounds_trained"]
        assert sum(node["reward_by_round"]) == pytest.approx(node["cumulative_local_reward"])
    assert nodes["node2"]["num_params"] > nodes["node0"]["num_params"]
    # node1 left after round 0 (node2 not yet there): 2 peers once; node2 joined at round 1: 2 rounds x 2 peers;
    # 3 groups (I + J) from each peer each round.
    assert nodes["node1"]["received"] == 2 * 3
    assert nodes["node2"]["received"] == 4 * 3


def test_invalid_settings_name_the_key() -> None:
    with pytest.raises(ValueError, match="swarm.malicious_fraction"):
        run_swarm(_settings(malicious_fraction=1.0))
    with pytest.raises(ValueError, match="swarm.join_rounds"):
        run_swarm(_settings(join_rounds=[0]))
    with pytest.raises(ValueError, match="needs a run directory"):
        run_swarm(_settings(transport="directory"))


def test_in_context_attack_is_dropped_by_the_reward_check_in_a_swarm() -> None:
    summary = run_swarm(
        _settings(malicious_fraction=0.25, attack="in_context", defences=["reward_check"], num_rounds=2)
    )
    honest = [n for n in summary["nodes"] if not n["malicious"]]
    for node in honest:
        assert node["defences"]["dropped_by_sender"].get("node3") == 2 * 3  # 2 rounds x (I + J) groups
    assert callable(in_context())


def test_a_node_samples_and_shares_its_whole_batch_as_sapo_equal_compute() -> None:
    """SAPO's equal compute: a node samples and shares I + J groups (or ``num_generated_groups``), not I."""
    node = _node(num_local_groups=1, num_shared_groups=2)
    local = node.sample_local()
    assert len(local) == 3 and len(node.outgoing(local, 0)) == 3
    assert [p.task_id for p, _ in local] == [f"arithmetic/train/{i}" for i in (0, 2, 4)]  # index + 2 x k
    ours = _node(num_local_groups=1, num_shared_groups=2, num_generated_groups=1)
    assert len(ours.sample_local()) == 1
    wide = _node(num_local_groups=1, num_shared_groups=2, num_generated_groups=5)
    assert len(wide.sample_local()) == 5


def _with_rewards(node: SwarmNode, rewards: list[list[float]]) -> list[tuple[Problem, ScoredGroup]]:
    """The node's own batch with hand-set rewards (one list per group)."""
    batch = node.sample_local()[: len(rewards)]
    return [
        (problem, ScoredGroup(group.rollouts, r)) for (problem, group), r in zip(batch, rewards, strict=True)
    ]


def test_train_draws_i_own_groups_drops_tied_ones_and_records_the_whole_batch_reward() -> None:
    node = _node(num_local_groups=2, num_shared_groups=2)  # batch of 4 groups of 2
    local = _with_rewards(node, [[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    stepped: list[list[ScoredGroup]] = []
    node.trainer.step = lambda groups: stepped.append(groups)  # type: ignore[method-assign,assignment,return-value]
    node.train(local, [])
    # The round's reward is the mean over the whole batch of 8 samples (5 of 8 correct); no two groups drawn
    # have that mean (0.25, 0.5, 0.75 or 1).
    assert node.counters.local_rewards == [0.625]
    (groups,) = stepped
    drawn = node.counters.local_used + node.counters.tied_local
    assert drawn == 2 and len(groups) == node.counters.local_used
    assert all(len(set(g.rewards)) == 2 for g in groups)  # the tied groups are left out
    assert groups == [g for _, g in local if g in groups]  # in batch order
    batch_ids = [id(g) for _, g in local]
    assert len({id(g) for g in groups}) == len(groups) and all(id(g) in batch_ids for g in groups)
    # Over many draws every own group is drawn, about equally often (uniform), never more than I per step.
    counts = [0, 0, 0, 0]
    for _ in range(400):
        chosen = node.choose_local(local)
        assert len(chosen) == 2 and len({id(g) for g in chosen}) == 2
        for group in chosen:
            counts[batch_ids.index(id(group))] += 1
    assert all(150 < c < 250 for c in counts)


def test_train_uses_the_whole_batch_when_it_is_no_larger_than_i() -> None:
    node = _node(num_local_groups=2, num_shared_groups=0)
    local = _with_rewards(node, [[1.0, 0.0], [0.0, 1.0]])
    assert node.choose_local(local) == [g for _, g in local]


def test_receive_drops_tied_shared_groups_and_draws_j_of_the_rest() -> None:
    node = _node(num_shared_groups=2)
    tied = _message(completions=("93", "94"), rewards=(0.0, 0.0))
    inbox = {"peer": [_message(), tied, _message()], "other": [_message(sender="other")]}
    shared = node.receive(inbox)
    assert len(shared) == 2 and node.counters.shared_used == 2
    assert node.counters.tied_shared == 1
    assert all(g.rewards == [1.0, 0.0] for g in shared)
    assert len(_node(num_shared_groups=5).receive(inbox)) == 3  # fewer untied than J: all of them
    # The J are drawn uniformly among the untied groups: over many rounds each of three distinct ones is drawn.
    distinct = {"peer": [_message(completions=("95", wrong)) for wrong in ("93", "92", "91")]}
    seen: dict[tuple[int, ...], int] = {}
    for _ in range(60):
        for group in node.receive(distinct):
            key = tuple(group.rollouts[1].completion_ids)
            seen[key] = seen.get(key, 0) + 1
    assert len(seen) == 3 and min(seen.values()) > 20


def test_generated_groups_below_i_is_rejected() -> None:
    with pytest.raises(ValueError, match="swarm.num_generated_groups"):
        run_swarm(_settings(num_local_groups=2, num_generated_groups=1))


def test_node_states_give_nodes_their_own_starting_weights() -> None:
    settings = _settings()
    settings.model_shape = {**SHAPE, "vocab_size": task_vocab_size()}
    shared = {k: torch.zeros_like(v) for k, v in _node().model.state_dict().items()}
    own = {k: torch.full_like(v, 0.5) for k, v in shared.items()}
    nodes = _build_nodes(settings, shared, [None, own, None, None])
    firsts = [float(next(iter(n.model.state_dict().values())).flatten()[0]) for n in nodes]
    assert firsts == [0.0, 0.5, 0.0, 0.0]
    with pytest.raises(ValueError, match="node_states has 2 states"):
        _build_nodes(settings, shared, [own, own])
