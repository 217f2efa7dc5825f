"""Worker momentum on the robust path (Karimireddy et al. 2021, arXiv 2012.10333): what each worker sends,
what an attacker forges from, and CenteredClip started from the previous round's aggregate over gloo."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from farsync.aggregate import centered_clip, median
from farsync.comm.communicator import Communicator
from farsync.config import AggregationConfig, ConfigError, load_config
from farsync.reducers.momentum import WorkerMomentum
from farsync.reducers.robust import RobustReducer, build_robust_reducer
from farsync.sim.attacking import build_attacking_reducer
from farsync.sim.ranks import run_ranks

WORLD = 4


def test_momentum_is_stepped_by_hand() -> None:
    # m <- 0.5 m + u over u = 2, 4, -2: 2, 5, 0.5.
    momentum = WorkerMomentum(0.5)
    sent = [momentum({"w": torch.tensor([u])})["w"].item() for u in (2.0, 4.0, -2.0)]
    assert sent == [2.0, 5.0, 0.5]


def test_momentum_refuses_a_beta_outside_zero_one() -> None:
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\)"):
        WorkerMomentum(1.0)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["aggregation.worker_momentum=1.0"], "aggregation.worker_momentum"),
        (["aggregation.clip_start=previous", "aggregation.verify_fraction=0.25"], "aggregation.clip_start"),
    ],
)
def test_bad_settings_name_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, ["aggregation.rule=centered_clip", *overrides])
    assert caught.value.key == key


def test_the_rule_sees_momenta_and_an_attacker_sends_what_it_forges() -> None:
    # Prepare: rank 3 sends Gaussian noise (std 1); the rule is the plain mean, on the robust path.
    config = load_config(None, [
        f"num_workers={WORLD}", "aggregation.worker_momentum=0.5",
        "byzantine.workers=[3]", "byzantine.attack=gaussian", "byzantine.scale=1.0",
    ])  # fmt: skip

    def body(rank: int, world: int, group: Any, store: Any) -> list[torch.Tensor]:
        comm = Communicator(group, rank, world)
        reducer = build_attacking_reducer(config, comm, build_robust_reducer(config.aggregation, comm))
        first = reducer({"w": torch.full((4,), float(rank + 1))})["w"]
        second = reducer({"w": torch.ones(4)})["w"]
        return [first, second]

    # Execute
    first, second = run_ranks(body, WORLD, prefix="wm")[0]
    # Assert: the honest ranks send momenta (1, 2, 3, then 1.5, 2, 2.5); rank 3 sends its noise as drawn
    # each round, not a momentum of it (its generator is seeded 0 * 1_000_003 + 3, as the wrapper's).
    generator = torch.Generator().manual_seed(3)
    noise = [torch.randn(4, generator=generator) for _ in range(2)]
    torch.testing.assert_close(first, (6.0 + noise[0]) / 4)
    torch.testing.assert_close(second, (6.0 + noise[1]) / 4)


def test_centered_clip_starts_from_the_previous_aggregate() -> None:
    # Prepare: 4 workers, 8 values (4 shards of 2), fixed radius 0.5, one iteration.
    aggregation = AggregationConfig(
        rule="centered_clip", clip_start="previous", adaptive_tau=False, tau=0.5, num_iters=1
    )
    rounds = [torch.randn(WORLD, 8, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]

    def body(rank: int, world: int, group: Any, store: Any) -> list[torch.Tensor]:
        reducer = RobustReducer(Communicator(group, rank, world), aggregation)
        return [reducer({"w": stack[rank].clone()})["w"] for stack in rounds]

    # Execute
    first, second = run_ranks(body, WORLD, prefix="cch")[0]
    # Assert: each shard starts at its median in round 1, at its round-1 value in round 2.
    expected_first = torch.cat([
        centered_clip(rounds[0][:, j : j + 2], 0.5, num_iters=1, tol=0.0, init=median(rounds[0][:, j : j + 2]))
        for j in range(0, 8, 2)
    ])  # fmt: skip
    expected_second = torch.cat([
        centered_clip(rounds[1][:, j : j + 2], 0.5, num_iters=1, tol=0.0, init=expected_first[j : j + 2])
        for j in range(0, 8, 2)
    ])  # fmt: skip
    torch.testing.assert_close(first, expected_first)
    torch.testing.assert_close(second, expected_second)
