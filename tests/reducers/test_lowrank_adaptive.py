"""Low-rank all-reduce exactness (one rank, or one per matrix), error-feedback residuals and their
checkpointing, and the link-aware reducer executing each kind of plan."""

import logging
from types import SimpleNamespace

import pytest
import torch

from farsync.collectives.lowrank_allreduce import LowRankAllReduce
from farsync.comm.communicator import Communicator
from farsync.comm.cost import LinkModel
from farsync.compress import factor_codec, lowrank_message_bytes, make_codec
from farsync.config import CompressionConfig
from farsync.reducers.adaptive_lowrank import AdaptiveLowRankReducer
from farsync.reducers.compressed import GatherReducer, RingReducer
from farsync.sim.ranks import run_ranks


def test_lowrank_all_reduce_is_exact_for_rank_r_data_and_equal_on_all_ranks() -> None:
    # Prepare: M_i = U V_i^T with a shared U of rank 3, so the mean has rank 3; rank 3 suffices.
    basis = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))

    def matrix(rank: int) -> torch.Tensor:
        return basis @ torch.randn(3, 25, generator=torch.Generator().manual_seed(10 + rank))

    def on_rank(rank: int, world: int, group: object, store: object) -> tuple[torch.Tensor, int]:
        comm = Communicator(group, rank, world)  # type: ignore[arg-type]
        engine = LowRankAllReduce(comm, rank=3, bits=32, error_feedback=False)
        return engine.reduce({"w": matrix(rank)})["w"], comm.ledger.bytes_sent()

    # Execute
    results = run_ranks(on_rank, 4, prefix="cc-lowrank-exact")
    # Assert
    exact = torch.stack([matrix(r) for r in range(4)]).mean(dim=0)
    assert torch.allclose(results[0][0], exact, atol=1e-4, rtol=1e-4)
    assert all(torch.equal(results[0][0], other) for other, _ in results[1:])
    assert results[0][1] < 0.5 * 4 * exact.numel()  # P and Q are far smaller than the matrix


def test_error_feedback_loses_nothing_over_rounds_at_world_size_one() -> None:
    # With one worker the ring is exact, so out + residual == inputs summed, round after round.
    reducer = RingReducer(Communicator(None, 0, 1), make_codec("int4"), error_feedback=True)
    inputs = [{"w": torch.randn(300, generator=torch.Generator().manual_seed(s))} for s in range(3)]
    total_out = torch.zeros(300)
    for named in inputs:
        total_out += reducer(named)["w"]
    residual = reducer.residuals.get("w")  # type: ignore[union-attr]
    assert residual is not None and residual.abs().sum() > 0
    assert torch.allclose(total_out + residual, sum(n["w"] for n in inputs), atol=1e-5)


@pytest.mark.parametrize("make", ["ring", "gather", "lowrank"])
def test_residuals_are_saved_and_restored_through_state_dict(make: str) -> None:
    comm = Communicator(None, 0, 1)
    builders = {
        "ring": lambda: RingReducer(comm, make_codec("int8"), error_feedback=True),
        "gather": lambda: GatherReducer(comm, make_codec("topk", topk_fraction=0.1), error_feedback=True),
        "lowrank": lambda: AdaptiveLowRankReducer(
            comm, CompressionConfig(kind="lowrank", rank=2, error_feedback=True)
        ),
    }
    named = {"w": torch.randn(20, 30, generator=torch.Generator().manual_seed(1)), "b": torch.randn(30)}
    first = builders[make]()
    first(named)
    # Execute: a fresh reducer restored from the first's state continues identically.
    second = builders[make]()
    second.load_state_dict(first.state_dict())
    assert torch.equal(first.residuals.get("w"), second.residuals.get("w"))  # type: ignore[union-attr]
    out_first, out_second = first(named), second(named)
    assert torch.equal(out_first["w"], out_second["w"])


