"""A compression kind means the same bytes on the wire with or without robust aggregation (int8, lowrank):
the same codec, the same message size, and the ledger bytes that follow from them on 4 gloo ranks."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from farsync.comm.communicator import Communicator
from farsync.compress import LowRankCodec
from farsync.config import load_config
from farsync.reducers.compressed import LowRankReducer, RingReducer
from farsync.reducers.robust import RobustReducer
from farsync.sim.ranks import run_ranks
from farsync.train.build import build_reducer

WORLD = 4
SUMMARY_BYTES = 8 * 6
"""The robust reducer's per-worker summary (six float64 numbers), all-gathered before any update moves."""
BASIS = torch.randn(64, 2, generator=torch.Generator().manual_seed(3))


def _update(rank: int) -> dict[str, torch.Tensor]:
    """The same rank-2 matrix on every worker, plus a bias that differs per worker (4 x 64 x 5 values)."""
    generator = torch.Generator().manual_seed(10 + rank)
    return {
        "w": BASIS @ torch.randn(2, 64, generator=torch.Generator().manual_seed(4)) * 1e-2,
        "b": torch.randn(1024, generator=generator) * 1e-2,
    }


def _both(kind: str, comm: Communicator) -> tuple[Any, RobustReducer]:
    """The run's reducer for ``kind`` without and with robust aggregation (the median)."""
    compression = [
        f"compression.kind={kind}",
        "compression.bits=8",
        "compression.rank=2",
        f"num_workers={WORLD}",
    ]
    plain = build_reducer(load_config(None, compression), comm)
    robust = build_reducer(load_config(None, [*compression, "aggregation.rule=median"]), comm)
    assert isinstance(robust, RobustReducer)
    return plain, robust


def test_int8_shards_travel_in_the_rings_codec() -> None:
    # Prepare
    plain, robust = _both("int8", Communicator(None, 0, 1))
    values = torch.randn(4096, generator=torch.Generator().manual_seed(1))
    # Execute / Assert: byte-identical messages for the same values, at every length.
    assert isinstance(plain, RingReducer) and robust.lowrank is None
    assert torch.equal(plain.codec.encode(values), robust.codec.encode(values))
    assert all(plain.codec.num_bytes(n) == robust.codec.num_bytes(n) for n in (1, 63, 64, 1000))


def test_lowrank_sends_the_same_quantized_factor_message() -> None:
    # Prepare
    plain, robust = _both("lowrank", Communicator(None, 0, 1))
    named = _update(0)
    # Execute
    plain.reduce(named)
    # Assert: P and Q at 8 bits in the same codec and layout; the ring's message adds the weight's 4 bytes.
    assert isinstance(plain, LowRankReducer) and isinstance(robust.lowrank, LowRankCodec)
    assert robust.lowrank.codec.name == "int8" and robust.lowrank.bits == plain.engine.bits == 8
    last = plain.engine.last
    assert last is not None
    assert robust.lowrank.num_bytes([t.shape for t in named.values()]) + 4 == last.message_bytes


@pytest.mark.parametrize("kind", ["int8", "lowrank"])
def test_robust_round_sends_what_the_codec_says_and_aggregates(kind: str) -> None:
    # Prepare
    numel = sum(t.numel() for t in _update(0).values())  # 5120: four shards of 1280 = 20 blocks of 64

    def on_rank(rank: int, world: int, group: Any, _store: Any) -> tuple[int, int, dict[str, torch.Tensor]]:
        comm = Communicator(group, rank, world)
        _, robust = _both(kind, comm)
        result = robust(_update(rank))
        if robust.lowrank is not None:
            message = robust.lowrank.num_bytes([t.shape for t in _update(rank).values()])
        else:
            message = robust.codec.num_bytes(numel)
        return comm.ledger.bytes_sent(), message, result

    # Execute
    results = run_ranks(on_rank, WORLD, prefix=f"same-wire-{kind}", timeout_s=60)
    # Assert
    n = WORLD
    for bytes_sent, message, result in results:
        if kind == "int8":  # all-to-all of n - 1 shards, all-gather of the reduced shard and n verdicts
            shard = message // n
            assert bytes_sent == (n - 1) * (SUMMARY_BYTES + 2 * shard + 4 * n)
        else:  # the gather path: the message sizes (8 bytes), then the whole message
            assert bytes_sent == (n - 1) * (SUMMARY_BYTES + 8 + message)
            assert message < 4 * numel / 3
        expected_w = _update(0)["w"]
        torch.testing.assert_close(result["w"], expected_w, atol=2e-2 * expected_w.abs().max(), rtol=0)
        assert torch.equal(result["b"], results[0][2]["b"])  # identical on every worker
