"""SparseLoCo's message: chunks, the DCT basis, the 2-bit statistical quantizer, bit packing, the wire layout."""

import math

import pytest
import torch

from farsync.compress import SparseLoCoCodec, chunk_layout, dct_basis, quantize_statistical, sparse_codec
from farsync.compress.chunking import largest_divisor_at_most
from farsync.compress.sparseloco import pack_bits, unpack_bits


def test_largest_divisor_at_most() -> None:
    # Prepare / Execute / Assert
    assert [largest_divisor_at_most(n, 64) for n in (64, 256, 192, 100, 257, 1)] == [64, 64, 64, 50, 1, 1]
    assert largest_divisor_at_most(10, 4) == 2


def test_a_matrix_is_cut_into_tiles_and_put_back() -> None:
    # Prepare: a 4 x 6 matrix, tiles of 2 x 2 (2 divides 4 and 6)
    matrix = torch.arange(24.0).reshape(4, 6)
    layout = chunk_layout(matrix.shape, 2)
    # Execute
    chunks = layout.to_chunks(matrix)
    # Assert: tiles in row-major tile order, each tile's values row-major
    assert (layout.tile_rows, layout.tile_cols, layout.num_chunks) == (2, 2, 6)
    assert chunks[0].tolist() == [0, 1, 6, 7]
    assert chunks[1].tolist() == [2, 3, 8, 9]
    assert chunks[3].tolist() == [12, 13, 18, 19]
    assert torch.equal(layout.from_chunks(chunks), matrix)


def test_a_vector_is_cut_into_runs_of_the_largest_divisor() -> None:
    # Prepare / Execute
    layout = chunk_layout((10,), 4)
    # Assert: 10 has no divisor 3 or 4, so runs of 2
    assert (layout.tile_rows, layout.chunk_len, layout.num_chunks) == (1, 2, 5)
    assert layout.to_chunks(torch.arange(10.0))[1].tolist() == [2, 3]


def test_dct_basis_is_the_orthonormal_dct_ii() -> None:
    # Prepare / Execute
    basis = dct_basis(4)
    # Assert: C[k, i] = s_k cos(pi (2i + 1) k / 8), s_0 = 1/2, s_k = sqrt(1/2); C C^T = I
    assert basis[0, 3].item() == pytest.approx(0.5)
    assert basis[1, 0].item() == pytest.approx(math.sqrt(0.5) * math.cos(math.pi / 8))
    assert basis[2, 1].item() == pytest.approx(math.sqrt(0.5) * math.cos(3 * math.pi / 4))
    assert torch.allclose(basis @ basis.T, torch.eye(4), atol=1e-6)


def test_a_constant_tile_has_one_dct_coefficient() -> None:
    # Prepare: a 2 x 4 tile of 3s
    layout = chunk_layout((2, 4), 4)
    chunks = layout.to_chunks(torch.full((2, 4), 3.0))
    # Execute
    coefficients = layout.dct(chunks)
    # Assert: Y[0, 0] = 3 sqrt(8), nothing else; the inverse gives the tile back
    assert coefficients[0, 0].item() == pytest.approx(3 * math.sqrt(8))
    assert coefficients[0, 1:].abs().max().item() < 1e-5
    assert torch.allclose(layout.idct(coefficients), chunks, atol=1e-5)


def test_quantize_statistical_by_hand() -> None:
    # Prepare: mean 1.5, centred (2.5, 1.5, -0.5, -3.5), sigma = sqrt(21 / 3), scale = 6 sigma / 4 = 3.969;
    # centred / scale + 2 = (2.63, 2.38, 1.87, 1.12) -> codes (3, 2, 2, 1)
    values = torch.tensor([4.0, 3.0, 1.0, -2.0])
    # Execute
    codes, table = quantize_statistical(values)
    # Assert: a code decodes to its bin's mean (code 0 is empty: the shift 1.5)
    assert codes.tolist() == [3, 2, 2, 1]
    assert table.tolist() == pytest.approx([1.5, -2.0, 2.0, 4.0])