def test_each_matrix_uses_its_own_rank_and_the_message_counts_them() -> None:
    # Prepare: "a" (40 x 25) has rank 3 on every worker, "b" (30 x 20) rank 1; ranks 3 and 1 are exact.
    basis_a = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    basis_b = torch.randn(30, 1, generator=torch.Generator().manual_seed(1))

    def named(rank: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(20 + rank)
        return {
            "a": basis_a @ torch.randn(3, 25, generator=generator),
            "b": basis_b @ torch.randn(1, 20, generator=generator),
            "bias": torch.randn(5, generator=generator),
        }

    def on_rank(
        rank: int, world: int, group: object, store: object
    ) -> tuple[dict[str, torch.Tensor], object]:
        engine = LowRankAllReduce(Communicator(group, rank, world), rank=8, bits=32, error_feedback=False)  # type: ignore[arg-type]
        return engine.reduce(named(rank), rank={"a": 3, "b": 1}), engine.last

    # Execute
    results = run_ranks(on_rank, 2, prefix="cc-lowrank-per-matrix")
    # Assert
    out, last = results[0]
    for name in ("a", "b", "bias"):
        exact = (named(0)[name] + named(1)[name]) / 2
        assert torch.allclose(out[name], exact, atol=1e-4, rtol=1e-4)
    assert last.ranks == {"a": 3, "b": 1} and last.rank == 3  # type: ignore[attr-defined]
    # P: 40 x 3 + 30 x 1, Q: 25 x 3 + 20 x 1, in fp32; the bias in fp32; the weight.
    assert last.message_bytes == 4 * (150 + 95) + 4 * 5 + 4  # type: ignore[attr-defined]
    shapes = [torch.Size([40, 25]), torch.Size([30, 20]), torch.Size([5])]
    assert lowrank_message_bytes(shapes, [3, 1, 0], factor_codec(32)) + 4 == last.message_bytes  # type: ignore[attr-defined]


def _update(rank: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(30 + rank)
    return {"w": torch.randn(64, 64, generator=generator), "b": torch.randn(64, generator=generator)}


def _reduce_on_link(bandwidth_bps: float) -> list[tuple[dict[str, torch.Tensor], dict[str, object]]]:
    """Two workers on an emulated link (virtual clock), a 10 ms window: each plans and reduces once."""
    from farsync.comm.clock import Clock

    def on_rank(rank: int, world: int, group: object, store: object) -> tuple[dict[str, torch.Tensor], dict]:
        comm = Communicator(group, rank, world, clock=Clock("virtual"), link=LinkModel(bandwidth_bps))  # type: ignore[arg-type]
        compression = CompressionConfig(
            kind="lowrank", adaptive=True, error_feedback=True, energy_fraction=1.0
        )
        reducer = AdaptiveLowRankReducer(comm, compression, num_inner_steps=10)
        reducer.step_s = 0.001
        plan = reducer.plan(_update(rank))
        out = reducer(_update(rank))
        return out, {**reducer.metrics(), "planned_kind": plan.kind}

    return run_ranks(on_rank, 2, prefix=f"cc-adaptive-{int(bandwidth_bps)}")


@pytest.mark.parametrize(
    ("bandwidth_bps", "kind", "bits", "tolerance"),
    [(8e9, "none", 32, 1e-6), (4e6, "dense", 8, 0.05), (8e5, "lowrank", 4, None)],
)
def test_the_reducer_executes_the_plan_its_link_calls_for(
    bandwidth_bps: float, kind: str, bits: int, tolerance: float | None
) -> None:
    # 2 workers, 4,160 values; a ring of S bytes takes 2 (n-1) S / (n b) = S / b; the window is 10 ms, of
    # which an overlapped message may fill 9.
    # 1 GB/s: fp32 (16,644 B) 17 us, under 5% of the window: sync, uncompressed. 500 kB/s: fp32 33 ms and
    # fp16 (8,712 B) 17 ms do not fit, int8 (4,488 B) 9 ms does. 100 kB/s: int4 (2,376 B) 24 ms does not;
    # the largest low-rank message that fits is rank 8 at 4 bits (836 B, 8.4 ms).
    results = _reduce_on_link(bandwidth_bps)
    (out, metrics), (other, _) = results
    assert metrics["planned_kind"] == kind and metrics["plan_kind"] == kind
    assert metrics["compression_bits"] == bits
    assert all(torch.equal(out[n], other[n]) for n in out)  # every worker ran the same collective
    exact = {n: (_update(0)[n] + _update(1)[n]) / 2 for n in out}
    if tolerance is not None:
        assert all(torch.allclose(out[n], exact[n], atol=tolerance) for n in out)
    assert metrics["comm_measured_s"] > 0  # type: ignore[operator]


class _FakeComm:
    """Four workers on a fake link; the agreement all-gather returns this worker's values for everyone."""

    def __init__(self, bandwidth_bps: float) -> None:
        self.rank, self.world_size, self.channel = 0, 4, "sync"
        self.link = LinkModel(bandwidth_bps=bandwidth_bps)
        self.ledger = SimpleNamespace(bytes_sent=lambda channel=None: 0)
        self.clock = SimpleNamespace(now=lambda: 0.0)

    def all_gather(self, tensor: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(wait=lambda: [tensor.clone() for _ in range(self.world_size)])


def test_the_quality_floor_is_sent_counted_and_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    # Prepare: 8 kbit/s, a 10 ms window: no allowed message fits.
    compression = CompressionConfig(kind="lowrank", adaptive=True, error_feedback=True, energy_fraction=1.0)
    reducer = AdaptiveLowRankReducer(_FakeComm(8e3), compression, num_inner_steps=10)  # type: ignore[arg-type]
    reducer.step_s = 0.001
    # Execute
    with caplog.at_level(logging.WARNING, logger="farsync.reducers.adaptive_lowrank"):
        plans = [reducer.plan(_update(0)) for _ in range(3)]
    # Assert: the floor (4 bits, rank 1/8 of 64 = 8) three times, one warning.
    assert all((p.kind, p.bits, p.ranks, p.fits) == ("lowrank", 4, (8, 0), False) for p in plans)
    assert reducer.floor_rounds == 3
    assert sum("quality floor" in r.getMessage() for r in caplog.records) == 1
