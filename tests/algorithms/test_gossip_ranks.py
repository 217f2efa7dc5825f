"""Gossip on 4 real gloo ranks (threads): pure mixing reaches the mean; decentralised SGD on a quadratic
keeps the average iterate on the centralised path, and the final merge lands every rank on the optimum."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from farsync.algorithms.gossip import Gossip, mix_interval
from farsync.comm.communicator import Communicator
from farsync.comm.ledger import ByteLedger
from farsync.config import GossipConfig, load_config
from farsync.sim.ranks import run_ranks

WORLD = 4


class Point(nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.x = nn.Parameter(value.clone())


def _gossip(rank: int, group: Any, model: nn.Module, overrides: list[str]) -> Gossip:
    config = load_config(None, [f"num_workers={WORLD}", "algorithm.name=gossip", *overrides])
    comm = Communicator(group, rank, WORLD, ledger=ByteLedger(rank=rank))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return Gossip(
        model,
        optimizer,
        comm,
        config.gossip,
        num_steps=config.train.num_steps,
        seed=config.seed,
        report_every=config.train.report_every,
    )


@pytest.mark.parametrize("topology", ["ring", "torus", "exponential", "random_regular"])
def test_mixing_reaches_the_mean(topology: str) -> None:
    starts = torch.arange(WORLD * 3, dtype=torch.float32).reshape(WORLD, 3) ** 2

    def fn(rank: int, world: int, group: Any, store: Any) -> tuple[torch.Tensor, int]:
        model = Point(starts[rank])
        gossip = _gossip(rank, group, model, [f"gossip.topology={topology}", "gossip.degree=2"])
        for _ in range(40):
            gossip.mix()
        return model.x.detach().clone(), gossip.comm.ledger.bytes_sent()

    results = run_ranks(fn, WORLD, prefix=f"mix-{topology}")
    for value, bytes_sent in results:
        torch.testing.assert_close(value, starts.mean(0), atol=1e-4, rtol=0)
        degree = 3 if topology == "exponential" else 2  # exponential on 4: i +- 1 and i + 2
        assert bytes_sent == 40 * degree * 3 * 4  # mixings x neighbours x 3 floats x 4 bytes


def test_decentralised_sgd_on_a_quadratic_and_final_merge() -> None:
    targets = torch.tensor([[4.0, -1.0], [0.0, 3.0], [-2.0, 5.0], [6.0, 1.0]])
    optimum = targets.mean(0)

    def fn(rank: int, world: int, group: Any, store: Any) -> dict[str, Any]:
        model = Point(torch.zeros(2))
        gossip = _gossip(
            rank, group, model, ["gossip.comm_every=2", "train.report_every=10", "train.num_steps=200"]
        )
        with gossip:
            for _ in range(200):
                loss = 0.5 * ((model.x - targets[rank]) ** 2).sum()
                loss.backward()
                gossip.optimizer.step()
                gossip.optimizer.zero_grad()
            before_merge = model.x.detach().clone()
            metrics = gossip.metrics()
        return {
            "before": before_merge,
            "after": model.x.detach().clone(),
            "metrics": metrics,
            "final": gossip.final_metrics(),
        }

    results = run_ranks(fn, WORLD, prefix="quadratic")
    average = torch.stack([r["before"] for r in results]).mean(0)
    torch.testing.assert_close(average, optimum, atol=1e-3, rtol=0)
    # Each rank is pulled towards its own target, so the local models still disagree before the merge.
    assert results[0]["final"]["consensus_distance_before_merge"] > 0.1
    for result in results:
        torch.testing.assert_close(result["after"], optimum, atol=1e-3, rtol=0)
        assert result["metrics"]["num_mixings"] == 100


def test_late_schedule_halves_the_interval() -> None:
    gossip = GossipConfig(comm_every=4, late_schedule=True)
    assert [mix_interval(gossip, s, 100) for s in (0, 49, 50, 99)] == [4, 4, 2, 2]
    assert mix_interval(GossipConfig(comm_every=4), 99, 100) == 4


class SumTask:
    """A stand-in task whose "evaluation" is the sum of the point's coordinates (linear, so means commute)."""

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {"eval_loss": float(model.x.detach().sum())}


def test_no_merge_keeps_local_models_and_reports_local_vs_merged() -> None:
    targets = torch.tensor([[4.0, -1.0], [0.0, 3.0], [-2.0, 5.0], [6.0, 1.0]])

    def fn(rank: int, world: int, group: Any, store: Any) -> dict[str, Any]:
        model = Point(torch.zeros(2))
        config = load_config(
            None,
            [
                f"num_workers={WORLD}",
                "algorithm.name=gossip",
                "gossip.final_merge=false",
                "gossip.mix_optimizer_state=true",
                "train.num_steps=30",
                "train.report_every=10",
            ],
        )
        comm = Communicator(group, rank, WORLD, ledger=ByteLedger(rank=rank))
        optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
        gossip = Gossip(
            model,
            optimizer,
            comm,
            config.gossip,
            num_steps=config.train.num_steps,
            report_every=config.train.report_every,
            evaluate=SumTask().evaluate,
        )
        with gossip:
            for _ in range(30):
                (0.5 * ((model.x - targets[rank]) ** 2).sum()).backward()
                optimizer.step()
                optimizer.zero_grad()
        return {
            "x": model.x.detach().clone(),
            "final": gossip.final_metrics(),
            "bytes": comm.ledger.bytes_sent(),
        }

    results = run_ranks(fn, WORLD, prefix="nomerge")
    points = torch.stack([r["x"] for r in results])
    assert not torch.allclose(points[0], points[2])  # no merge: the workers keep their own models
    final = results[0]["final"]
    assert final["final_merge"] is False
    assert final["mean_local_eval_loss"] == pytest.approx(float(points.sum(1).mean()), abs=1e-5)
    assert final["merged_eval_loss"] == pytest.approx(float(points.mean(0).sum()), abs=1e-5)
    # Weights and both Adam moments (2 floats each) go to 2 neighbours at each of 30 mixings; no all-reduce.
    assert results[0]["bytes"] == 30 * 2 * 3 * 2 * 4
