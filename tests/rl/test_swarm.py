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
from farsync.rl.poison import in_context
from farsync.rl.swarm import SwarmSettings, run_swarm, task_vocab_size
from farsync.rl.swarm_messages import SharedGroup, SwarmLimits, encode_group
from farsync.rl.swarm_node import NodeSettings, SwarmNode, answer_reward
from farsync.rl.tasks import make_task

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
        # Rounds 1-2: each malicious peer's message rejected (size); banned after 2; round 3 ignored unread.
        assert node["rejected"] == {"size": 4}
        assert node["banned"] == ["node2", "node3"]
        assert node["ignored_from_banned"] == 2
    json.dumps(summary)


@pytest.mark.parametrize("kind", ["garbage", "missing_key", "bad_type", "nan"])
def test_tiny_swarm_rejects_logs_and_bans_a_malformed_sender(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="farsync.rl.swarm_node")
    summary = run_swarm(
        _settings(malicious_fraction=0.25, attack="malformed", attack_params={"kind": kind}, num_rounds=3)
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
    # 4 nodes x 2 rounds x 1 group, each copy sent to 3 peers.
    assert sum(n["ledger"]["entries"]["swarm/share"]["calls"] for n in nodes) == 4 * 2 * 3
    assert summary["bytes_total"] == shared


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
    assert nodes["node2"]["num_params"] > nodes["node0"]["num_params"]
    # node1 left after round 0 (node2 not yet there): 2 peers once; node2 joined at round 1: 2 rounds x 2 peers.
    assert nodes["node1"]["received"] == 2
    assert nodes["node2"]["received"] == 4


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
        assert node["defences"]["dropped_by_sender"].get("node3") == 2
    assert callable(in_context())
