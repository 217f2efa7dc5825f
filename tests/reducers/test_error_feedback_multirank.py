"""Safety net (issue 10, item 8b): error feedback in a multi-rank reducer built from config.

Error feedback adds what compression lost last round to this round's update, so over many rounds the sum of
what the group averaged approaches the sum of the true averages (only the last residual is missing), while
without it the same part is lost every round. Two ranks send the same full-rank updates every round through
the reducer ``build_reducer`` makes from the config, with and without ``compression.error_feedback``.

Broken on purpose to check these fail: the low-rank residual stored but never added back; the ring and
gather reducers' residual never added back; the config's ``error_feedback`` not passed to the reducer.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from farsync.comm.communicator import Communicator
from farsync.config import load_config
from farsync.sim.ranks import run_ranks
from farsync.train.build import build_reducer

NUM_ROUNDS = 20
Named = dict[str, torch.Tensor]


def _update(rank: int) -> Named:
    """Worker ``rank``'s update, the same every round: a full-rank 16 x 12 matrix and a bias."""
    generator = torch.Generator().manual_seed(100 + rank)
    return {"w": torch.randn(16, 12, generator=generator), "b": torch.randn(12, generator=generator)}


def _relative_error(total: Named, expected: Named) -> float:
    num = sum(float((total[n] - expected[n]).square().sum()) for n in expected) ** 0.5
    return num / sum(float(expected[n].square().sum()) for n in expected) ** 0.5


def _run(overrides: list[str]) -> list[dict[str, Any]]:
    """Per rank: the relative error of the running sum after each round, with and without error feedback."""
    world = 2
    mean = {n: sum(_update(r)[n] for r in range(world)) / world for n in _update(0)}

    def on_rank(rank: int, size: int, group: Any, store: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for ef in (True, False):
            config = load_config(
                None, [f"num_workers={size}", *overrides, f"compression.error_feedback={str(ef).lower()}"]
            )
            reducer = build_reducer(config, Communicator(group, rank, size))
            total = {n: torch.zeros_like(t) for n, t in mean.items()}
            errors = []
            for round_index in range(1, NUM_ROUNDS + 1):
                averaged = reducer(_update(rank))
                for name in total:
                    total[name] += averaged[name]
                errors.append(_relative_error(total, {n: round_index * t for n, t in mean.items()}))
            out[f"ef={ef}"] = errors
            out[f"total ef={ef}"] = total
        return out

    return run_ranks(on_rank, world, prefix="safety-ef-" + "-".join(overrides))


@pytest.mark.parametrize(
    ("overrides", "ratio"),
    [
        (["compression.kind=lowrank", "compression.rank=2", "compression.bits=8"], 0.4),
        (["compression.kind=topk", "compression.topk_fraction=0.1"], 0.4),
        # The ring feeds back only this worker's own encoding; later hops re-encode partial sums.
        (["compression.kind=int8"], 0.6),
    ],
    ids=["lowrank", "topk", "int8"],
)
def test_the_running_sum_of_averages_approaches_the_true_sum(overrides: list[str], ratio: float) -> None:
    ranks = _run(overrides)
    for name in ranks[0]["total ef=True"]:  # every rank holds the same averages
        assert torch.equal(ranks[0]["total ef=True"][name], ranks[1]["total ef=True"][name])
    with_ef, without_ef = ranks[0]["ef=True"], ranks[0]["ef=False"]
    assert without_ef[-1] > 0.005  # the compression loses something every round (else nothing to test)
    assert with_ef[-1] < ratio * without_ef[-1]
    assert with_ef[-1] < 0.7 * with_ef[0]  # and the residual keeps catching up
