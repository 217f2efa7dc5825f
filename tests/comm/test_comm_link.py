"""The one link wait (LinkEmulator): lanes serialise messages, and the ring, gossip and a streaming-style
lane all take the time the cost model gives for what they send (virtual clock, gloo ranks as threads)."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from farsync.algorithms.gossip import Gossip
from farsync.collectives.quantized_ring import quantized_ring_all_reduce
from farsync.comm.clock import Clock
from farsync.comm.communicator import Communicator
from farsync.comm.cost import Collective, LinkModel, wire_time
from farsync.comm.ledger import ByteLedger
from farsync.comm.link import LinkEmulator
from farsync.config import GossipConfig
from farsync.sim.ranks import run_ranks

SLACK_S = 5.0
"""Real (loopback and CPU) time a virtual-clock measurement may add on a loaded machine."""
LINK = LinkModel(bandwidth_bps=8e6, latency_s=2.0)
"""1 MB/s and a 2 s latency: emulated times of tens of seconds dwarf the real ones."""


def test_lane_overlaps_send_and_receive_and_serialises_messages() -> None:
    # Prepare: a 1 MB/s link with 10 ms latency; two messages of 1000 bytes posted at t = 0.
    emulator = LinkEmulator(LinkModel(8e6, 0.01), Clock("virtual"), ByteLedger(), "sync", 2)
    outgoing, incoming = emulator.lane(), emulator.lane()
    send1, recv1, send2 = (SimpleNamespace(start=0.0, modeled_s=0.0) for _ in range(3))
    # Execute
    outgoing.pace(send1, 1000, arriving=False)
    incoming.pace(recv1, 1000, arriving=True)
    outgoing.pace(send2, 1000, arriving=False)
    # Assert: the send and receive of one step run side by side (full duplex); the second send queues.
    assert send1.start + send1.modeled_s == pytest.approx(0.001)
    assert recv1.start + recv1.modeled_s == pytest.approx(0.011)
    assert send2.start == pytest.approx(0.001) and send2.start + send2.modeled_s == pytest.approx(0.002)
    assert math.isfinite(outgoing.free_at)


def test_a_lane_without_a_link_model_changes_nothing() -> None:
    # Prepare
    lane = LinkEmulator(None, Clock("virtual"), ByteLedger(), "sync", 2).lane()
    message = SimpleNamespace(start=1.0, modeled_s=0.5)
    # Execute
    lane.pace(message, 10**9, arriving=True)
    # Assert
    assert (message.start, message.modeled_s) == (1.0, 0.5)


def test_a_sync_waits_until_the_previous_one_has_left_the_lane() -> None:
    # Prepare: a sync that ended at t ~ 100 s, then a background job restarting from the trainer's offset 0.
    clock = Clock("virtual")
    lane = LinkEmulator(LINK, clock, ByteLedger(), "sync", 2).lane()
    clock.wait_until(100.0)
    lane.release()
    clock.adopt(0.0)
    # Execute
    waited = lane.wait_free()
    # Assert
    assert waited == pytest.approx(100.0, abs=1.0)
    assert clock.now() >= lane.free_at


@pytest.mark.parametrize("world", [2, 4])
def test_ring_all_reduce_takes_the_cost_models_all_reduce_time(world: int) -> None:
    # Prepare: fp32 chunks, one piece per chunk (the textbook ring): 2(n-1) steps of latency + chunk / rate.
    numel = 64 * 250 * world
    modeled = wire_time(Collective.ALL_REDUCE, 4 * numel, world, LINK)

    def on_rank(rank: int, n: int, group: Any, _store: Any) -> float:
        clock = Clock("virtual")
        comm = Communicator(group, rank, n, clock=clock, link=LINK)
        begin = clock.now()
        quantized_ring_all_reduce(comm, torch.ones(numel), "fp32", num_pieces=1)
        return clock.now() - begin

    # Execute
    elapsed = run_ranks(on_rank, world, prefix=f"link-ring-{world}", timeout_s=60)
    # Assert
    for seconds in elapsed:
        assert modeled <= seconds <= modeled + SLACK_S


class _Point(nn.Module):
    def __init__(self, numel: int) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.zeros(numel))


def test_gossip_exchange_takes_one_send_time_per_neighbour_on_the_shared_uplink() -> None:
    # Prepare: 3 ranks on a ring, each with 2 neighbours; one mixing sends 40 kB to each.
    numel, world = 10_000, 3
    per_send = wire_time(Collective.SEND, 4 * numel, world, LINK)

    def on_rank(rank: int, n: int, group: Any, _store: Any) -> tuple[float, float]:
        clock = Clock("virtual")
        comm = Communicator(group, rank, n, clock=clock, link=LINK)
        model = _Point(numel)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        gossip = Gossip(model, optimizer, comm, GossipConfig(topology="ring"), num_steps=10)
        begin = clock.now()
        gossip.mix()
        return clock.now() - begin, comm.ledger.entries[("sync", "send")].blocked_s

    # Execute
    results = run_ranks(on_rank, world, prefix="link-gossip", timeout_s=60)
    # Assert: the two sends leave one after the other; the receives arrive meanwhile.
    for elapsed, blocked in results:
        assert 2 * per_send <= elapsed <= 2 * per_send + SLACK_S
        assert blocked > 0
