"""PowerSGD low rank: the one message layout, exactness on low-rank input, seeding, warm start, state, and
the collective recipe."""

import io

import pytest
import torch

from farsync.compress import (
    LowRankCodec,
    WarmStart,
    factor_codec,
    initial_q,
    lowrank_message_bytes,
    matrix_view,
    orthogonalize,
)


def _rank_r_matrix(rows: int, cols: int, rank: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, rank, generator=generator) @ torch.randn(rank, cols, generator=generator)


def _round_trip(codec: LowRankCodec, named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return codec.decode(codec.encode(named), {name: t.shape for name, t in named.items()})


def test_message_layout_is_p_then_q_in_the_factor_codec_then_vectors_in_fp32() -> None:
    # Prepare: a 40x30 and an 8x27 (conv) matrix at rank 3, and a bias of 17.
    named = {"a": torch.randn(40, 30), "conv": torch.randn(8, 3, 3, 3), "b": torch.randn(17)}
    codec = LowRankCodec(rank=3, bits=8, block_size=64)
    # Execute
    message = codec.encode(named)
    # Assert: P = 40*3 + 8*3 = 144 values (3 blocks), Q = 30*3 + 27*3 = 171 values (3 blocks), bias 17 fp32.
    expected = (144 + 4 * 3) + (171 + 4 * 3) + 4 * 17
    assert message.numel() == expected == codec.num_bytes([t.shape for t in named.values()])
    assert expected == lowrank_message_bytes([t.shape for t in named.values()], 3, factor_codec(8))


def test_rank_r_matrices_are_reconstructed_at_rank_r_and_vectors_exactly() -> None:
    # Prepare: fp32 factors and two iterations' worth of warm start reach the exact rank-3 subspace.
    named = {
        "w": _rank_r_matrix(40, 30, 3, seed=10),
        "conv": _rank_r_matrix(8, 27, 2, seed=11).view(8, 3, 3, 3),
    }
    named["bias"] = torch.randn(17, generator=torch.Generator().manual_seed(13))
    codec = LowRankCodec(rank=3, bits=32)
    # Execute
    _round_trip(codec, named)
    decoded = _round_trip(codec, named)
    # Assert
    for name, tensor in named.items():
        assert decoded[name].shape == tensor.shape
        torch.testing.assert_close(decoded[name], tensor, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("bits", "bound"), [(16, 1e-3), (8, 0.02), (4, 0.3)])
def test_quantized_factors_stay_within_their_codecs_error(bits: int, bound: float) -> None:
    # Prepare
    named = {"w": _rank_r_matrix(64, 48, 2, seed=12)}
    codec = LowRankCodec(rank=2, bits=bits)
    _round_trip(codec, named)
    # Execute
    decoded = _round_trip(codec, named)
    # Assert
    assert ((decoded["w"] - named["w"]).norm() / named["w"].norm()).item() < bound


def test_initial_q_is_identical_across_instances_and_distinct_across_names() -> None:
    # Prepare / Execute
    first = initial_q("layer.weight", 20, 4)
    again = initial_q("layer.weight", 20, 4)
    other = initial_q("layer2.weight", 20, 4)
    # Assert
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_warm_start_keeps_stored_columns_and_fills_new_ones_from_the_seed() -> None:
    # Prepare
    warm = WarmStart()
    stored = torch.randn(10, 2, generator=torch.Generator().manual_seed(1))
    warm.set("w", stored)
    # Execute
    wider, narrower, other_cols = warm.get("w", 10, 4), warm.get("w", 10, 1), warm.get("w", 9, 2)
    # Assert
    assert torch.equal(wider[:, :2], stored) and torch.equal(wider[:, 2:], initial_q("w", 10, 4)[:, 2:])
    assert torch.equal(narrower, stored[:, :1])
    assert torch.equal(other_cols, initial_q("w", 9, 2))


def test_warm_start_improves_the_approximation_over_rounds() -> None:
    # Prepare: full-rank matrix with a fast-decaying spectrum; the best rank-2 error is known.
    generator = torch.Generator().manual_seed(14)
    left, _ = torch.linalg.qr(torch.randn(60, 60, generator=generator))
    right, _ = torch.linalg.qr(torch.randn(40, 40, generator=generator))
    singular_values = torch.tensor([10.0, 5.0] + [1.0 / (i + 1) for i in range(38)])
    matrix = left[:, :40] @ torch.diag(singular_values) @ right.T
    best_error = singular_values[2:].norm().item()
    codec = LowRankCodec(rank=2, bits=32)
    # Execute
    errors = [(_round_trip(codec, {"w": matrix})["w"] - matrix).norm().item() for _ in range(6)]
    # Assert
    assert errors[-1] <= errors[0]
    assert errors[-1] <= best_error * 1.01


def test_state_dict_round_trip_reproduces_the_next_message() -> None:
    # Prepare
    named = {"w": torch.randn(20, 10, generator=torch.Generator().manual_seed(15))}
    original = LowRankCodec(rank=2, bits=8)
    original.encode(named)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    restored = LowRankCodec(rank=2, bits=8)
    # Execute
    restored.load_state_dict(torch.load(buffer))
    # Assert
    assert torch.equal(restored.encode(named), original.encode(named))


def test_a_message_for_other_shapes_is_rejected() -> None:
    # Prepare
    codec = LowRankCodec(rank=2, bits=8)
    message = codec.encode({"w": torch.randn(20, 10)})
    # Execute / Assert
    with pytest.raises(ValueError, match="low-rank message must have"):
        codec.decode(message, {"w": torch.Size([21, 10])})


def test_collective_recipe_equals_compressing_the_mean() -> None:
    # Prepare: three workers, simulated all-reduce means, versus one worker's message for the mean matrix.
    generator = torch.Generator().manual_seed(16)
    workers = [torch.randn(12, 9, generator=generator) for _ in range(3)]
    rank = 2
    q = initial_q("w", 9, rank)
    # Execute
    p = orthogonalize(torch.stack([matrix_view(m) @ q for m in workers]).mean(dim=0))
    q = torch.stack([matrix_view(m).T @ p for m in workers]).mean(dim=0)
    collective = p @ q.T
    reference = _round_trip(LowRankCodec(rank=rank, bits=32), {"w": torch.stack(workers).mean(dim=0)})["w"]
    # Assert
    torch.testing.assert_close(collective, reference, atol=1e-5, rtol=1e-5)
