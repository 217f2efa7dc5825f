"""The link-aware planner (pure): energy ranks on known spectra, and the plan on made-up links, with the
sizes and times computed by hand here.

Hand sizes for one 64x64 matrix and a 64-vector (4,160 values), blocks of 64, 4 workers:
fp32 16,644 bytes (values + the weight); dense values travel with the weight in a block of its own, so
66 blocks: int8 66 x 64 + 66 x 4 = 4,488 bytes, fp16 66 x 128 + 264 = 8,712, int4 66 x 32 + 264 = 2,376.
Low-rank rank 8 at 4 bits: P and Q 512 values each, 256 + 8 x 4 = 288 bytes each, plus the vector and the
weight in fp32 (260): 836 bytes. A ring all-reduce of S bytes over 4 workers on rate b takes
2 x 3 x S / (4 b) = 1.5 S / b (no latency). An overlapped message must fit 90% of its window (9 ms of 10).
"""

import dataclasses

import pytest
import torch

from farsync.compress import PlanInputs, PlannerPolicy, energy_rank, energy_ranks, plan_round
from farsync.compress.adaptive import ring_all_reduce_s

SHAPES = ((64, 64), (64,))
STEP_S, H = 0.001, 10  # a window of 10 ms


def _matrix_with_singular_values(rows: int, cols: int, values: list[float], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    left, _ = torch.linalg.qr(torch.randn(rows, len(values), generator=generator))
    right, _ = torch.linalg.qr(torch.randn(cols, len(values), generator=generator))
    matrix: torch.Tensor = left @ torch.diag(torch.tensor(values)) @ right.T
    return matrix


@pytest.mark.parametrize(("fraction", "expected"), [(0.5, 1), (0.8, 2), (0.9, 2), (0.95, 3), (1.0, 4)])
def test_energy_rank_on_known_spectrum(fraction: float, expected: int) -> None:
    # Prepare: singular values 4, 2, 1, 1 -> energies 16, 4, 1, 1 of 22; cumulative .727, .909, .955, 1.
    matrix = _matrix_with_singular_values(30, 20, [4.0, 2.0, 1.0, 1.0], seed=40)
    # Execute
    rank = energy_rank(matrix, fraction, max_rank=64)
    # Assert
    assert rank == expected


def test_energy_ranks_are_per_matrix_and_zero_for_vectors() -> None:
    # Prepare
    tensors = [
        _matrix_with_singular_values(30, 20, [4.0, 2.0, 1.0, 1.0], seed=40),
        torch.zeros(5, 5),
        torch.ones(7),
    ]
    # Execute
    ranks = energy_ranks(tensors, 0.95)
    # Assert
    assert ranks == (3, 1, 0)


def _inputs(bytes_per_s: float | None, **changes: object) -> PlanInputs:
    base = PlanInputs(
        shapes=SHAPES,
        energy_ranks=None,
        bytes_per_s=bytes_per_s,
        latency_s=0.0,
        num_workers=4,
        step_s=STEP_S,
        num_inner_steps=H,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_ring_time_is_the_bandwidth_optimal_formula() -> None:
    assert ring_all_reduce_s(1000.0, 4, 1e6, 0.0) == pytest.approx(1.5e-3)
    assert ring_all_reduce_s(1000.0, 4, 1e6, 0.01) == pytest.approx(1.5e-3 + 0.06)
    assert ring_all_reduce_s(1000.0, 1, 1e6, 0.01) == 0.0


def test_a_fast_link_runs_the_round_synchronously_and_uncompressed() -> None:
    # 1e9 B/s: fp32 takes 1.5 x 16,648 / 1e9 = 25 us, under 5% of the 10 ms window.
    plan = plan_round(_inputs(1e9), PlannerPolicy())
    assert (plan.mode, plan.kind, plan.bits) == ("sync", "none", 32)
    assert plan.ranks == (64, 0)
    assert plan.num_inner_steps == H and plan.fits


def test_an_unmeasured_link_runs_synchronously_and_uncompressed() -> None:
    plan = plan_round(_inputs(None), PlannerPolicy())
    assert (plan.mode, plan.kind) == ("sync", "none")


def test_a_10x_slower_link_gets_a_light_plan() -> None:
    # 1e6 B/s: fp32 25 ms, fp16 13 ms do not fit 9 ms; int8 4,488 bytes -> 6.7 ms does.
    plan = plan_round(_inputs(1e6), PlannerPolicy())
    assert (plan.mode, plan.kind, plan.bits) == ("overlap", "dense", 8)
    assert plan.message_bytes == 4488
    assert plan.predicted_comm_s == pytest.approx(1.5 * 4488 / 1e6)
    assert plan.fits


def test_a_100x_slower_link_gets_a_heavy_plan_or_a_longer_round() -> None:
    # 1e5 B/s: 9 ms hold 600 bytes. Floor (4 bits, rank 1/8 = 8): 836 bytes, 12.54 ms.
    slow = _inputs(1e5)
    floor = plan_round(slow, PlannerPolicy())
    grown = plan_round(slow, PlannerPolicy(adapt_inner_steps=True))
    two_bits = plan_round(slow, PlannerPolicy(min_bits=2))
    # Assert: without adapt_inner_steps the floor is sent and does not fit ...
    assert (floor.mode, floor.kind, floor.bits, floor.ranks) == ("overlap", "lowrank", 4, (8, 0))
    assert floor.message_bytes == 836 and not floor.fits
    # ... with it the next round is the smallest H that hides the floor: ceil(12.54 ms / 0.9 ms) = 14 ...
    assert grown.num_inner_steps == 14 and grown.fits and grown.message_bytes == 836
    # ... and a 2-bit floor fits: the largest 2-bit or 4-bit low-rank message under 600 bytes.
    assert two_bits.fits and two_bits.message_bytes <= 600 and two_bits.kind == "lowrank"


def test_h_never_grows_past_its_maximum() -> None:
    plan = plan_round(_inputs(1e4), PlannerPolicy(adapt_inner_steps=True, num_inner_steps_max=20))
    assert plan.num_inner_steps == 20 and not plan.fits


def test_the_energy_rank_caps_each_matrix() -> None:
    # An energy rank of 2 makes low-rank at fraction 1 small: P and Q 128 values each; at 16 bits
    # (256 + 8 bytes each, plus 260 fp32) 788 bytes, 11.8 ms, too slow for 9 ms; at 8 bits
    # (128 + 8 each) 532 bytes, 8 ms: fits.
    plan = plan_round(_inputs(1e5, energy_ranks=(2, 0)), PlannerPolicy())
    assert (plan.kind, plan.bits, plan.ranks, plan.rank_fraction) == ("lowrank", 8, (2, 0), 1.0)
    assert plan.message_bytes == 532 and plan.fits


def test_a_minimum_compression_ratio_rules_out_lighter_plans() -> None:
    # On the 10x link int8 fits, but a ratio of 10 allows at most 1,664 bytes: a low-rank message.
    plan = plan_round(_inputs(1e6), PlannerPolicy(min_compression_ratio=10.0))
    assert plan.kind == "lowrank" and plan.message_bytes <= 16644 / 10


def test_agreed_inputs_give_every_worker_the_same_plan() -> None:
    # Each worker measured its own link and step; after the agreement (slowest rate, longest step) they
    # all plan from the same inputs, and the plan is a pure function of them.
    measured = [(1.2e6, 0.0009), (1e6, 0.001), (3e6, 0.0008)]
    agreed = _inputs(min(r for r, _ in measured), step_s=max(s for _, s in measured))
    plans = {plan_round(agreed, PlannerPolicy()) for _ in measured}
    own = {plan_round(_inputs(r, step_s=s), PlannerPolicy()) for r, s in measured}
    assert len(plans) == 1
    assert len(own) > 1  # without the agreement they would run different collectives


def test_rank_fraction_summary() -> None:
    plan = plan_round(_inputs(1e5), PlannerPolicy())
    assert plan.rank_fraction_stats(SHAPES) == (8 / 64, 8 / 64)


def test_a_dense_message_under_the_sync_fraction_runs_synchronously() -> None:
    # 2e7 B/s, 0.5 ms allowed (5% of 10 ms): fp32 1.25 ms and fp16 0.65 ms exceed it, int8 0.34 ms does not.
    plan = plan_round(_inputs(2e7), PlannerPolicy())
    assert (plan.mode, plan.kind, plan.bits) == ("sync", "dense", 8)
    # Below the floor it would not: with min_bits 16 the round overlaps instead, with fp16 (0.65 ms fits).
    assert (plan_round(_inputs(2e7), PlannerPolicy(min_bits=16)).mode) == "overlap"
