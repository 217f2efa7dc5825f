"""build_compressor: every kind builds and round trips; bad arguments are named in the error."""

import pytest
import torch

from farsync.compress import (
    KINDS,
    BlockQuantize,
    Cast,
    Chain,
    ErrorFeedback,
    Identity,
    LowRank,
    TopK,
    Uint8Lookup,
    build_compressor,
)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_round_trips_to_float32_with_the_original_shape(kind: str) -> None:
    # Prepare
    tensor = torch.randn(16, 8, generator=torch.Generator().manual_seed(50))
    compressor = build_compressor(kind, rank=8, topk_fraction=1.0)
    # Execute
    encoded = compressor.encode("w", tensor)
    decoded = compressor.decode(encoded)
    # Assert: rank 8 = full rank and fraction 1 keep everything; the rest is bounded by its quantizer.
    assert decoded.shape == tensor.shape
    assert decoded.dtype == torch.float32
    assert ((decoded - tensor).norm() / tensor.norm()).item() < 0.2


@pytest.mark.parametrize(
    ("kind", "kwargs", "expected_type"),
    [
        ("none", {}, Identity),
        ("bf16", {}, Cast),
        ("int4", {}, BlockQuantize),
        ("uint8_lookup", {}, Uint8Lookup),
        ("topk", {}, TopK),
        ("lowrank", {}, LowRank),
        ("lowrank_int8", {}, Chain),
        ("lowrank_quantized", {"bits": 16}, Chain),
        ("int8", {"error_feedback": True}, ErrorFeedback),
    ],
)
def test_kind_maps_to_the_documented_compressor(
    kind: str, kwargs: dict[str, object], expected_type: type
) -> None:
    # Prepare / Execute
    compressor = build_compressor(kind, **kwargs)
    # Assert
    assert isinstance(compressor, expected_type)


def test_lowrank_int4_quantizes_factors_but_not_vectors() -> None:
    # Prepare
    compressor = build_compressor("lowrank_int4", rank=2, block_size=32)
    # Execute
    matrix_bytes = compressor.encode("w", torch.randn(64, 32)).num_bytes
    vector_bytes = compressor.encode("b", torch.randn(10)).num_bytes
    # Assert: P 128 values -> 64 bytes + 4 scales; Q 64 values -> 32 bytes + 2 scales; bias fp32.
    assert matrix_bytes == (64 + 4 * 4) + (32 + 2 * 4)
    assert vector_bytes == 40


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "gzip"}, r"kind='gzip'.*allowed: none, fp16"),
        ({"kind": "lowrank", "rank": 0}, r"rank=0.*>= 1"),
        ({"kind": "int8", "bits": 2}, r"bits=2.*\(4, 8, 16\)"),
        ({"kind": "topk", "topk_fraction": 0.0}, r"topk_fraction=0.0.*\(0, 1\]"),
        ({"kind": "topk", "topk_fraction": 1.5}, r"topk_fraction=1.5"),
        ({"kind": "int8", "block_size": 0}, r"block_size=0"),
    ],
)
def test_bad_arguments_raise_value_error_naming_argument_value_and_allowed(
    kwargs: dict[str, object], message: str
) -> None:
    # Prepare / Execute / Assert
    with pytest.raises(ValueError, match=message):
        build_compressor(**kwargs)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(), (0,), (0, 5), (1, 1)], ids=["scalar", "empty", "empty2d", "one"])
def test_degenerate_shapes_round_trip(kind: str, shape: tuple[int, ...]) -> None:
    # Prepare
    tensor = torch.full(shape, 0.75)
    compressor = build_compressor(kind, error_feedback=True)
    # Execute
    decoded = compressor.decode(compressor.encode("x", tensor))
    # Assert
    assert decoded.shape == tensor.shape
    torch.testing.assert_close(decoded, tensor, atol=0.01, rtol=0.01)
