"""The wire cost model, the byte ledger and the WAN emulator's time model, against their formulas.

Timing checks compare the emulated clock with the modeled time (virtual clock) or use the modeled time as a
lower bound on real time (sleeping clock); none asserts that anything is fast.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch
import torch.distributed as dist

from farsync.comm.background import BackgroundSync
from farsync.comm.clock import Clock
from farsync.comm.communicator import Communicator
from farsync.comm.cost import Collective, LinkModel, wire_bytes, wire_time
from farsync.comm.ledger import ByteLedger
from farsync.config import NetworkConfig
from farsync.reducers.base import MeanReducer
from farsync.sim.ranks import run_ranks
from farsync.train.build import link_for_group

SLACK_S = 20.0
"""Real loopback time an emulated collective may add on top of its modeled time on a loaded machine."""

# ------------------------------------------------------------------------------------------ cost model


@pytest.mark.parametrize(
    ("collective", "payload", "n", "expected"),
    [
        (Collective.ALL_REDUCE, 1000, 4, 1500),  # 2 (n-1)/n S
        (Collective.ALL_REDUCE, 1000, 2, 1000),
        (Collective.ALL_GATHER, 1000, 4, 3000),  # (n-1) s
        (Collective.REDUCE_SCATTER, 1000, 4, 750),  # (n-1)/n S
        (Collective.ALL_TO_ALL, 1000, 5, 800),
        (Collective.BROADCAST, 1000, 3, 1000),
        (Collective.SEND, 1000, 2, 1000),
        (Collective.RECV, 1000, 2, 0),
        (Collective.ALL_REDUCE, 1000, 1, 0),  # nothing leaves a lone worker
    ],
)
def test_wire_bytes_follow_the_bandwidth_optimal_formulas(
    collective: Collective, payload: int, n: int, expected: int
) -> None:
    # Execute
    sent = wire_bytes(collective, payload, n)
    # Assert
    assert sent == expected


@pytest.mark.parametrize(
    ("collective", "expected_s"),
    [
        # S = 8e6 bytes, n = 4, b = 1e6 bytes/s (8 Mbit/s), l = 0.05 s
        (Collective.ALL_REDUCE, 2 * 3 * (0.05 + 8e6 / (4 * 1e6))),
        (Collective.ALL_GATHER, 3 * (0.05 + 8e6 / 1e6)),
        (Collective.REDUCE_SCATTER, 3 * (0.05 + 8e6 / (4 * 1e6))),
        (Collective.ALL_TO_ALL, 3 * (0.05 + 8e6 / (4 * 1e6))),
        (Collective.BROADCAST, 0.05 * 3 + 8e6 / 1e6),
        (Collective.SEND, 0.05 + 8e6 / 1e6),
    ],
)
def test_wire_time_follows_its_formula(collective: Collective, expected_s: float) -> None:
    # Prepare
    link = LinkModel(bandwidth_bps=8e6, latency_s=0.05)
    # Execute
    seconds = wire_time(collective, 8_000_000, 4, link)
    # Assert
    assert seconds == pytest.approx(expected_s, rel=1e-12)


def test_wire_time_is_zero_for_a_lone_worker() -> None:
    # Execute / Assert
    assert wire_time(Collective.ALL_REDUCE, 10**9, 1, LinkModel(1e6, 1.0)) == 0.0


# ---------------------------------------------------------------------------------------------- ledger


def test_ledger_sums_per_channel_and_round_trips_through_a_dict() -> None:
    # Prepare
    ledger = ByteLedger(rank=3)
    ledger.record_call("sync", "all_reduce", 400, 600, 0.5)
    ledger.record_call("sync", "all_reduce", 400, 600, 0.5)
    ledger.record_call("activations", "send", 100, 100, 0.1)
    ledger.record_blocked("sync", "all_reduce", 0.25)
    ledger.record_sync_peak(600)
    ledger.record_sync_peak(200)
    restored = ByteLedger(rank=3)
    # Execute
    restored.load_dict(ledger.to_dict())
    # Assert
    assert (ledger.bytes_sent(), ledger.bytes_sent("sync"), ledger.bytes_sent("activations")) == (
        1300,
        1200,
        100,
    )
    assert ledger.blocked_s("sync") == pytest.approx(0.25)
    assert ledger.entries[("sync", "all_reduce")].calls == 2
    assert restored.to_dict() == ledger.to_dict()
    assert restored.peak_sync_bytes == 600


def test_ledger_after_a_real_four_rank_all_reduce_equals_the_formula() -> None:
    # Prepare
    world, numel = 4, 1000
    link = LinkModel(bandwidth_bps=8e6, latency_s=1.0)

    def worker(
        rank: int, n: int, group: dist.ProcessGroup | None, _store: dist.Store
    ) -> tuple[ByteLedger, float]:
        comm = Communicator(group, rank, n, clock=Clock("virtual"), link=link)
        tensor = torch.full((numel,), float(rank + 1))
        summed = comm.all_reduce(tensor, op="sum").wait()
        return comm.ledger, float(summed[0])

    # Execute
    results = run_ranks(worker, world, timeout_s=30)
    # Assert
    payload = numel * 4
    modeled = 2 * (world - 1) * (1.0 + payload / (world * 1e6))
    for ledger, first in results:
        entry = ledger.entries[("sync", "all_reduce")]
        assert first == 1 + 2 + 3 + 4
        assert ledger.bytes_sent() == 2 * (world - 1) * payload // world == 6000
        assert (entry.calls, entry.payload_bytes) == (1, payload)
        assert entry.modeled_s == pytest.approx(modeled)
        assert modeled / 2 <= entry.blocked_s <= modeled + SLACK_S


def test_mean_reducer_weights_updates_and_records_the_sync_peak() -> None:
    # Prepare
    weights = [1.0, 3.0, 0.0]

    def worker(
        rank: int, n: int, group: dist.ProcessGroup | None, _store: dist.Store
    ) -> tuple[torch.Tensor, int]:
        comm = Communicator(group, rank, n)
        reducer = MeanReducer(comm)
        update = {"a": torch.full((2, 2), float(rank)), "b": torch.tensor([10.0 * rank])}
        result = reducer(update, weights[rank])
        return torch.cat([result["a"].reshape(-1), result["b"]]), comm.ledger.peak_sync_bytes

    # Execute
    results = run_ranks(worker, 3, timeout_s=30)
    # Assert: (1 * 0 + 3 * 1 + 0 * 2) / 4 = 0.75 for a, 7.5 for b; payload = 5 values + the weight
    for vector, peak in results:
        assert torch.allclose(vector, torch.tensor([0.75] * 4 + [7.5]))
        assert peak == wire_bytes(Collective.ALL_REDUCE, 6 * 4, 3)


def test_world_size_one_sends_nothing_and_returns_the_input() -> None:
    # Prepare
    comm = Communicator(None, 0, 1, link=LinkModel(1e3, 1.0), clock=Clock("virtual"))
    tensor = torch.arange(4.0)
    # Execute
    result = comm.all_reduce(tensor).wait()
    # Assert
    assert torch.equal(result, torch.arange(4.0))
    assert comm.ledger.bytes_sent() == 0
    assert comm.clock.offset == 0.0


# -------------------------------------------------------------------------------------------- emulator


def test_virtual_clock_advances_by_the_modeled_all_reduce_time() -> None:
    # Prepare: 4 MB over a 1 Mbit/s link with 20 ms latency, 2 ranks: 2 * (0.02 + 4e6 / (2 * 125e3)) = 32.04 s
    world, numel = 2, 1_000_000
    link = LinkModel(bandwidth_bps=1e6, latency_s=0.02)
    modeled = wire_time(Collective.ALL_REDUCE, numel * 4, world, link)

    def worker(rank: int, n: int, group: dist.ProcessGroup | None, _store: dist.Store) -> tuple[float, float]:
        clock = Clock("virtual")
        comm = Communicator(group, rank, n, clock=clock, link=link)
        before = clock.now()
        comm.all_reduce(torch.ones(numel)).wait()
        return clock.now() - before, clock.offset

    # Execute
    results = run_ranks(worker, world, timeout_s=30)
    # Assert
    assert modeled == pytest.approx(32.04)
    for elapsed, offset in results:
        assert modeled <= elapsed <= modeled + SLACK_S
        assert 0 < offset <= modeled


def test_sleeping_clock_really_takes_at_least_the_modeled_time() -> None:
    # Prepare: 2 ranks, 0.2 s latency per ring step: 2 * (0.2 + tiny) = 0.4 s
    link = LinkModel(bandwidth_bps=1e9, latency_s=0.2)
    modeled = wire_time(Collective.ALL_REDUCE, 16, 2, link)

    def worker(rank: int, n: int, group: dist.ProcessGroup | None, _store: dist.Store) -> tuple[float, float]:
        comm = Communicator(group, rank, n, clock=Clock("sleep"), link=link)
        begin = time.perf_counter()
        comm.all_reduce(torch.ones(4)).wait()
        return time.perf_counter() - begin, comm.clock.offset

    # Execute
    results = run_ranks(worker, 2, timeout_s=30)
    # Assert
    for elapsed, offset in results:
        assert elapsed >= modeled
        assert offset == 0.0  # sleeping never builds a virtual offset


def test_clock_off_never_waits() -> None:
    # Prepare
    clock = Clock("off")
    # Execute
    waited = clock.wait_until(clock.now() + 1000.0)
    # Assert
    assert waited == 0.0
    assert clock.offset == 0.0


def test_virtual_offsets_are_per_thread() -> None:
    # Prepare
    clock = Clock("virtual")
    seen: list[float] = []
    # Execute
    clock.wait_until(clock.now() + 100.0)
    thread = threading.Thread(target=lambda: seen.append(clock.offset))
    thread.start()
    thread.join()
    # Assert
    assert clock.offset >= 100.0 - 1.0
    assert seen == [0.0]


def _background_case(compute_s: float) -> list[tuple[float, float]]:
    """Each of 2 ranks submits a 10 s (modeled) all-reduce, computes for ``compute_s`` virtual seconds,
    then waits for the result; returns (modeled sync time, time blocked in the wait) per rank."""
    link = LinkModel(bandwidth_bps=1e6, latency_s=5.0)  # 2 * (5 + tiny) ~ 10 s

    def worker(rank: int, n: int, group: dist.ProcessGroup | None, _store: dist.Store) -> tuple[float, float]:
        clock = Clock("virtual")
        ledger = ByteLedger(rank=rank)
        comm = Communicator(group, rank, n, clock=clock, link=link, ledger=ledger)
        background = BackgroundSync(clock, ledger)
        try:
            pending = background.submit(lambda: comm.all_reduce(torch.ones(4), op="sum").wait())
            clock.wait_until(clock.now() + compute_s)  # "compute" on the training thread's clock
            result = pending.wait()
        finally:
            background.close()
        assert torch.equal(result, torch.full((4,), 2.0))
        modeled = comm.modeled_time(Collective.ALL_REDUCE, 16)
        return modeled, ledger.entries[("sync", "background")].blocked_s

    return run_ranks(worker, 2, timeout_s=30)


def test_background_sync_hidden_behind_longer_compute_costs_no_wait() -> None:
    # Execute
    results = _background_case(compute_s=30.0)
    # Assert
    for modeled, blocked in results:
        assert modeled == pytest.approx(10.0, abs=0.01)
        assert blocked < modeled / 2  # only the real loopback time remains, never the emulated 10 s


def test_background_sync_without_compute_costs_its_modeled_time() -> None:
    # Execute
    results = _background_case(compute_s=0.0)
    # Assert
    for modeled, blocked in results:
        assert modeled / 2 <= blocked <= modeled + SLACK_S


def test_a_group_runs_at_its_slowest_members_rate_and_largest_latency() -> None:
    # Prepare
    network = NetworkConfig(
        bandwidth="1Gbit", latency="10ms", worker_bandwidth={"2": "10Mbit"}, worker_latency={"1": "80ms"}
    )
    # Execute
    everyone = link_for_group(network, [0, 1, 2, 3])
    fast_pair = link_for_group(network, [0, 3])
    # Assert
    assert everyone == LinkModel(bandwidth_bps=1e7, latency_s=0.08)
    assert fast_pair == LinkModel(bandwidth_bps=1e9, latency_s=0.01)
    assert link_for_group(NetworkConfig(emulation="off"), [0, 1]) is None
