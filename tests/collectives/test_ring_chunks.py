"""The quantized ring's layout (pure): chunks on block boundaries and the exact bytes each rank sends."""

import pytest

from farsync.collectives.quantized_ring import ring_bytes_sent, ring_chunks
from farsync.compress import make_codec


def test_ring_chunks_cover_the_vector_on_block_boundaries() -> None:
    # Prepare / Execute
    chunks = ring_chunks(numel=1000, world_size=4, block_size=64, num_pieces=3)
    # Assert
    ranges = sorted(r for chunk in chunks for r in chunk if r[1] > r[0])
    assert ranges[0][0] == 0 and ranges[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    assert all(start % 64 == 0 for start, _ in ranges)


def test_ring_bytes_are_two_n_minus_one_over_n_of_the_encoded_vector() -> None:
    # Prepare
    codec = make_codec("int8", 64)
    numel, world = 64 * 400, 4
    # Execute / Assert
    expected = 2 * (world - 1) / world * codec.num_bytes(numel)
    for rank in range(world):
        assert ring_bytes_sent(numel, rank, world, codec) == pytest.approx(expected, rel=1e-9)
