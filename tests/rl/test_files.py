"""Run-directory transports: atomic messages claimed once, versions published with a marker and a checksum,
old versions kept while a reader holds them, timeouts instead of hangs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from farsync.rl.files import DirectoryRolloutChannel, DirectoryWeights
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


@pytest.mark.parametrize("kind", ["directory", "in_process"])
def test_weights_fetch_the_newest_version_and_time_out(tmp_path: Path, kind: str) -> None:
    store = DirectoryWeights(tmp_path) if kind == "directory" else InProcessWeights()
    with pytest.raises(WeightsUnavailable):
        store.fetch_latest(0.05)
    store.publish(0, _state(0.0))
    store.publish(1, _state(1.0))
    version, state = store.fetch_latest(0.05)
    assert version == 1 and torch.equal(state["w"], torch.ones(3))
    with pytest.raises(WeightsUnavailable):
        store.fetch_latest(0.05, newer_than=1)


def test_a_version_without_its_marker_or_with_a_bad_checksum_is_not_loaded(tmp_path: Path) -> None:
    store = DirectoryWeights(tmp_path)
    store.publish(0, _state(0.0))
    (tmp_path / "v00000001.safetensors").write_bytes(b"half")  # no marker yet: invisible
    assert store.latest_version() == 0
    store.publish(2, _state(2.0))
    data = bytearray((tmp_path / "v00000002.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "v00000002.safetensors").write_bytes(bytes(data))
    with pytest.raises(WeightsUnavailable):
        store.fetch_latest(0.05, newer_than=0)


def test_old_versions_are_deleted_only_after_every_reader_moved_past(tmp_path: Path) -> None:
    publisher = DirectoryWeights(tmp_path, keep=1)
    slow = DirectoryWeights(tmp_path, reader_id="slow")
    publisher.publish(0, _state(0.0))
    assert slow.fetch_latest(0.1)[0] == 0
    for version in range(1, 4):
        publisher.publish(version, _state(float(version)))
    assert (tmp_path / "v00000000.safetensors").exists()  # the slow reader still holds version 0
    assert slow.fetch_latest(0.1)[0] == 3
    publisher.publish(4, _state(4.0))
    assert not (tmp_path / "v00000000.safetensors").exists()
    assert not (tmp_path / "v00000002.complete").exists()
    assert (tmp_path / "v00000003.safetensors").exists()
