"""Adaptive planning: energy rank on known spectra, budget fitting, and the byte estimate."""

import pytest
import torch

from farsync.compress import (
    CompressionPlan,
    LowRankCodec,
    energy_rank,
    estimate_lowrank_bytes,
    plan_compression,
)


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


def test_energy_rank_is_clamped_to_max_rank_and_is_one_for_zero() -> None:
    # Prepare
    matrix = _matrix_with_singular_values(30, 20, [1.0] * 10, seed=41)
    # Execute
    capped = energy_rank(matrix, 1.0, max_rank=3)
    zero = energy_rank(torch.zeros(5, 5), 0.9, max_rank=3)
    # Assert
    assert capped == 3
    assert zero == 1


def test_estimate_counts_factors_at_bits_and_vectors_at_fp32() -> None:
    # Prepare
    shapes = [torch.Size([100, 50]), torch.Size([50])]
    # Execute
    fp16 = estimate_lowrank_bytes(shapes, rank=4, bits=16)
    int8 = estimate_lowrank_bytes(shapes, rank=4, bits=8, block_size=64)
    # Assert: P 400 values (7 blocks of 64), Q 200 values (4 blocks), each with an fp32 scale per block
    # (fp16 is block-scaled), bias 50 fp32.
    assert fp16 == (2 * 400 + 4 * 7) + (2 * 200 + 4 * 4) + 200
    assert int8 == (400 + 4 * 7) + (200 + 4 * 4) + 200


def _pseudo_gradient() -> dict[str, torch.Tensor]:
    return {
        "a.weight": _matrix_with_singular_values(64, 48, [8.0, 4.0, 2.0, 1.0, 0.1], seed=42),
        "b.weight": _matrix_with_singular_values(32, 64, [3.0, 0.1], seed=43),
        "a.bias": torch.randn(64, generator=torch.Generator().manual_seed(44)),
    }


def test_plan_takes_the_largest_energy_rank_and_the_widest_fitting_bits() -> None:
    # Prepare: at 0.95 energy, a.weight needs rank 3 (64+16+4 of 85.01) and b.weight needs rank 1.
    pseudo_gradient = _pseudo_gradient()
    shapes = [t.shape for t in pseudo_gradient.values()]
    fp16_bytes = estimate_lowrank_bytes(shapes, rank=3, bits=16)
    int8_bytes = estimate_lowrank_bytes(shapes, rank=3, bits=8)
    # Execute
    roomy = plan_compression(pseudo_gradient, energy_fraction=0.95, bytes_budget=fp16_bytes)
    tight = plan_compression(pseudo_gradient, energy_fraction=0.95, bytes_budget=fp16_bytes - 1)
    # Assert
    assert roomy == CompressionPlan(rank=3, bits=16, estimated_bytes=fp16_bytes)
    assert tight == CompressionPlan(rank=3, bits=8, estimated_bytes=int8_bytes)


def test_plan_halves_the_rank_at_the_narrowest_width_when_nothing_fits() -> None:
    # Prepare
    pseudo_gradient = _pseudo_gradient()
    shapes = [t.shape for t in pseudo_gradient.values()]
    budget = estimate_lowrank_bytes(shapes, rank=2, bits=4)
    # Execute
    plan = plan_compression(pseudo_gradient, energy_fraction=1.0, bytes_budget=budget, max_rank=8)
    # Assert: energy rank 5 -> 2 after one halving, at 4 bits.
    assert plan.rank == 2
    assert plan.bits == 4
    assert plan.estimated_bytes <= budget


@pytest.mark.parametrize("bits", [16, 8, 4])
def test_plan_estimate_equals_the_bytes_of_the_planned_message(bits: int) -> None:
    # Prepare
    pseudo_gradient = _pseudo_gradient()
    # Execute
    plan = plan_compression(pseudo_gradient, energy_fraction=0.9, bytes_budget=1e6, allowed_bits=(bits,))
    sent = LowRankCodec(rank=plan.rank, bits=plan.bits).encode(pseudo_gradient).numel()
    # Assert
    assert plan.bits == bits
    assert sent == plan.estimated_bytes


def test_plan_is_deterministic() -> None:
    # Prepare
    pseudo_gradient = _pseudo_gradient()
    # Execute
    plans = {plan_compression(pseudo_gradient, energy_fraction=0.9, bytes_budget=2500.0) for _ in range(3)}
    # Assert
    assert len(plans) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"energy_fraction": 0.0, "bytes_budget": 100.0}, "energy_fraction=0.0"),
        ({"energy_fraction": 0.5, "bytes_budget": 0.0}, "bytes_budget=0.0"),
        ({"energy_fraction": 0.5, "bytes_budget": 10.0, "allowed_bits": (3,)}, "allowed_bits"),
    ],
)
def test_plan_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    # Prepare / Execute / Assert
    with pytest.raises(ValueError, match=message):
        plan_compression(_pseudo_gradient(), **kwargs)
