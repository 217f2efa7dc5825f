"""BTARD's verification of shard owners: a lying owner is caught, excluded and its shard redone."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from farsync.aggregate import build_aggregator
from farsync.collectives.butterfly import ShardLayout
from farsync.comm.communicator import Communicator
from farsync.config import AggregationConfig
from farsync.reducers.robust import RobustReducer
from farsync.sim.ranks import run_ranks

WORLD = 4
NUMEL = 1000
LIAR = 2
ROUNDS = 3
Rule = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class LyingOwner(RobustReducer):
    """Publishes its own shard shifted by 100; everything else it does honestly (so the others' protocol
    goes on: a worker that also stopped answering would be a failure, not a liar)."""

    def __init__(self, comm: Communicator, config: AggregationConfig) -> None:
        super().__init__(comm, config)
        verifier = self.verifier
        assert verifier is not None
        honest_guard = verifier.guard

        def lying_guard(rule: Rule, shard: int) -> Rule:
            guarded = honest_guard(rule, shard)

            def publish(stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                reduced, side = guarded(stack)
                return reduced + 100.0, side

            return publish

        verifier.guard = lying_guard  # type: ignore[method-assign]


def update(rank: int, round_index: int) -> torch.Tensor:
    return torch.randn(NUMEL, generator=torch.Generator().manual_seed(100 * round_index + rank))


def central(config: AggregationConfig, round_index: int, ranks: list[int]) -> torch.Tensor:
    """The rule on every shard of the given ranks' updates, as one honest process would compute it."""
    rule = build_aggregator(config.rule)
    layout = ShardLayout(NUMEL, WORLD)
    shards = [layout.split(update(rank, round_index)) for rank in ranks]
    return layout.join([rule(torch.stack([s[j] for s in shards])) for j in range(WORLD)])


def run(config: AggregationConfig, rounds: int) -> list[Any]:
    def body(rank: int, world: int, group: Any, store: Any) -> Any:
        comm = Communicator(group, rank, world)
        cls = LyingOwner if rank == LIAR else RobustReducer
        reducer = cls(comm, config)
        history = []
        for round_index in range(rounds):
            result = reducer({"w": update(rank, round_index)})["w"]
            history.append((result, list(reducer.last_checked), reducer.strikes.excluded))
        return history, comm.ledger.to_dict()["entries"]

    return run_ranks(body, WORLD, prefix="verify")


def test_lying_owner_is_caught_excluded_and_its_shard_redone() -> None:
    # Prepare: one shard of four checked per round (k / n = 1/4), median over the butterfly. The draw
    # depends on the round's published values and the seed; with seed 5 the liar's shard is first drawn
    # in the third round (a liar is caught within 3 rounds with probability 1 - (3/4)^3 = 58% here).
    config = AggregationConfig(rule="median", verify_fraction=0.25, verify_seed=5)
    # Execute
    results = run(config, ROUNDS + 1)
    # Assert: every worker ends with the same vectors and the same exclusions.
    history, _ = results[0]
    for other, _ in results[1:]:
        for (vector, checked, excluded), (mine, my_checked, my_excluded) in zip(history, other, strict=True):
            assert torch.equal(vector, mine) and checked == my_checked and excluded == my_excluded
    caught = next(r for r, (_, checked, _) in enumerate(history) if LIAR in checked)
    assert caught == 2  # caught within 3 rounds, the first time its shard is drawn
    for round_index, (vector, _, excluded) in enumerate(history):
        if round_index < caught:
            # Unchecked rounds: the lie gets through, in the liar's shard only.
            assert excluded == []
            size = ShardLayout(NUMEL, WORLD).shard_size
            lie = vector - central(config, round_index, list(range(WORLD)))
            assert torch.allclose(lie[LIAR * size : (LIAR + 1) * size], torch.tensor(100.0))
        elif round_index == caught:
            # Caught: excluded, and its shard redone with the true aggregate (the liar still sent honestly).
            assert excluded == [LIAR]
            torch.testing.assert_close(vector, central(config, round_index, list(range(WORLD))))
        else:
            # Later rounds: the next live worker computes the excluded owner's shard; the liar sends nothing.
            assert excluded == [LIAR]
            honest = [rank for rank in range(WORLD) if rank != LIAR]
            torch.testing.assert_close(vector, central(config, round_index, honest))


def test_verification_bytes_are_a_quarter_of_the_butterfly_at_most() -> None:
    # Prepare: no liar, so the cost is the steady one: commitments, sampled shards, reports.
    config = AggregationConfig(rule="median", verify_fraction=0.25)

    def body(rank: int, world: int, group: Any, store: Any) -> Any:
        comm = Communicator(group, rank, world)
        reducer = RobustReducer(comm, config)
        for round_index in range(ROUNDS):
            reducer({"w": update(rank, round_index)})
        return comm.ledger.bytes_sent("sync"), comm.ledger.bytes_sent("verify"), reducer.strikes.excluded

    # Execute
    results = run_ranks(body, WORLD, prefix="verify-bytes")
    # Assert: nobody is excluded, and the group's verification bytes are at most 25% of its butterfly bytes.
    assert all(excluded == [] for _, _, excluded in results)
    butterfly = sum(sync for sync, _, _ in results)
    verification = sum(verify for _, verify, _ in results)
    assert 0 < verification <= 0.25 * butterfly


class FalseAccuser(RobustReducer):
    """Accuses every owner it verifies, and is otherwise honest."""

    def __init__(self, comm: Communicator, config: AggregationConfig) -> None:
        super().__init__(comm, config)
        verifier = self.verifier
        assert verifier is not None
        honest_check, honest_matches = verifier._check, verifier._matches
        checking = [False]

        def check(*args: Any) -> torch.Tensor:
            checking[0] = True
            try:
                return honest_check(*args)
            finally:
                checking[0] = False

        def matches(*args: Any) -> bool:
            return False if checking[0] else honest_matches(*args)

        verifier._check = check  # type: ignore[method-assign]
        verifier._matches = matches  # type: ignore[method-assign]


def test_a_false_accuser_is_excluded_and_the_owner_kept() -> None:
    # Prepare: rank 1 accuses whoever it verifies; the public re-check shows the owners were right.
    config = AggregationConfig(rule="median", verify_fraction=0.25, verify_seed=1)

    def body(rank: int, world: int, group: Any, store: Any) -> Any:
        comm = Communicator(group, rank, world)
        reducer = (FalseAccuser if rank == 1 else RobustReducer)(comm, config)
        results = [reducer({"w": update(rank, round_index)})["w"] for round_index in range(6)]
        return results, reducer.strikes.excluded

    # Execute
    outcomes = run_ranks(body, WORLD, prefix="accuser")
    # Assert: the accuser alone is excluded, and every round's result is the honest aggregate.
    assert all(excluded == [1] for _, excluded in outcomes)
    honest_results, _ = outcomes[0]
    for round_index, vector in enumerate(honest_results):
        everyone = central(config, round_index, list(range(WORLD)))
        without = central(config, round_index, [0, 2, 3])
        assert torch.allclose(vector, everyone) or torch.allclose(vector, without)
