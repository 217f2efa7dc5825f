"""Client sampling, hosting and sample-count weighting against hand-computed values; config errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from farsync.comm.communicator import Communicator
from farsync.config import ConfigError, load_config
from farsync.federated import (
    clients_of_worker,
    clients_per_round,
    combine_partials,
    sample_clients,
    weighted_partial_sum,
)
from farsync.reducers.base import MeanReducer
from farsync.sim.ranks import run_ranks


def test_clients_per_round() -> None:
    assert clients_per_round(100, 0.1) == 10
    assert clients_per_round(10, 0.25) == 3  # 2.5 rounds half up
    assert clients_per_round(5, 0.01) == 1  # never fewer than one
    assert clients_per_round(7, 1.0) == 7


def test_sample_is_shared_distinct_and_changes_per_round() -> None:
    first = sample_clients(100, 0.1, round_index=3, seed=11)
    assert first == sample_clients(100, 0.1, round_index=3, seed=11)  # every worker draws the same
    assert len(set(first)) == 10 and first == sorted(first) and all(0 <= c < 100 for c in first)
    assert first != sample_clients(100, 0.1, round_index=4, seed=11)
    assert clients_of_worker([0, 3, 4, 7, 9], rank=1, num_workers=3) == [4, 7]


def test_weighting_by_hand() -> None:
    like = {"w": torch.zeros(2)}
    # Worker 0 hosts clients with 10 and 30 samples, worker 1 one client with 60.
    worker0 = weighted_partial_sum(
        [{"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 4.0])}], [10, 30], like
    )
    worker1 = weighted_partial_sum([{"w": torch.tensor([5.0, 6.0])}], [60], like)
    torch.testing.assert_close(worker0[0]["w"], torch.tensor([100.0, 140.0]))
    assert worker0[1] == 40.0
    # (10 [1,2] + 30 [3,4] + 60 [5,6]) / 100 = [4.0, 5.0]
    torch.testing.assert_close(combine_partials([worker0, worker1])["w"], torch.tensor([4.0, 5.0]))
    empty = weighted_partial_sum([], [], like)
    assert empty[1] == 0.0 and torch.equal(empty[0]["w"], torch.zeros(2))


def test_one_all_reduce_of_shares_gives_the_weighted_mean() -> None:
    # What the driver sends: share = weighted_sum / weight_sum with weight = weight_sum (0 with no clients).
    partials = [
        ({"w": torch.tensor([100.0, 140.0])}, 40.0),
        ({"w": torch.tensor([300.0, 360.0])}, 60.0),
        ({"w": torch.zeros(2)}, 0.0),
    ]

    def fn(rank: int, world: int, group: Any, store: Any) -> torch.Tensor:
        total, weight = partials[rank]
        share = {n: t / weight for n, t in total.items()} if weight > 0 else total
        return MeanReducer(Communicator(group, rank, world))(share, weight)["w"]

    for result in run_ranks(fn, 3, prefix="fed-weights"):
        torch.testing.assert_close(result, torch.tensor([4.0, 5.0]))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("federated.client_fraction=0", "federated.client_fraction"),
        ("federated.client_fraction=1.5", "federated.client_fraction"),
        ("data.alpha=0", "data.alpha"),
        ("data.alpha=-0.1", "data.alpha"),
        ("federated.num_rounds=0", "federated.num_rounds"),
    ],
)
def test_bad_federated_input_is_a_config_error(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(None, ["algorithm.name=fedavg", override])
