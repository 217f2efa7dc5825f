"""Wire codecs (pure) and the ring's link pacing (with a fake handle): sizes, error bounds, no fp16 overflow."""

import math
from types import SimpleNamespace

import pytest
import torch

from farsync.collectives.quantized_ring import _LinkPacer, ring_bytes_sent, ring_chunks
from farsync.collectives.ring_codecs import CODEC_KINDS, make_codec
from farsync.comm.cost import LinkModel


@pytest.mark.parametrize("kind", CODEC_KINDS)
@pytest.mark.parametrize("numel", [0, 1, 63, 64, 1000])
def test_message_is_exactly_num_bytes_and_decodes_to_numel_values(kind: str, numel: int) -> None:
    # Prepare
    codec = make_codec(kind, block_size=64)
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
    [("fp32", 1e-7), ("int8", 0.01), ("int4", 0.2), ("fp16", 1e-3), ("bf16", 5e-3), ("uint8_lookup", 0.03)],
)
def test_round_trip_relative_error_on_normal_data(kind: str, bound: float) -> None:
    values = torch.randn(4096, generator=torch.Generator().manual_seed(0))
    error = (make_codec(kind).round_trip(values) - values).norm() / values.norm()
    assert float(error) <= bound


def test_int8_message_size_is_codes_plus_one_fp32_scale_per_block() -> None:
    # 1000 values in blocks of 64: 16 blocks -> 1000 + 64 bytes; int4 packs two codes per byte.
    assert make_codec("int8", 64).num_bytes(1000) == 1000 + 4 * 16
    assert make_codec("int4", 64).num_bytes(1000) == 500 + 4 * 16
    assert make_codec("fp16", 64).num_bytes(1000) == 2000 + 4 * 16
    assert make_codec("uint8_lookup").num_bytes(1000) == 1000 + 1024


def test_fp16_codec_does_not_overflow_large_values() -> None:
    # A plain fp16 cast turns 1e6 into inf; the block-scaled codec keeps it to fp16 relative precision.
    values = torch.tensor([1e6, -3e5, 7.0, 0.0])
    decoded = make_codec("fp16").round_trip(values)
    assert torch.isfinite(decoded).all()
    assert torch.allclose(decoded, values, rtol=1e-3, atol=1e6 * 1e-3)


@pytest.mark.parametrize("kind", ["int8", "int4", "fp16", "bf16"])
def test_re_encoding_decoded_values_is_lossless(kind: str) -> None:
    # Error feedback relies on this: the ring's first hop re-encodes an already round-tripped update.
    codec = make_codec(kind)
    once = codec.round_trip(torch.randn(1000, generator=torch.Generator().manual_seed(1)))
    twice = codec.round_trip(once)
    assert torch.allclose(twice, once, rtol=1e-6, atol=1e-7)


def test_ring_chunks_cover_the_vector_on_block_boundaries() -> None:
    chunks = ring_chunks(numel=1000, world_size=4, block_size=64, num_pieces=3)
    ranges = sorted(r for chunk in chunks for r in chunk if r[1] > r[0])
    assert ranges[0][0] == 0 and ranges[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    assert all(start % 64 == 0 for start, _ in ranges)


def test_ring_bytes_are_two_n_minus_one_over_n_of_the_encoded_vector() -> None:
    codec = make_codec("int8", 64)
    numel, world = 64 * 400, 4
    expected = 2 * (world - 1) / world * codec.num_bytes(numel)
    for rank in range(world):
        assert ring_bytes_sent(numel, rank, world, codec) == pytest.approx(expected, rel=1e-9)


def test_pacer_overlaps_send_and_receive_and_serialises_messages() -> None:
    # Prepare: a 1 MB/s link with 10 ms latency; two messages of 1000 bytes posted at t = 0.
    comm = SimpleNamespace(link=LinkModel(bandwidth_bps=8e6, latency_s=0.01))
    outgoing, incoming = _LinkPacer(comm), _LinkPacer(comm)  # type: ignore[arg-type]
    send1, recv1, send2 = (SimpleNamespace(start=0.0, modeled_s=0.0) for _ in range(3))
    # Execute
    outgoing.pace(send1, 1000, arriving=False)  # type: ignore[arg-type]
    incoming.pace(recv1, 1000, arriving=True)  # type: ignore[arg-type]
    outgoing.pace(send2, 1000, arriving=False)  # type: ignore[arg-type]
    # Assert: the send and receive of one step run side by side (full duplex); the second send queues.
    assert send1.start + send1.modeled_s == pytest.approx(0.001)
    assert recv1.start + recv1.modeled_s == pytest.approx(0.011)
    assert send2.start == pytest.approx(0.001) and send2.start + send2.modeled_s == pytest.approx(0.002)
    assert math.isfinite(outgoing.free_at)
