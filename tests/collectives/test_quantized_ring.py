"""The quantized ring all-reduce on 4 real gloo ranks (threads): accuracy, identical results, ledger bytes."""

import pytest
import torch

from farsync.collectives.quantized_ring import quantized_ring_all_reduce, ring_bytes_sent
from farsync.comm.communicator import Communicator
from farsync.compress import make_codec
from farsync.sim.ranks import run_ranks

WORLD = 4
NUMEL = 50_000


def normal(rank: int, numel: int = NUMEL) -> torch.Tensor:
    return torch.randn(numel, generator=torch.Generator().manual_seed(100 + rank))


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value - reference).norm() / reference.norm())


@pytest.fixture(scope="module")
def ring_results() -> list[dict[str, tuple[torch.Tensor, int]]]:
    """Every rank runs the ring once per codec; returns per rank {kind: (result, bytes sent)}."""

    def on_rank(rank: int, world: int, group: object, store: object) -> dict[str, tuple[torch.Tensor, int]]:
        out = {}
        for kind in ("fp32", "int8", "int4", "fp16", "bf16", "uint8_lookup"):
            comm = Communicator(group, rank, world)  # type: ignore[arg-type]
            result = quantized_ring_all_reduce(comm, normal(rank), kind, 64)
            out[kind] = (result, comm.ledger.bytes_sent())
        return out

    return run_ranks(on_rank, WORLD, prefix="cc-ring")


EXACT = torch.stack([normal(r) for r in range(WORLD)]).mean(dim=0)


def test_int8_ring_is_within_3_percent_of_the_exact_fp32_mean(ring_results) -> None:
    assert relative_error(ring_results[0]["int8"][0], EXACT) < 0.03


@pytest.mark.parametrize(
    ("kind", "bound"),
    [("fp32", 1e-6), ("int4", 0.25), ("fp16", 2e-3), ("bf16", 1e-2), ("uint8_lookup", 0.05)],
)
def test_other_codecs_are_within_their_bounds(ring_results, kind: str, bound: float) -> None:
    assert relative_error(ring_results[0][kind][0], EXACT) < bound


@pytest.mark.parametrize("kind", ["fp32", "int8", "int4", "fp16", "bf16", "uint8_lookup"])
def test_every_rank_ends_with_bitwise_identical_values(ring_results, kind: str) -> None:
    first = ring_results[0][kind][0]
    assert all(torch.equal(first, ring_results[rank][kind][0]) for rank in range(1, WORLD))


@pytest.mark.parametrize("kind", ["int8", "int4", "uint8_lookup"])
def test_ledger_counts_the_compressed_bytes_each_rank_sent(ring_results, kind: str) -> None:
    codec = make_codec(kind, 64)
    for rank in range(WORLD):
        assert ring_results[rank][kind][1] == ring_bytes_sent(NUMEL, rank, WORLD, codec)
    if kind != "uint8_lookup":  # the lookup codec adds a 1 KB table per message
        expected = 2 * (WORLD - 1) / WORLD * codec.num_bytes(NUMEL)
        assert ring_results[0][kind][1] == pytest.approx(expected, rel=0.005)


def test_tiny_and_odd_sizes_and_two_ranks_do_not_deadlock() -> None:
    # Fewer blocks than ranks leaves some chunks empty; 2 ranks make left and right the same peer.
    def on_rank(rank: int, world: int, group: object, store: object) -> list[torch.Tensor]:
        comm = Communicator(group, rank, world)  # type: ignore[arg-type]
        return [
            quantized_ring_all_reduce(comm, torch.full((n,), float(rank + 1)), 8, 64, op="sum")
            for n in (1, 65, 130)
        ]

    for world in (2, 3):
        results = run_ranks(on_rank, world, prefix=f"cc-ring-small-{world}")
        total = sum(range(1, world + 1))
        for result in results[0]:
            assert torch.allclose(result, torch.full_like(result, float(total)), rtol=1e-2)


def test_world_size_one_returns_the_input_unquantized() -> None:
    comm = Communicator(None, 0, 1)
    vector = torch.randn(10, 3)
    result = quantized_ring_all_reduce(comm, vector, 4, 64)
    assert torch.equal(result, vector) and comm.ledger.bytes_sent() == 0
