"""The private reducer on 2 gloo ranks: clipping, uniform weights, local vs central noise, epsilon per round."""

from __future__ import annotations

from typing import Any

import torch

from farsync.comm.communicator import Communicator
from farsync.comm.reducer import MeanReducer
from farsync.config import PrivacyConfig
from farsync.privacy import PrivateReducer, find_private_reducer
from farsync.testing.ranks import run_ranks

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
