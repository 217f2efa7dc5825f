"""The grid, the schedules, and the stage sync groups: a stage averages only its own layers, with the same
stage of the other replicas, and sends only those layers' bytes over the slow link."""

from __future__ import annotations

import threading

import pytest
import torch

from farsync.algorithms.diloco import DiLoCo
from farsync.comm.communicator import Communicator
from farsync.comm.cost import Collective, wire_bytes
from farsync.comm.groups import open_store
from farsync.config import AlgorithmConfig
from farsync.models import GPT, GPTConfig, gpt_stage
from farsync.parallel import Mesh, build_mesh_groups, schedule_actions
from farsync.task import MODEL_INIT_LOCK


def test_mesh_places_rank_at_replica_and_stage() -> None:
    mesh = Mesh.for_world(6, 3)

    assert (mesh.num_replicas, mesh.num_stages) == (2, 3)
    assert [mesh.coordinate(r) for r in range(6)] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert mesh.pipeline_members(1) == [3, 4, 5]
    assert mesh.sync_members(2) == [2, 5]
    with pytest.raises(ValueError, match="parallel.num_stages"):
        Mesh.for_world(5, 2)


def test_schedules_order_forwards_and_backwards() -> None:
    # 1F1B with S = 2, M = 3: stage 0 warms up with one forward, stage 1 (last) alternates at once.
    assert schedule_actions("1f1b", 0, 2, 3) == [
        ("forward", 0),
        ("forward", 1),
        ("backward", 0),
        ("forward", 2),
        ("backward", 1),
        ("backward", 2),
    ]
    assert schedule_actions("1f1b", 1, 2, 3) == [
        ("forward", 0),
        ("backward", 0),
        ("forward", 1),
        ("backward", 1),
        ("forward", 2),
        ("backward", 2),
    ]
    assert schedule_actions("gpipe", 0, 2, 2) == [
        ("forward", 0),
        ("forward", 1),
        ("backward", 0),
        ("backward", 1),
    ]
    # Fewer microbatches than warm-up slots: every forward first, then every backward.
    assert schedule_actions("1f1b", 0, 4, 2) == schedule_actions("gpipe", 0, 4, 2)


def _run_grid(world_size: int, fn):  # type: ignore[no-untyped-def]
    master = open_store("127.0.0.1", 0, world_size, is_master=True, timeout_s=30)
    results: list[object] = [None] * world_size
    errors: list[BaseException] = []

    def target(rank: int) -> None:
        try:
            store = master if rank == 0 else open_store("127.0.0.1", master.port, world_size, False, 30)
            results[rank] = fn(rank, store)
        except BaseException as error:  # noqa: BLE001 - re-raised below
            errors.append(error)

    threads = [threading.Thread(target=target, args=(r,), daemon=True) for r in range(world_size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    if errors:
        raise errors[0]
    return results


def test_stage_groups_average_only_their_own_layers() -> None:
    # Prepare: 2 replicas x 2 stages of one GPT; replica i moves every weight of its stage by (i + 1) * 0.01.
    mesh = Mesh(num_replicas=2, num_stages=2)
    config = AlgorithmConfig(outer_lr=0.7, outer_momentum=0.9, nesterov=True)

    def fn(rank: int, store: object) -> dict[str, object]:
        replica, stage = mesh.coordinate(rank)
        groups = build_mesh_groups(store, "sync-test", mesh, rank, timeout_s=30)  # type: ignore[arg-type]
        with MODEL_INIT_LOCK:  # threads share torch's global RNG
            torch.manual_seed(0)
            model = GPT(GPTConfig(num_layers=2, width=16, num_heads=2, context_length=8))
        module = gpt_stage(model, stage, 2)
        comm = Communicator(groups.sync, replica, 2)
        optimizer = torch.optim.SGD(module.parameters(), lr=0.0)
        diloco = DiLoCo(module, optimizer, comm, config)
        start = {n: p.detach().clone() for n, p in module.named_parameters()}
        with torch.no_grad():
            for param in module.parameters():
                param.add_(0.01 * (replica + 1))
        # Execute: one outer round over the stage's sync group.
        diloco.outer_round()
        return {
            "names": sorted(start),
            "start": start,
            "after": {n: p.detach().clone() for n, p in module.named_parameters()},
            "sync_bytes": comm.ledger.bytes_sent("sync"),
            "numel": sum(p.numel() for p in module.parameters()),
        }

    results = _run_grid(4, fn)

    # Assert: the stages hold disjoint layers; each stage's replicas agree on the Nesterov step of the mean.
    stage0, stage1 = results[0], results[1]
    assert any(n.startswith("embed.") for n in stage0["names"]) and not any(
        n.startswith("head.") for n in stage0["names"]
    )  # type: ignore[union-attr]
    assert any(n.startswith("head.") for n in stage1["names"]) and not any(
        n.startswith("embed.") for n in stage1["names"]
    )  # type: ignore[union-attr]
    # Stage-local "blocks.0" is the model's block 0 on stage 0 and its block 1 on stage 1: different layers.
    name = "blocks.0.attn.qkv.weight"
    assert not torch.equal(stage0["start"][name], stage1["start"][name])  # type: ignore[index]
    mean_pseudo_gradient = -0.015  # theta_global - theta_i averaged over replicas: -(0.01 + 0.02) / 2
    for rank, result in enumerate(results):
        peer = results[mesh.rank_of(1 - mesh.coordinate(rank)[0], mesh.coordinate(rank)[1])]
        for name, value in result["after"].items():  # type: ignore[union-attr]
            expected = result["start"][name] - 0.7 * (1 + 0.9) * mean_pseudo_gradient  # type: ignore[index]
            torch.testing.assert_close(value, expected, rtol=0, atol=1e-6)
            assert torch.equal(value, peer["after"][name])  # type: ignore[index]
        # Only this stage's parameters (plus the weight element) crossed the slow link.
        payload = 4 * (int(result["numel"]) + 1)  # type: ignore[call-overload]
        assert result["sync_bytes"] == wire_bytes(Collective.ALL_REDUCE, payload, 2)
