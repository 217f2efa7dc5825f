"""Blockwise absmax quantization: hand-computed codes, the scale/2 error bound, packing and bytes."""

import math

import pytest
import torch

from farsync.compress import (
    BlockwiseCodec,
    dequantize_blockwise,
    pack_int4,
    quantize_blockwise,
    quantized_num_bytes,
    unpack_int4,
)


def test_int8_codes_and_scale_match_hand_computation() -> None:
    # Prepare: one block with absmax 4, so scale = 4/127 and codes = round(x * 127/4).
    x = torch.tensor([1.0, -2.0, 0.5, 4.0])
    # Execute
    codes, scales = quantize_blockwise(x, bits=8, block_size=4)
    # Assert: 31.75 -> 32, -63.5 -> -64 (half to even), 15.875 -> 16, 127.
    assert codes.dtype == torch.int8
    assert codes.tolist() == [32, -64, 16, 127]
    assert scales.dtype == torch.float32
    assert scales.tolist() == pytest.approx([4.0 / 127])


def test_int4_codes_are_packed_two_per_byte_low_nibble_first() -> None:
    # Prepare: absmax 7 gives scale 1, so codes equal the values; stored nibbles are value + 8.
    x = torch.tensor([-7.0, 7.0, 0.0])
    # Execute
    codes, scales = quantize_blockwise(x, bits=4, block_size=4)
    # Assert: byte 0 = (7+8)<<4 | (-7+8) = 0xF1; byte 1 = pad 8 << 4 | (0+8) = 0x88.
    assert codes.dtype == torch.uint8
    assert codes.tolist() == [0xF1, 0x88]
    assert scales.tolist() == [1.0]


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_blockwise_error_is_at_most_half_a_scale_per_element(bits: int) -> None:
    # Prepare: 1000 values (last block of 64 is padded), very different magnitudes per block.
    block_size = 64
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(1000, generator=generator) * torch.logspace(-6, 2, 1000)
    # Execute
    codes, scales = quantize_blockwise(x, bits, block_size)
    decoded = dequantize_blockwise(codes, scales, bits, block_size, x.numel())
    # Assert: scale recomputed by hand from each block's absmax.
    qmax = 2 ** (bits - 1) - 1
    padded = torch.cat([x, x.new_zeros(1024 - 1000)]).view(16, block_size)
    expected_scales = padded.abs().amax(dim=1) / qmax
    torch.testing.assert_close(scales, expected_scales)
    per_element_scale = expected_scales.repeat_interleave(block_size)[:1000]
    assert torch.all((decoded - x).abs() <= per_element_scale / 2 * (1 + 1e-5))


def test_zero_block_decodes_to_zero() -> None:
    # Prepare
    x = torch.cat([torch.zeros(8), torch.tensor([3.0, -1.0])])
    # Execute
    codes, scales = quantize_blockwise(x, bits=8, block_size=8)
    decoded = dequantize_blockwise(codes, scales, 8, 8, x.numel())
    # Assert
    assert scales[0].item() == 0.0
    assert torch.equal(decoded[:8], torch.zeros(8))
    assert decoded[8].item() == pytest.approx(3.0)


def test_int2_codes_are_ternary_packed_four_per_byte_lowest_bits_first() -> None:
    # Prepare: absmax 2 gives scale 2 (qmax 1); 1.2 -> round(0.6) = 1, -0.9 -> round(-0.45) = 0, -2 -> -1.
    x = torch.tensor([1.2, -0.9, -2.0, 2.0, 0.0])
    # Execute
    codes, scales = quantize_blockwise(x, bits=2, block_size=8)
    decoded = dequantize_blockwise(codes, scales, 2, 8, x.numel())
    # Assert: stored codes are value + 1: [2, 1, 0, 2] -> 2 | 1<<2 | 0<<4 | 2<<6 = 0x86; [1, pad 1, 1, 1] = 0x55.
    assert codes.tolist() == [0x86, 0x55]
    assert scales.tolist() == [2.0]
    assert decoded.tolist() == [2.0, 0.0, -2.0, 2.0, 0.0]


def test_pack_unpack_int4_round_trips_every_value_with_odd_length() -> None:
    # Prepare
    values = torch.arange(-8, 8, dtype=torch.int8).repeat(3)[:-1]
    # Execute
    packed = pack_int4(values)
    unpacked = unpack_int4(packed, values.numel())
    # Assert
    assert packed.numel() == math.ceil(values.numel() / 2)
    assert torch.equal(unpacked, values)


@pytest.mark.parametrize(
    ("bits", "numel", "expected"),
    [(8, 1000, 1000 + 4 * 16), (4, 1000, 500 + 4 * 16), (4, 999, 500 + 4 * 16), (2, 1001, 251 + 4 * 16)],
)
def test_blockwise_codec_bytes_are_codes_plus_fp32_scales(bits: int, numel: int, expected: int) -> None:
    # Prepare
    values = torch.randn(numel, generator=torch.Generator().manual_seed(3))
    codec = BlockwiseCodec(bits, block_size=64)
    # Execute
    message = codec.encode(values)
    decoded = codec.decode(message, numel)
    # Assert
    assert message.numel() == expected == quantized_num_bytes(numel, bits, 64)
    _, scales = quantize_blockwise(values, bits, 64)
    scale_per_element = scales.repeat_interleave(64)[:numel]
    assert torch.all((decoded - values).abs() <= scale_per_element / 2 * (1 + 1e-5))


def test_blockwise_codec_rejects_unsupported_bits() -> None:
    # Prepare / Execute / Assert
    with pytest.raises(ValueError, match="bits=16"):
        BlockwiseCodec(16)
