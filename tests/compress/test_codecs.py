"""Wire codecs (pure): exact message sizes, error bounds, no fp16 overflow, top-k selection, bad lengths."""

import pytest
import torch

from farsync.compress import CODEC_KINDS, TopKCodec, make_codec


@pytest.mark.parametrize("kind", CODEC_KINDS)
@pytest.mark.parametrize("numel", [0, 1, 63, 64, 1000])
def test_message_is_exactly_num_bytes_and_decodes_to_numel_values(kind: str, numel: int) -> None:
    # Prepare
    codec = make_codec(kind, block_size=64, topk_fraction=0.1)
    values = torch.randn(numel, generator=torch.Generator().manual_seed(numel))
    # Execute
    message = codec.encode(values)
    decoded = codec.decode(message, numel)
    # Assert
    assert message.dtype == torch.uint8
    assert message.numel() == codec.num_bytes(numel)
    assert decoded.dtype == torch.float32 and decoded.shape == (numel,)


@pytest.mark.parametrize(
    ("kind", "bound"),
    [("fp32", 0.0), ("int8", 0.01), ("int4", 0.2), ("fp16", 1e-3), ("bf16", 5e-3), ("uint8_lookup", 0.03)],
)
def test_round_trip_relative_error_on_normal_data(kind: str, bound: float) -> None:
    # Prepare
    values = torch.randn(4096, generator=torch.Generator().manual_seed(0))
    # Execute
    error = (make_codec(kind).round_trip(values) - values).norm() / values.norm()
    # Assert
    assert float(error) <= bound


@pytest.mark.parametrize(
    ("kind", "numel", "expected"),
    [("int8", 1000, 1000 + 4 * 16), ("int4", 1000, 500 + 4 * 16), ("fp16", 1000, 2000 + 4 * 16)]
    + [("bf16", 1000, 2000), ("uint8_lookup", 1000, 1000 + 1024), ("fp32", 1000, 4000), ("topk", 1000, 800)],
)
def test_message_sizes_follow_the_documented_layouts(kind: str, numel: int, expected: int) -> None:
    # Prepare: blocks of 64 (16 blocks for 1000 values); top-k keeps 10% = 100 values + 100 int32 indices.
    codec = make_codec(kind, 64, topk_fraction=0.1)
    # Execute / Assert
    assert codec.num_bytes(numel) == expected


def test_fp16_codec_does_not_overflow_large_values() -> None:
    # Prepare: a plain fp16 cast turns 1e6 into inf.
    values = torch.tensor([1e6, -3e5, 7.0, 0.0])
    # Execute
    decoded = make_codec("fp16").round_trip(values)
    # Assert: the block-scaled codec keeps it to fp16 relative precision of the block's absmax.
    assert torch.isfinite(decoded).all()
    assert torch.allclose(decoded, values, rtol=1e-3, atol=1e6 * 1e-3)


@pytest.mark.parametrize("kind", ["int8", "int4", "fp16", "bf16"])
def test_re_encoding_decoded_values_is_lossless(kind: str) -> None:
    # Prepare: error feedback relies on this (the ring's first hop re-encodes a round-tripped update).
    codec = make_codec(kind)
    once = codec.round_trip(torch.randn(1000, generator=torch.Generator().manual_seed(1)))
    # Execute
    twice = codec.round_trip(once)
    # Assert
    assert torch.allclose(twice, once, rtol=1e-6, atol=1e-7)


def test_topk_keeps_exactly_the_k_largest_magnitudes_and_zeros_the_rest() -> None:
    # Prepare: a permutation of distinct magnitudes with alternating signs.
    magnitudes = torch.randperm(100, generator=torch.Generator().manual_seed(8)).float() + 1
    values = magnitudes * torch.where(torch.arange(100) % 2 == 0, 1.0, -1.0)
    codec = TopKCodec(0.1)
    # Execute
    decoded = codec.round_trip(values)
    # Assert: values with |x| in 91..100 survive unchanged, everything else is zero.
    kept = values.abs() > 90
    assert torch.equal(decoded[kept], values[kept])
    assert torch.all(decoded[~kept] == 0)


def test_topk_fraction_one_is_lossless() -> None:
    # Prepare
    values = torch.randn(24, generator=torch.Generator().manual_seed(9))
    # Execute / Assert
    assert torch.equal(TopKCodec(1.0).round_trip(values), values)


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan")])
def test_topk_rejects_fraction_outside_unit_interval(fraction: float) -> None:
    # Prepare / Execute / Assert
    with pytest.raises(ValueError, match="fraction="):
        TopKCodec(fraction)


@pytest.mark.parametrize("kind", CODEC_KINDS)
def test_a_message_of_the_wrong_length_is_rejected_naming_both_lengths(kind: str) -> None:
    # Prepare
    codec = make_codec(kind, topk_fraction=0.5)
    message = codec.encode(torch.ones(100))
    # Execute / Assert
    with pytest.raises(
        ValueError, match=f"must have {codec.num_bytes(100)} bytes, got {message.numel() - 1}"
    ):
        codec.decode(message[:-1], 100)


def test_unknown_codec_kind_names_the_allowed_ones() -> None:
    # Prepare / Execute / Assert
    with pytest.raises(ValueError, match="kind='gzip' is unknown; allowed: fp32, fp16"):
        make_codec("gzip")
