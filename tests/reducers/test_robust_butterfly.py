"""The butterfly robust all-reduce on 4 gloo ranks equals the rule applied centrally, shard by shard."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from farsync.aggregate import build_aggregator, weighted_mean
from farsync.collectives.butterfly import ShardLayout
from farsync.comm.communicator import Communicator
from farsync.config import AggregationConfig
from farsync.reducers.robust import RobustReducer
from farsync.sim.ranks import run_ranks

WORLD = 4
NUMEL = 10  # not a multiple of WORLD: the last shard is padded


def updates() -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    stack = torch.randn(WORLD, NUMEL, generator=generator)
    stack[3] = stack[3] * 50 + 7  # an outlier, so the rules differ from the mean
    return stack


def named(vector: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"a.weight": vector[:6].reshape(2, 3).clone(), "a.bias": vector[6:].clone()}


def central(rule: str, stack: torch.Tensor, config: AggregationConfig) -> torch.Tensor:
    """The rule applied to each butterfly shard of the stacked updates, as one process would."""
    aggregate = build_aggregator(rule, beta=config.beta, f=config.f, m=config.m, tau=config.tau)
    layout = ShardLayout(NUMEL, WORLD)
    shards = [layout.split(row) for row in stack]
    return layout.join([aggregate(torch.stack([s[j] for s in shards])) for j in range(WORLD)])


def reduce_on_ranks(config: AggregationConfig, weights: list[float]) -> list[Any]:
    stack = updates()

    def body(rank: int, world: int, group: Any, store: Any) -> Any:
        comm = Communicator(group, rank, world)
        reducer = RobustReducer(comm, config)
        result = reducer(named(stack[rank]), weights[rank])
        return torch.cat([t.reshape(-1) for t in result.values()]), comm.ledger.to_dict()

    return run_ranks(body, WORLD, prefix=f"bfly-{config.rule}")


@pytest.mark.parametrize("rule", ["median", "trimmed_mean", "krum", "centered_clip"])
def test_butterfly_equals_rule_applied_centrally(rule: str) -> None:
    # Prepare: absolute tau so the central reference needs no per-shard radius.
    config = AggregationConfig(rule=rule, beta=0.25, f=0, tau=0.5, adaptive_tau=False)
    # Execute
    results = reduce_on_ranks(config, [1.0] * WORLD)
    # Assert: every rank holds the same vector, equal to the central shard-wise rule.
    expected = central(rule, updates(), config)
    for vector, _ in results:
        torch.testing.assert_close(vector, expected)


def test_mean_is_weighted_and_weight_zero_is_left_out() -> None:
    config = AggregationConfig(rule="mean", max_norm=1e6)
    weights = [3.0, 1.0, 0.0, 2.0]
    results = reduce_on_ranks(config, weights)
    expected = weighted_mean(updates(), torch.tensor(weights))
    for vector, _ in results:
        torch.testing.assert_close(vector, expected)


def test_weight_zero_worker_does_not_count_in_robust_rule() -> None:
    config = AggregationConfig(rule="median")
    results = reduce_on_ranks(config, [1.0, 1.0, 0.0, 1.0])
    kept = updates()[[0, 1, 3]]
    expected = central("median", kept, config)
    for vector, _ in results:
        torch.testing.assert_close(vector, expected)


def test_bytes_per_worker_about_twice_the_update() -> None:
    results = reduce_on_ranks(AggregationConfig(rule="median"), [1.0] * WORLD)
    for _, ledger in results:
        entries = ledger["entries"]
        exchanged = entries["sync/all_to_all"]["bytes_sent"] + entries["sync/all_gather"]["bytes_sent"]
        shard_bytes = 4 * ShardLayout(NUMEL, WORLD).shard_size
        # all-to-all (n-1)/n of n shards + all-gather of (n-1) reduced shards (+ n flags), + 6 float64 summary.
        expected = (WORLD - 1) * shard_bytes + (WORLD - 1) * (shard_bytes + 4 * WORLD) + (WORLD - 1) * 48
        assert exchanged == expected
        assert exchanged < 2 * 4 * NUMEL + (WORLD - 1) * (4 * WORLD + 48) + 2 * 4 * WORLD


def test_compressed_shards_are_decoded_before_the_rule() -> None:
    # Prepare: the full reducer stack, as build.py makes it, with int8 shards on the wire.
    from farsync.config import load_config
    from farsync.train.build import build_reducer

    config = load_config(
        None,
        [
            f"num_workers={WORLD}",
            "aggregation.rule=median",
            "compression.kind=int8",
            "compression.block_size=8",
        ],
    )
    stack = updates()

    def body(rank: int, world: int, group: Any, store: Any) -> Any:
        comm = Communicator(group, rank, world)
        reducer = build_reducer(config, comm)
        result = reducer(named(stack[rank]))
        return torch.cat([t.reshape(-1) for t in result.values()]), comm.ledger.to_dict()["entries"]

    # Execute
    results = run_ranks(body, WORLD, prefix="compressed")
    # Assert: close to the central rule (int8 rounding), and the all-to-all carried ~1 byte per value.
    expected = central("median", stack, AggregationConfig(rule="median"))
    first = results[0][0]
    for vector, entries in results:
        assert torch.equal(vector, first)
        assert entries["sync/all_to_all"]["payload_bytes"] < 4 * 4 * ShardLayout(NUMEL, WORLD).shard_size
    torch.testing.assert_close(first, expected, atol=0.1, rtol=0.05)
