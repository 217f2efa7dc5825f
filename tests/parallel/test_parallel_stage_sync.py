"""The grid, the schedules, and the stage sync groups: a stage averages only its own layers, with the same
stage of the other replicas, and sends only those layers' bytes over the slow link."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import pytest
import torch

from farsync.algorithms.diloco import DiLoCo
from farsync.comm.communicator import Communicator
from farsync.comm.cost import Collective, wire_bytes
from farsync.comm.groups import open_store
from farsync.config import AlgorithmConfig
from farsync.models import GPT, GPTConfig, gpt_stage
from farsync.parallel import Mesh, build_mesh_groups, schedule_actions
from farsync.train.task import MODEL_INIT_LOCK

if TYPE_CHECKING:
    from torch._C._distributed_c10d import Store


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


T = TypeVar("T")


def _run_grid(world_size: int, fn: Callable[[int, Store], T]) -> list[T]:
    """Runs ``fn(rank, store)`` on ``world_size`` threads sharing one TCPStore; re-raises the first error."""
    master = open_store("127.0.0.1", 0, world_size, is_master=True, timeout_s=30)
    results: dict[int, T] = {}
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
    return [results[rank] for rank in range(world_size)]


@dataclass
class StageOutcome:
    start: dict[str, torch.Tensor]
    after: dict[str, torch.Tensor]
    sync_bytes: int
    numel: int


def test_stage_groups_average_only_their_own_layers() -> None:
    # Prepare: 2 replicas x 2 stages of one GPT; replica i moves every weight of its stage by (i + 1) * 0.01.
    mesh = Mesh(num_replicas=2, num_stages=2)
    config = AlgorithmConfig(outer_lr=0.7, outer_momentum=0.9, nesterov=True)

    def fn(rank: int, store: Store) -> StageOutcome:
        replica, stage = mesh.coordinate(rank)
        groups = build_mesh_groups(store, "sync-test", mesh, rank, timeout_s=30)
        with MODEL_INIT_LOCK:  # threads share torch's global RNG
            torch.manual_seed(0)
            model = GPT(GPTConfig(num_layers=2, width=16, num_heads=2, context_length=8))
        module = gpt_stage(model, stage, 2)
        comm = Communicator(groups.sync, replica, 2)
        diloco = DiLoCo(module, torch.optim.SGD(module.parameters(), lr=0.0), comm, config)
        start = {n: p.detach().clone() for n, p in module.named_parameters()}
        with torch.no_grad():
            for param in module.parameters():
                param.add_(0.01 * (replica + 1))
        # Execute: one outer round over the stage's sync group.
        diloco.outer_round()
        after = {n: p.detach().clone() for n, p in module.named_parameters()}
        numel = sum(p.numel() for p in module.parameters())
        return StageOutcome(start, after, comm.ledger.bytes_sent("sync"), numel)

    results = _run_grid(4, fn)

    # Assert: the stages hold different layers (embedding on the first, head on the last) ...
    first, last = set(results[0].start), set(results[1].start)
    assert any(n.startswith("embed.") for n in first) and not any(n.startswith("head.") for n in first)
    assert any(n.startswith("head.") for n in last) and not any(n.startswith("embed.") for n in last)
    # Stage-local "blocks.0" is the model's block 0 on stage 0 and its block 1 on stage 1: different layers.
    name = "blocks.0.attn.qkv.weight"
    assert not torch.equal(results[0].start[name], results[1].start[name])
    # ... each stage's replicas agree on the Nesterov step of their mean pseudo-gradient ...
    mean_pseudo_gradient = -0.015  # theta_global - theta_i averaged over replicas: -(0.01 + 0.02) / 2
    for rank, result in enumerate(results):
        replica, stage = mesh.coordinate(rank)
        peer = results[mesh.rank_of(1 - replica, stage)]
        for name, value in result.after.items():
            expected = result.start[name] - 0.7 * (1 + 0.9) * mean_pseudo_gradient
            torch.testing.assert_close(value, expected, rtol=0, atol=1e-6)
            assert torch.equal(value, peer.after[name])
        # ... and only this stage's parameters (plus the weight element) crossed the slow link.
        assert result.sync_bytes == wire_bytes(Collective.ALL_REDUCE, 4 * (result.numel + 1), 2)
