"""Error feedback: nothing is lost across rounds, residual state survives a save/load."""

import io

import pytest
import torch

from farsync.compress import BlockQuantize, Compressor, ErrorFeedback, LowRank, TopK


@pytest.mark.parametrize(
    "inner", [TopK(0.05), BlockQuantize(4), LowRank(rank=1)], ids=["topk", "int4", "lowrank"]
)
def test_decoded_sum_plus_final_residual_equals_input_sum(inner: Compressor) -> None:
    # Prepare
    generator = torch.Generator().manual_seed(30)
    inputs = [torch.randn(16, 12, generator=generator) for _ in range(8)]
    compressor = ErrorFeedback(inner)
    # Execute
    decoded_sum = torch.zeros(16, 12, dtype=torch.float64)
    for tensor in inputs:
        decoded_sum += compressor.decode(compressor.encode("w", tensor)).double()
    residual = compressor.residual("w")
    # Assert
    assert residual is not None
    input_sum = torch.stack(inputs).double().sum(dim=0)
    torch.testing.assert_close(decoded_sum + residual.double(), input_sum, atol=1e-5, rtol=0)


def test_first_residual_is_what_the_inner_compressor_dropped() -> None:
    # Prepare: top-1 of [3, -1, 2] keeps 3 and drops the rest.
    compressor = ErrorFeedback(TopK(1 / 3))
    # Execute
    compressor.encode("v", torch.tensor([3.0, -1.0, 2.0]))
    second = compressor.decode(compressor.encode("v", torch.tensor([0.0, 0.0, 0.5])))
    # Assert: second round sees [0, -1, 2.5] and sends 2.5.
    assert torch.equal(second, torch.tensor([0.0, 0.0, 2.5]))
    assert torch.equal(compressor.residual("v"), torch.tensor([0.0, -1.0, 0.0]))


def test_state_dict_round_trip_through_torch_save_restores_residuals_and_inner_state() -> None:
    # Prepare
    matrix = torch.randn(10, 8, generator=torch.Generator().manual_seed(31))
    original = ErrorFeedback(LowRank(rank=2))
    original.encode("w", matrix)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    restored = ErrorFeedback(LowRank(rank=2))
    # Execute
    restored.load_state_dict(torch.load(buffer))
    expected = original.decode(original.encode("w", matrix))
    actual = restored.decode(restored.encode("w", matrix))
    # Assert
    torch.testing.assert_close(actual, expected)
    torch.testing.assert_close(restored.residual("w"), original.residual("w"))


def test_reset_forgets_residuals() -> None:
    # Prepare
    compressor = ErrorFeedback(TopK(0.5))
    compressor.encode("w", torch.tensor([1.0, 2.0]))
    # Execute
    compressor.reset()
    # Assert
    assert compressor.residual("w") is None
    assert compressor.state_dict()["residuals"] == {}


def test_encoded_reports_the_callers_shape_and_dtype() -> None:
    # Prepare
    tensor = torch.randn(4, 4, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(32))
    compressor = ErrorFeedback(BlockQuantize(8))
    # Execute
    encoded = compressor.encode("w", tensor)
    # Assert
    assert encoded.dtype == torch.bfloat16
    assert encoded.shape == tensor.shape
