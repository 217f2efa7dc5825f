"""Low-rank all-reduce exactness, error-feedback residuals and their checkpointing, and the adaptive plan."""

from types import SimpleNamespace

import pytest
import torch

from farsync.collectives.lowrank_allreduce import LowRankAllReduce
from farsync.comm.communicator import Communicator
from farsync.comm.cost import LinkModel
from farsync.compress import make_codec
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


class FakeComm:
    """Four workers on a fake link; the agreement all-gather returns this worker's values for everyone."""

    def __init__(self, bandwidth_bps: float) -> None:
        self.rank, self.world_size, self.channel = 0, 4, "sync"
        self.link = LinkModel(bandwidth_bps=bandwidth_bps)
        self.ledger = SimpleNamespace(bytes_sent=lambda channel=None: 0)
        self.clock = SimpleNamespace(now=lambda: 0.0)

    def all_gather(self, tensor: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(wait=lambda: [tensor.clone() for _ in range(self.world_size)])


def full_rank_update() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return {
        "a.weight": torch.randn(64, 64, generator=generator),
        "b.weight": torch.randn(64, 32, generator=generator),
    }


def plan_for(time_budget_s: float | None, bandwidth_bps: float = 8e6) -> tuple[int, int, int]:
    config = CompressionConfig(kind="lowrank", adaptive=True, rank=16, bits=16, energy_fraction=0.95)
    reducer = AdaptiveLowRankReducer(FakeComm(bandwidth_bps), config)  # type: ignore[arg-type]
    reducer.time_budget_s = time_budget_s
    update = full_rank_update()
    rank, bits, _ = reducer.plan(update)
    return rank, bits, reducer.message_bytes([t.shape for t in update.values()], rank, bits)


def test_adaptive_plan_uses_the_configured_maximum_when_the_budget_is_large() -> None:
    # Random 64x64 matrices need nearly full rank for 95% energy, so the cap of 16 and 16 bits win.
    assert plan_for(None)[:2] == (16, 16)
    assert plan_for(100.0)[:2] == (16, 16)


def test_adaptive_plan_shrinks_bits_then_rank_as_the_budget_shrinks() -> None:
    budgets = [100.0, 0.01, 0.004, 0.001, 0.0001]
    plans = [plan_for(b) for b in budgets]
    sizes = [size for _, _, size in plans]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0]
    assert plans[1][1] < 16  # narrower factors first
    assert plans[-1][0] < 16 and plans[-1][1] == 4  # then a smaller rank at the narrowest width


def test_adaptive_plan_fits_the_budget_on_the_link() -> None:
    # 8 Mbit/s, 4 workers: a message of S bytes takes 2 * 3/4 * S / 1e6 s, so 0.01 s allows 6666 bytes.
    _, _, size = plan_for(0.01)
    assert size <= 0.01 * 1e6 * 4 / 6
    _, _, slow_size = plan_for(0.01, bandwidth_bps=1e6)
    assert slow_size < size
