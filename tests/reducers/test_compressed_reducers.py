"""Compressed reducers on 4 gloo ranks: weighted means with a left-out worker, identical results, bytes."""

import pytest
import torch

from farsync.comm.communicator import Communicator
from farsync.config import load_config
from farsync.reducers.base import MeanReducer
from farsync.reducers.compressed import build_compressed_reducer
from farsync.sim.ranks import run_ranks

WORLD = 4
WEIGHTS = [1.0, 3.0, 0.0, 2.0]  # rank 2 is left out; its update is garbage that must not leak in
KINDS = ("int8", "int4", "fp16", "bf16", "uint8_lookup", "topk", "lowrank", "adaptive")
BOUNDS = {
    "int8": 0.03,
    "int4": 0.3,
    "fp16": 2e-3,
    "bf16": 1e-2,
    "uint8_lookup": 0.1,
    "lowrank": 1e-3,
    "adaptive": 1e-3,
}


def update(rank: int) -> dict[str, torch.Tensor]:
    """A rank-2 matrix (same column space on every rank), a 3-D tensor of rank 2 and a bias."""
    generator = torch.Generator().manual_seed(rank)
    basis = torch.randn(48, 2, generator=torch.Generator().manual_seed(7))
    named = {
        "layer.weight": basis @ torch.randn(2, 64, generator=generator),
        "conv.weight": (basis[:8] @ torch.randn(2, 12, generator=generator)).reshape(8, 3, 4),
        "layer.bias": torch.randn(64, generator=generator),
    }
    if WEIGHTS[rank] == 0.0:
        named = {name: t * 1e6 for name, t in named.items()}
    return named


def exact_mean() -> dict[str, torch.Tensor]:
    total = sum(WEIGHTS)
    return {name: sum(WEIGHTS[r] * update(r)[name] for r in range(WORLD)) / total for name in update(0)}


def config_for(kind: str):
    overrides = ["compression.rank=4", "compression.bits=16", "compression.topk_fraction=0.5"]
    overrides.append("compression.kind=lowrank" if kind == "adaptive" else f"compression.kind={kind}")
    if kind == "adaptive":
        overrides.append("compression.adaptive=true")
    return load_config(None, overrides)


@pytest.fixture(scope="module")
def reduced() -> list[dict[str, tuple[dict[str, torch.Tensor], dict, int]]]:
    def on_rank(rank: int, world: int, group: object, store: object) -> dict:
        out = {}
        for kind in KINDS:
            comm = Communicator(group, rank, world)  # type: ignore[arg-type]
            reducer = build_compressed_reducer(config_for(kind).compression, comm, MeanReducer(comm))
            result = reducer(update(rank), WEIGHTS[rank])
            out[kind] = (result, reducer.metrics(), comm.ledger.bytes_sent())  # type: ignore[attr-defined]
        return out

    return run_ranks(on_rank, WORLD, prefix="cc-reducers")


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "topk"])
def test_weighted_mean_leaves_the_weight_zero_worker_out(reduced, kind: str) -> None:
    exact = exact_mean()
    for name, value in reduced[0][kind][0].items():
        error = float((value - exact[name]).norm() / exact[name].norm())
        assert error < BOUNDS[kind], (name, error)


def test_topk_keeps_the_largest_entries_of_the_weighted_mean(reduced) -> None:
    # Half of each worker's entries survive, so the mean is close but not exact; nothing of rank 2 leaks in.
    exact = exact_mean()
    value = reduced[0]["topk"][0]["layer.weight"]
    assert float((value - exact["layer.weight"]).norm() / exact["layer.weight"].norm()) < 0.5
    assert float(value.abs().max()) < 1e3


@pytest.mark.parametrize("kind", KINDS)
def test_every_rank_ends_with_bitwise_identical_results(reduced, kind: str) -> None:
    first = reduced[0][kind][0]
    for rank in range(1, WORLD):
        assert all(torch.equal(first[name], reduced[rank][kind][0][name]) for name in first)


@pytest.mark.parametrize("kind", KINDS)
def test_results_keep_names_shapes_and_float32(reduced, kind: str) -> None:
    result = reduced[0][kind][0]
    assert list(result) == list(update(0))
    assert all(result[n].shape == t.shape and result[n].dtype == torch.float32 for n, t in update(0).items())


def test_gather_reducer_sends_n_minus_one_payloads(reduced) -> None:
    metrics = reduced[0]["uint8_lookup"][1]
    assert metrics["compression_bytes_sent"] == (WORLD - 1) * metrics["compressed_bytes"]


def test_lowrank_sends_fewer_bytes_than_the_int8_ring_and_reports_rank(reduced) -> None:
    lowrank, int8 = reduced[0]["lowrank"][1], reduced[0]["int8"][1]
    assert lowrank["compression_rank"] == 4 and lowrank["compression_bits"] == 16
    assert lowrank["compression_bytes_sent"] < int8["compression_bytes_sent"]


def test_adaptive_reducer_sends_fp32_until_it_knows_the_link_and_reports_its_plan(reduced) -> None:
    # No emulated link and nothing measured yet: the planner's first round is synchronous and uncompressed.
    metrics = reduced[0]["adaptive"][1]
    assert (metrics["plan_mode"], metrics["plan_kind"], metrics["compression_bits"]) == ("sync", "none", 32)
    assert {"compressed_bytes", "comm_predicted_s", "comm_measured_s", "plan_inner_steps"} <= set(metrics)


def test_a_non_finite_update_is_left_out_with_a_warning(caplog) -> None:
    def on_rank(rank: int, world: int, group: object, store: object) -> torch.Tensor:
        comm = Communicator(group, rank, world)  # type: ignore[arg-type]
        reducer = build_compressed_reducer(config_for("int8").compression, comm, MeanReducer(comm))
        value = torch.full((100,), float(rank))
        if rank == 1:
            value[3] = float("nan")
        return reducer({"w": value}, 1.0)["w"]

    results = run_ranks(on_rank, 3, prefix="cc-reducers-nan")
    assert torch.allclose(results[0], torch.full((100,), 1.0), rtol=1e-2)  # mean of ranks 0 and 2
    assert "worker 1" in caplog.text
