"""Run-directory transports: atomic messages claimed once, versions published with a marker and a checksum,
old versions kept while a reader holds them, timeouts instead of hangs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from farsync.rl.files import DirectoryRolloutChannel
from farsync.rl.transport import InProcessRolloutChannel, InProcessWeights, WeightsUnavailable


def test_directory_channel_delivers_each_message_once_in_order(tmp_path: Path) -> None:
    sender = DirectoryRolloutChannel(tmp_path / "r")
    first, second = DirectoryRolloutChannel(tmp_path / "r"), DirectoryRolloutChannel(tmp_path / "r")
    for index in range(5):
        sender.push(f"m{index}".encode())
    (tmp_path / "r" / ".half-written.tmp").write_bytes(b"{")  # a writer mid-way: never read
    assert sender.pending() == 5
    got = first.pull(3, timeout_s=0.1) + second.pull(10, timeout_s=0.1)
    assert got == [f"m{i}".encode() for i in range(5)]
    assert first.pull(1, timeout_s=0.05) == []
    assert sender.pending() == 0


def test_directory_channel_reads_at_most_the_limit_plus_one(tmp_path: Path) -> None:
    channel = DirectoryRolloutChannel(tmp_path, max_message_bytes=10)
    channel.push(b"x" * 1000)
    assert channel.pull(1, timeout_s=0.1) == [b"x" * 11]


def test_in_process_channel_pull_times_out_empty() -> None:
    channel = InProcessRolloutChannel()
    assert channel.pull(4, timeout_s=0.01) == []
    channel.push(b"a")
    channel.push(b"b")
    assert channel.pending() == 2
    assert channel.pull(4, timeout_s=0.01) == [b"a", b"b"]


def _state(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((3,), value), "b": torch.tensor([value])}


def test_in_process_weights_fetch_the_newest_version_and_time_out() -> None:
    store = InProcessWeights()
    with pytest.raises(WeightsUnavailable):
        store.fetch_latest(0.05)
    store.publish(0, _state(0.0))
    store.publish(1, _state(1.0))
    version, state = store.fetch_latest(0.05)
    assert version == 1 and torch.equal(state["w"], torch.ones(3))
    with pytest.raises(WeightsUnavailable):
        store.fetch_latest(0.05, newer_than=1)
