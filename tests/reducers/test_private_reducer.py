"""The private reducer on 2 gloo ranks: clipping, uniform weights, local vs central noise, epsilon per round."""

from __future__ import annotations

from typing import Any

import torch

from farsync.comm.communicator import Communicator
from farsync.config import PrivacyConfig
from farsync.reducers.base import MeanReducer
from farsync.reducers.private import PrivateReducer, find_private_reducer
from farsync.sim.ranks import run_ranks

UPDATES = [torch.tensor([3.0, 4.0]), torch.tensor([0.0, 0.5])]  # norms 5 and 0.5
WEIGHTS = [10.0, 90.0]


def _reduce(mode: str, noise: float) -> list[dict[str, Any]]:
    def fn(rank: int, world: int, group: Any, store: Any) -> dict[str, Any]:
        comm = Communicator(group, rank, world)
        reducer = PrivateReducer(
            comm,
            MeanReducer(comm),
            PrivacyConfig(
                mode=mode,
                clip_norm=1.0,  # type: ignore[arg-type]
                noise_multiplier=noise,
            ),
            seed=5,
        )
        first = reducer({"w": UPDATES[rank]}, WEIGHTS[rank])["w"]
        second = reducer({"w": UPDATES[rank]}, WEIGHTS[rank])["w"]
        return {
            "first": first,
            "second": second,
            "epsilon": reducer.epsilon(),
            "found": find_private_reducer(reducer),
        }

    return run_ranks(fn, 2, prefix=f"private-{mode}-{noise}")


def test_clipped_uniform_mean_without_noise() -> None:
    results = _reduce("central", 0.0)
    # Rank 0's update is clipped from norm 5 to 1 -> [0.6, 0.8]; rank 1's stays; weights become 1 and 1.
    expected = (torch.tensor([0.6, 0.8]) + torch.tensor([0.0, 0.5])) / 2
    for result in results:
        torch.testing.assert_close(result["first"], expected)
        assert result["found"] is not None


def test_central_noise_is_shared_and_fresh_each_round() -> None:
    results = _reduce("central", 1.0)
    torch.testing.assert_close(results[0]["first"], results[1]["first"])  # replicas stay identical
    assert not torch.equal(results[0]["first"], results[0]["second"])
    assert results[0]["epsilon"] > 0 and results[0]["epsilon"] == results[1]["epsilon"]


def test_local_noise_is_added_before_the_average() -> None:
    results = _reduce("local", 1.0)
    expected = (torch.tensor([0.6, 0.8]) + torch.tensor([0.0, 0.5])) / 2
    # Both ranks see the same average (the noise went in before the all-reduce), and it is not the clean one.
    torch.testing.assert_close(results[0]["first"], results[1]["first"])
    assert not torch.allclose(results[0]["first"], expected, atol=1e-3)


def test_fedavg_reports_epsilon_each_round_through_the_private_reducer() -> None:
    from torch import nn

    from farsync.algorithms.fedavg import FedAvg
    from farsync.config import AlgorithmConfig

    def fn(rank: int, world: int, group: Any, store: Any) -> list[float]:
        model = nn.Linear(2, 1)
        comm = Communicator(group, rank, world)
        reducer = PrivateReducer(
            comm, MeanReducer(comm), PrivacyConfig(mode="central", noise_multiplier=1.0), seed=0
        )
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        epsilons = []
        with FedAvg(
            model, optimizer, comm, AlgorithmConfig(num_inner_steps=2), reducer=reducer, num_samples=5
        ) as fedavg:
            for _ in range(4):
                model(torch.ones(3, 2)).pow(2).mean().backward()
                optimizer.step()
                optimizer.zero_grad()
                if fedavg.round_ended:
                    epsilons.append(fedavg.metrics()["privacy_epsilon"])
        return epsilons

    for epsilons in run_ranks(fn, 2, prefix="fedavg-private"):
        assert len(epsilons) == 2 and 0 < epsilons[0] < epsilons[1]
