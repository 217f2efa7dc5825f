"""PowerSGD low rank: exactness on low-rank input, seeding, warm start, state, and the collective recipe."""

import io

import torch

from farsync.compress import LowRank, initial_q, matrix_view, orthogonalize


def _rank_r_matrix(rows: int, cols: int, rank: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, rank, generator=generator) @ torch.randn(rank, cols, generator=generator)


def test_rank_r_matrix_is_reconstructed_exactly_at_rank_r() -> None:
    # Prepare
    matrix = _rank_r_matrix(40, 30, rank=3, seed=10)
    compressor = LowRank(rank=3, num_power_iters=2)
    # Execute
    encoded = compressor.encode("w", matrix)
    decoded = compressor.decode(encoded)
    # Assert
    torch.testing.assert_close(decoded, matrix, atol=1e-4, rtol=1e-4)
    assert encoded.payload["p"].shape == (40, 3)
    assert encoded.payload["q"].shape == (30, 3)
    assert encoded.num_bytes == 4 * 3 * (40 + 30)


def test_conv_shaped_tensor_uses_the_flattened_matrix_and_keeps_its_shape() -> None:
    # Prepare
    tensor = _rank_r_matrix(8, 3 * 3 * 3, rank=2, seed=11).view(8, 3, 3, 3)
    compressor = LowRank(rank=2, num_power_iters=2)
    # Execute
    encoded = compressor.encode("conv", tensor)
    decoded = compressor.decode(encoded)
    # Assert
    assert encoded.payload["q"].shape == (27, 2)
    torch.testing.assert_close(decoded, tensor, atol=1e-4, rtol=1e-4)


def test_rank_is_capped_by_the_smaller_dimension_and_then_exact() -> None:
    # Prepare
    matrix = torch.randn(3, 50, generator=torch.Generator().manual_seed(12))
    compressor = LowRank(rank=8)
    # Execute
    encoded = compressor.encode("w", matrix)
    decoded = compressor.decode(encoded)
    # Assert
    assert encoded.payload["p"].shape == (3, 3)
    torch.testing.assert_close(decoded, matrix, atol=1e-4, rtol=1e-4)


def test_one_dimensional_tensor_is_sent_as_fp32() -> None:
    # Prepare
    bias = torch.randn(17, generator=torch.Generator().manual_seed(13))
    compressor = LowRank(rank=2)
    # Execute
    encoded = compressor.encode("b", bias)
    decoded = compressor.decode(encoded)
    # Assert
    assert set(encoded.payload) == {"values"}
    assert encoded.num_bytes == 17 * 4
    assert torch.equal(decoded, bias)


def test_initial_q_is_identical_across_instances_and_distinct_across_names() -> None:
    # Prepare / Execute
    first = initial_q("layer.weight", 20, 4)
    again = initial_q("layer.weight", 20, 4)
    other = initial_q("layer2.weight", 20, 4)
    # Assert
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_warm_start_improves_the_approximation_over_rounds() -> None:
    # Prepare: full-rank matrix with a fast-decaying spectrum; the best rank-2 error is known.
    generator = torch.Generator().manual_seed(14)
    left, _ = torch.linalg.qr(torch.randn(60, 60, generator=generator))
    right, _ = torch.linalg.qr(torch.randn(40, 40, generator=generator))
    singular_values = torch.tensor([10.0, 5.0] + [1.0 / (i + 1) for i in range(38)])
    matrix = left[:, :40] @ torch.diag(singular_values) @ right.T
    best_error = singular_values[2:].norm().item()
    compressor = LowRank(rank=2)
    # Execute
    errors = [(compressor.decode(compressor.encode("w", matrix)) - matrix).norm().item() for _ in range(6)]
    # Assert
    assert errors[-1] <= errors[0]
    assert errors[-1] <= best_error * 1.01


def test_state_dict_round_trip_reproduces_the_next_encoding() -> None:
    # Prepare
    matrix = torch.randn(20, 10, generator=torch.Generator().manual_seed(15))
    original = LowRank(rank=2)
    original.encode("w", matrix)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    restored = LowRank(rank=2)
    # Execute
    restored.load_state_dict(torch.load(buffer))
    expected = original.encode("w", matrix)
    actual = restored.encode("w", matrix)
    # Assert
    assert torch.equal(actual.payload["p"], expected.payload["p"])
    assert torch.equal(actual.payload["q"], expected.payload["q"])


def test_collective_recipe_equals_compressing_the_mean() -> None:
    # Prepare: three workers, simulated all-reduce means, versus one LowRank on the mean matrix.
    generator = torch.Generator().manual_seed(16)
    workers = [torch.randn(12, 9, generator=generator) for _ in range(3)]
    rank = 2
    q = initial_q("w", 9, rank)
    # Execute
    p = orthogonalize(torch.stack([matrix_view(m) @ q for m in workers]).mean(dim=0))
    q = torch.stack([matrix_view(m).T @ p for m in workers]).mean(dim=0)
    collective = p @ q.T
    single = LowRank(rank=rank)
    reference = single.decode(single.encode("w", torch.stack(workers).mean(dim=0)))
    # Assert
    torch.testing.assert_close(collective, reference, atol=1e-5, rtol=1e-5)
