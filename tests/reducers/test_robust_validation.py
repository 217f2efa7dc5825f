"""Validation inside the robust reducer: each bad kind of update is rejected, and a worker is excluded after
``max_strikes`` strikes, with the same verdicts on every rank."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from farsync.aggregate import median
from farsync.comm.communicator import Communicator
from farsync.config import AggregationConfig
from farsync.reducers.robust import RobustReducer
from farsync.sim.ranks import run_ranks

WORLD = 4
BAD = 1


def honest(rank: int, round_index: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(100 * round_index + rank)
    return {"w": torch.randn(2, 3, generator=generator), "b": torch.randn(4, generator=generator)}


def flat(named: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1).float() for t in named.values()])


def with_nan(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"w": named["w"].clone().fill_(float("nan")), "b": named["b"]}


def with_inf(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"w": named["w"], "b": named["b"].clone().fill_(float("inf"))}


def wrong_size(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"w": named["w"], "b": torch.zeros(5)}


def wrong_shape(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"w": named["w"].reshape(3, 2), "b": named["b"]}


def wrong_dtype(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.half() for name, t in named.items()}


def too_large(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t * 1e4 for name, t in named.items()}


Forgery = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def run_rounds(forgeries: list[Forgery | None], config: AggregationConfig) -> list[Any]:
    def body(rank: int, world: int, group: Any, store: Any) -> Any:
        reducer = RobustReducer(Communicator(group, rank, world), config)
        outputs, rejected = [], []
        for round_index, forge in enumerate(forgeries):
            update = honest(rank, round_index)
            if rank == BAD and forge is not None:
                update = forge(update)
            outputs.append(flat(reducer(update)))
            rejected.append(dict(reducer.last_rejected))
        return outputs, rejected, reducer.strikes.state_dict()

    return run_ranks(body, WORLD, prefix="validation")


@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        (with_nan, "non-finite values"),
        (with_inf, "non-finite values"),
        (wrong_size, "wrong shape: expected (10,), got (11,)"),
        (wrong_shape, "wrong shape: tensor shapes differ from the other workers'"),
        (wrong_dtype, "wrong dtype: expected torch.float32, got torch.float16"),
        (too_large, "norm"),
    ],
)
def test_each_bad_kind_is_rejected_and_left_out(forge: Forgery, reason: str) -> None:
    # Prepare
    config = AggregationConfig(rule="median", max_norm=100.0, max_strikes=3)
    # Execute
    results = run_rounds([forge], config)
    # Assert: every rank names the sender and the reason; the result is the rule over the others.
    expected = median(torch.stack([flat(honest(r, 0)) for r in range(WORLD) if r != BAD]))
    for rank, (outputs, rejected, _) in enumerate(results):
        assert list(rejected[0]) == [BAD]
        assert rejected[0][BAD].startswith(reason)
        if rank != BAD:
            torch.testing.assert_close(outputs[0], expected)


def test_excluded_after_max_strikes_consistently() -> None:
    config = AggregationConfig(rule="median", max_norm=100.0, max_strikes=2)
    # Round 0 and 2 are bad, round 1 honest: excluded after round 2; round 3 honest but still left out.
    results = run_rounds([with_nan, None, too_large, None], config)
    books = [book for _, _, book in results]
    assert all(book == books[0] for book in books)
    assert [s["round"] for s in books[0]["strikes"]] == [0, 2]
    kept_round1 = median(torch.stack([flat(honest(r, 1)) for r in range(WORLD)]))
    kept_round3 = median(torch.stack([flat(honest(r, 3)) for r in range(WORLD) if r != BAD]))
    for outputs, rejected, _ in results:
        assert rejected[1] == {} and rejected[3] == {}
        torch.testing.assert_close(outputs[1], kept_round1)
        torch.testing.assert_close(outputs[3], kept_round3)


def test_outliers_are_struck_and_excluded_without_a_norm_bound() -> None:
    # Prepare: no max_norm; a sender 1000x away from the others is an outlier on every shard.
    config = AggregationConfig(rule="median", outlier_ratio=10.0, max_strikes=2)
    # Execute
    results = run_rounds([too_large, too_large, too_large], config)
    # Assert: struck in rounds 0 and 1 by the owners' all-gathered verdicts, then excluded (no strike).
    books = [book for _, _, book in results]
    assert all(book == books[0] for book in books)
    assert [(s["worker"], s["round"]) for s in books[0]["strikes"]] == [(BAD, 0), (BAD, 1)]
    assert books[0]["strikes"][0]["reason"].startswith("a shard was an outlier")
    for _, rejected, _ in results:
        assert rejected[2] == {}