def test_pack_bits_by_hand() -> None:
    # Prepare: 5, 0, 7, 1 at 3 bits, little-endian: 1 0 1 | 0 0 0 | 1 1 1 | 1 0 0
    values = torch.tensor([5, 0, 7, 1])
    # Execute
    packed = pack_bits(values, 3)
    # Assert: byte 0 = bits 1,0,1,0,0,0,1,1 = 197; byte 1 = bits 1,1,0,0 (7's last, then 1) = 3
    assert packed.tolist() == [197, 3]
    assert unpack_bits(packed, 3, 4).tolist() == [5, 0, 7, 1]


@pytest.mark.parametrize(("shape", "expected"), [((64, 64), 128), ((256, 64), 464), ((64,), 18)])
def test_message_bytes_follow_the_layout(shape: tuple[int, ...], expected: int) -> None:
    # Prepare: k = 64 of a 4,096 tile (12-bit offsets, 2-bit codes), 1 of a 64-run (6-bit offsets)
    codec = SparseLoCoCodec(1 / 64, 64)
    tensor = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    # Execute
    message, sent = codec.encode(tensor)
    # Assert: 16 table bytes + ceil(C k 12 / 8) + ceil(C k / 4) for a tile; the receiver decodes `sent`
    assert message.numel() == codec.num_bytes(shape) == expected
    assert torch.equal(codec.decode(message, shape), sent)
    assert int((sent != 0).sum()) == codec.layout(shape).num_chunks * codec.kept_per_chunk(shape)


def test_top_k_keeps_the_largest_of_every_chunk() -> None:
    # Prepare: two runs of 4; k = 2 of each; kept values {4, -2, -2, 4} quantize exactly (bins 3 and 1)
    codec = SparseLoCoCodec(0.5, 4)
    tensor = torch.tensor([4.0, 0.1, -2.0, 0.3, 0.2, -2.0, 0.1, 4.0])
    # Execute
    message, sent = codec.encode(tensor)
    # Assert: each value lands at its own offset, in the sender's and in the receiver's copy
    expected = [4.0, 0, -2.0, 0, 0, -2.0, 0, 4.0]
    assert sent.tolist() == pytest.approx(expected)
    assert codec.decode(message, tensor.shape).tolist() == pytest.approx(expected)


def test_dct_chunks_send_a_cosine_tile_in_one_value() -> None:
    # Prepare: a 4 x 4 tile equal to one 2-D DCT basis function (coefficient (1, 2)) times 2
    basis = dct_basis(4)
    tile = 2.0 * torch.outer(basis[1], basis[2])
    plain, dct = (
        SparseLoCoCodec(1 / 16, 4),
        sparse_codec("sparseloco_dct", topk_fraction=1 / 16, chunk_size=4),
    )
    # Execute
    _, plain_sent = plain.encode(tile)
    message, dct_sent = dct.encode(tile)
    # Assert: one coefficient carries the whole tile; one value of the tile itself does not
    assert torch.allclose(dct_sent, tile, atol=1e-5)
    assert torch.allclose(dct.decode(message, tile.shape), tile, atol=1e-5)
    assert (plain_sent - tile).norm() > 0.5 * tile.norm()


def test_bad_messages_raise_value_errors() -> None:
    # Prepare: 6 values in one run of 6: 3-bit offsets, so 6 and 7 are out of range
    codec = SparseLoCoCodec(1 / 6, 6)
    message, _ = codec.encode(torch.arange(6.0))
    out_of_range = message.clone()
    out_of_range[16] = 0b111  # the one offset: 7
    nan_table = message.clone()
    nan_table[:4] = torch.tensor([float("nan")]).view(torch.uint8)
    # Execute / Assert
    with pytest.raises(ValueError, match="must have 18 bytes, got 17"):
        codec.decode(message[:-1], (6,))
    with pytest.raises(ValueError, match="offset >= its chunk length 6"):
        codec.decode(out_of_range, (6,))
    with pytest.raises(ValueError, match="non-finite value table"):
        codec.decode(nan_table, (6,))


def test_bad_settings_raise_value_errors() -> None:
    # Prepare / Execute / Assert
    with pytest.raises(ValueError, match=r"fraction=0 must be in \(0, 1\]"):
        SparseLoCoCodec(0)
    with pytest.raises(ValueError, match="transform='fft' is unknown; allowed: 'none', 'dct'"):
        SparseLoCoCodec(0.1, 64, "fft")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kind='int8' is not sparse"):
        sparse_codec("int8")
