"""Weight broadcast through a relay: sharding, checksums, corruption, resume, garbage collection, ledger."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

import farsync.rl.broadcast as broadcast
from farsync.comm.clock import Clock
from farsync.comm.cost import LinkModel
from farsync.comm.ledger import ByteLedger
from farsync.comm.link import LinkEmulator
from farsync.rl.broadcast import BroadcastFailed, RelayPublisher, RelaySource, version_dir
from farsync.rl.broadcast_faults import BreakingRelay, CorruptingRelay
from farsync.rl.broadcast_manifest import ManifestLimits, ManifestRejected, parse_manifest, plan_shards
from farsync.rl.broadcast_relay import DirectoryRelay, HttpRelay, RelayServer, check_name
from farsync.rl.broadcast_writer import LatestWinsWriter
from farsync.rl.transport import WeightPublisher, WeightSource, WeightsUnavailable


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": torch.randn(64, 32, generator=generator),  # 8192 bytes
        "block.0.weight": torch.randn(32, 32, generator=generator),  # 4096
        "block.0.bias": torch.randn(32, generator=generator),  # 128
        "block.1.weight": torch.randn(32, 32, generator=generator).to(torch.bfloat16),  # 2048
        "steps": torch.tensor([3], dtype=torch.int64),  # 8
        "head.weight": torch.randn(16, 32, generator=generator),  # 2048
    }


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return sorted(a) == sorted(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def _setup(tmp_path: Path, **source_options: object) -> tuple[RelayPublisher, RelaySource]:
    publisher = RelayPublisher(tmp_path / "relay", shard_bytes=4096)
    source = RelaySource(DirectoryRelay(tmp_path / "relay"), tmp_path / "cache", "w0", **source_options)  # type: ignore[arg-type]
    return publisher, source


def test_plan_shards_batches_by_bytes_in_order() -> None:
    groups = plan_shards(_state(), shard_bytes=4096)
    # 8192 alone (larger than a shard); 4096 fills one; 128 + 2048 fit, + 8 fits, + 2048 would pass 4096.
    assert groups == [
        ["embed.weight"],
        ["block.0.weight"],
        ["block.0.bias", "block.1.weight", "steps"],
        ["head.weight"],
    ]
    assert plan_shards(_state(), shard_bytes=10**9) == [list(_state())]


def test_roundtrip_is_bit_exact_and_satisfies_the_interfaces(tmp_path: Path) -> None:
    publisher, source = _setup(tmp_path)
    assert isinstance(publisher, WeightPublisher) and isinstance(source, WeightSource)
    assert source.latest_version() == -1
    publisher.publish(3, _state())
    assert source.latest_version() == 3
    version, state = source.fetch_latest(timeout_s=5.0)
    assert version == 3 and source.held_version == 3 and _equal(state, _state())
    assert source.stats.num_shards_fetched == 4
    assert json.loads((tmp_path / "relay/consumers/w0.json").read_bytes())["version"] == 3
    with pytest.raises(ValueError, match="not newer"):
        publisher.publish(3, _state())


@pytest.mark.parametrize("background", [False, True])
def test_a_version_is_a_snapshot_taken_at_publish(tmp_path: Path, background: bool) -> None:
    publisher = RelayPublisher(tmp_path / "relay", shard_bytes=4096, background=background)
    source = RelaySource(DirectoryRelay(tmp_path / "relay"), None, "w0")
    for version in range(3):
        state = _state(version)
        publisher.publish(version, state)
        state["embed.weight"].add_(1.0)  # the next training step, while the version may still be written
    publisher.close()
    version, fetched = source.fetch_latest(timeout_s=5.0)
    assert version == 2 and _equal(fetched, _state(2))
    assert publisher.published_versions() == [2]


def test_manifest_and_pointer_are_written_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[str] = []
    original = broadcast.write_atomically

    def spy(path: Path, data: bytes) -> None:
        written.append(path.name)
        original(path, data)

    monkeypatch.setattr(broadcast, "write_atomically", spy)
    RelayPublisher(tmp_path / "relay", shard_bytes=4096).publish(0, _state())
    assert written[-2:] == ["manifest.json", "LATEST"]
    assert all(name.startswith("shard-") for name in written[:-2])


def test_fetch_waits_for_a_newer_version_and_times_out(tmp_path: Path) -> None:
    publisher, source = _setup(tmp_path, poll_interval_s=0.01)
    begin = time.monotonic()
    with pytest.raises(WeightsUnavailable, match="newer than -1"):
        source.fetch_latest(timeout_s=0.2)
    assert time.monotonic() - begin < 2.0
    publisher.publish(0, _state(0))
    source.fetch_latest(timeout_s=1.0)
    with pytest.raises(WeightsUnavailable):
        source.fetch_latest(timeout_s=0.1, newer_than=0)
    publisher.publish(1, _state(1))
    version, state = source.fetch_latest(timeout_s=1.0, newer_than=0)
    assert version == 1 and _equal(state, _state(1))


def test_corrupt_shard_at_rest_is_never_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    publisher, source = _setup(tmp_path, num_retries=2)
    publisher.publish(0, _state(0))
    source.fetch_latest(timeout_s=5.0)
    publisher.publish(1, _state(1))
    shard = tmp_path / "relay" / version_dir(1) / "shard-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x01  # one bit of one tensor value: still a valid safetensors file
    shard.write_bytes(bytes(data))
    parsed: list[int] = []
    original_load = broadcast.safetensors.torch.load
    monkeypatch.setattr(
        broadcast.safetensors.torch, "load", lambda payload: parsed.append(1) or original_load(payload)
    )
    with pytest.raises(BroadcastFailed, match="shard-00002.safetensors after 3 attempts"):
        source.fetch_latest(timeout_s=5.0, newer_than=0)
    assert parsed == [] and source.held_version == 0
    assert source.stats.num_corrupt_rejected == 3 and source.stats.num_failed_fetches == 1


def test_truncated_shard_is_rejected(tmp_path: Path) -> None:
    publisher, source = _setup(tmp_path, num_retries=0)
    publisher.publish(0, _state())
    shard = tmp_path / "relay" / version_dir(0) / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-8])
    with pytest.raises(BroadcastFailed, match="shard-00001"):
        source.fetch_latest(timeout_s=5.0)
    assert source.stats.num_corrupt_rejected == 1


def test_corruption_in_transit_is_refetched(tmp_path: Path) -> None:
    publisher = RelayPublisher(tmp_path / "relay", shard_bytes=4096)
    relay = CorruptingRelay(DirectoryRelay(tmp_path / "relay"), p_corrupt=0.5, seed=3)
    source = RelaySource(relay, tmp_path / "cache", "w0", num_retries=8)
    for version in range(5):
        publisher.publish(version, _state(version))
        got, state = source.fetch_latest(timeout_s=5.0, newer_than=version - 1)
        assert got == version and _equal(state, _state(version))
    assert sum(relay.corrupted.values()) > 0
    assert source.stats.num_corrupt_rejected == sum(relay.corrupted.values())


@pytest.mark.parametrize("on_disk", [True, False])
def test_resume_fetches_only_the_missing_shards(tmp_path: Path, on_disk: bool) -> None:
    publisher = RelayPublisher(tmp_path / "relay", shard_bytes=4096)
    publisher.publish(0, _state())
    relay = BreakingRelay(DirectoryRelay(tmp_path / "relay"), num_good_reads=2)
    cache = tmp_path / "cache" if on_disk else None
    source = RelaySource(relay, cache, "w0", num_threads=1, num_retries=0)
    with pytest.raises(BroadcastFailed, match="connection to the relay lost"):
        source.fetch_latest(timeout_s=5.0)
    first = list(relay.shard_reads)
    assert len(first) == 2 and source.held_version == -1
    relay.heal()
    version, state = source.fetch_latest(timeout_s=5.0)
    second = relay.shard_reads[2:]
    assert version == 0 and _equal(state, _state())
    assert sorted(first + second) == [f"{version_dir(0)}/shard-{i:05d}.safetensors" for i in range(4)]
    assert source.stats.num_shards_reused == 2 and source.stats.num_shards_fetched == 4


def test_a_cached_shard_that_was_damaged_is_fetched_again(tmp_path: Path) -> None:
    publisher, source = _setup(tmp_path)
    publisher.publish(0, _state())
    relay = BreakingRelay(DirectoryRelay(tmp_path / "relay"), num_good_reads=1)
    source = RelaySource(relay, tmp_path / "cache", "w0", num_threads=1, num_retries=0)
    with pytest.raises(BroadcastFailed):
        source.fetch_latest(timeout_s=5.0)
    (cached,) = (tmp_path / "cache" / version_dir(0)).glob("shard-*")
    cached.write_bytes(b"garbage")
    relay.heal()
    _, state = source.fetch_latest(timeout_s=5.0)
    assert _equal(state, _state()) and source.stats.num_shards_reused == 0


def test_old_versions_are_deleted_only_after_the_slowest_consumer(tmp_path: Path) -> None:
    publisher = RelayPublisher(tmp_path / "relay", shard_bytes=4096)
    fast = RelaySource(DirectoryRelay(tmp_path / "relay"), tmp_path / "fast", "fast")
    slow = RelaySource(DirectoryRelay(tmp_path / "relay"), tmp_path / "slow", "slow")
    publisher.publish(0, _state(0))
    fast.fetch_latest(5.0)
    slow.fetch_latest(5.0)
    for version in (1, 2, 3):
        publisher.publish(version, _state(version))
        fast.fetch_latest(5.0, newer_than=version - 1)
    assert publisher.published_versions() == [0, 1, 2, 3]  # the slow consumer still holds 0
    slow.fetch_latest(5.0, newer_than=0)
    assert publisher.collect_garbage() == [0, 1, 2]
    assert publisher.published_versions() == [3]


def test_a_stale_consumer_no_longer_holds_back_deletion(tmp_path: Path) -> None:
    publisher = RelayPublisher(tmp_path / "relay", shard_bytes=4096, consumer_stale_s=60.0)
    source = RelaySource(DirectoryRelay(tmp_path / "relay"), tmp_path / "cache", "gone")
    publisher.publish(0, _state(0))
    source.fetch_latest(5.0)
    publisher.publish(1, _state(1))
    assert publisher.published_versions() == [0, 1]
    old = time.time() - 120.0
    os.utime(tmp_path / "relay" / "consumers" / "gone.json", (old, old))
    assert publisher.collect_garbage() == [0]


def test_http_relay_roundtrip_and_reports(tmp_path: Path) -> None:
    publisher = RelayPublisher(tmp_path / "relay", shard_bytes=4096)
    publisher.publish(0, _state())
    with RelayServer(tmp_path / "relay") as server:
        source = RelaySource(HttpRelay(server.url), tmp_path / "cache", "http-worker", num_threads=3)
        version, state = source.fetch_latest(timeout_s=10.0)
        assert version == 0 and _equal(state, _state())
        assert publisher.consumer_versions() == {"http-worker": 0}
        for path in (
            "/consumers/",
            "/v00000000/",
            "/LATEST.tmp",
        ):  # directory listings, files outside the layout
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(server.url + path, timeout=5.0)
        request = urllib.request.Request(f"{server.url}/LATEST", data=b'{"version": 9}', method="PUT")
        with pytest.raises(urllib.error.HTTPError, match="400"):
            urllib.request.urlopen(request, timeout=5.0)
        with pytest.raises(OSError, match="HTTP Error 400"):
            HttpRelay(server.url).report("bad", {"version": "nine"}, timeout_s=5.0)
    source.close()


def test_relay_names_outside_the_layout_are_refused(tmp_path: Path) -> None:
    for name in (
        "../etc/passwd",
        "/abs",
        "v1/manifest.json",
        "consumers/../LATEST.json",
        "v00000001/x.safetensors",
    ):
        with pytest.raises(ValueError, match="relay name"):
            check_name(name)
    assert check_name("v00000001/shard-00000.safetensors")


def _manifest(**changes: object) -> bytes:
    shard = {
        "name": "shard-00000.safetensors",
        "num_bytes": 100,
        "sha256": "a" * 64,
        "tensors": [{"name": "w", "dtype": "float32", "shape": [5, 5]}],
    }
    record: dict[str, object] = {
        "format": "farsync-shardcast/1",
        "version": 1,
        "total_bytes": 100,
        "shards": [shard],
    }
    for key, value in changes.items():
        if key.startswith("shard_"):
            shard[key.removeprefix("shard_")] = value
        else:
            record[key] = value
    return json.dumps(record).encode()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format": "other/1"}, "format"),
        ({"version": 2}, "directory says 1"),
        ({"total_bytes": 99}, "total_bytes"),
        ({"extra": 1}, "keys"),
        ({"shard_name": "../x.safetensors"}, "shard name"),
        ({"shard_sha256": "XYZ"}, "sha256"),
        ({"shard_num_bytes": True}, "num_bytes"),
        ({"shard_tensors": [{"name": "w", "dtype": "object", "shape": [1]}]}, "dtype"),
        ({"shard_tensors": [{"name": "w", "dtype": "float32", "shape": [-1]}]}, "size"),
    ],
)
def test_malformed_manifests_are_rejected(changes: dict[str, object], message: str) -> None:
    assert parse_manifest(_manifest(), ManifestLimits(), 1).version == 1
    with pytest.raises(ManifestRejected, match=message):
        parse_manifest(_manifest(**changes), ManifestLimits(), 1)
    with pytest.raises(ManifestRejected, match="exceeds"):
        parse_manifest(_manifest(), ManifestLimits(max_manifest_bytes=10), 1)


def test_a_shard_that_differs_from_its_manifest_entry_is_not_loaded(tmp_path: Path) -> None:
    publisher, source = _setup(tmp_path)
    publisher.publish(0, _state())
    directory = tmp_path / "relay" / version_dir(0)
    record = json.loads((directory / "manifest.json").read_bytes())
    record["shards"][0]["tensors"][0]["dtype"] = "float16"  # checksums still match the shard files
    data = json.dumps(record).encode()
    (directory / "manifest.json").write_bytes(data)
    pointer = {"version": 0, "manifest_sha256": broadcast._sha256(data)}
    (tmp_path / "relay" / "LATEST").write_bytes(json.dumps(pointer).encode())
    with pytest.raises(BroadcastFailed, match="embed.weight is torch.float32"):
        source.fetch_latest(timeout_s=5.0)
    assert source.held_version == -1


def test_manifest_that_differs_from_the_pointer_is_rejected(tmp_path: Path) -> None:
    publisher, source = _setup(tmp_path, num_retries=1)
    publisher.publish(0, _state())
    manifest = tmp_path / "relay" / version_dir(0) / "manifest.json"
    manifest.write_bytes(manifest.read_bytes().replace(b'"version":0', b'"version":0 '))
    with pytest.raises(BroadcastFailed, match="sha256 differs from the one in LATEST"):
        source.fetch_latest(timeout_s=5.0)


def test_bytes_are_in_the_ledger_and_the_link_time_is_applied(tmp_path: Path) -> None:
    link = LinkModel(bandwidth_bps=80e3, latency_s=0.05)  # 10 kB/s: the modeled time dwarfs the real copy
    publisher_ledger, source_ledger = ByteLedger(rank=0), ByteLedger(rank=1)
    publisher_clock, source_clock = Clock("virtual"), Clock("virtual")
    publisher_link = LinkEmulator(link, publisher_clock, publisher_ledger, "weights", group_size=2)
    source_link = LinkEmulator(link, source_clock, source_ledger, "weights", group_size=2)
    publisher = RelayPublisher(tmp_path / "relay", shard_bytes=4096, link=publisher_link)
    source = RelaySource(DirectoryRelay(tmp_path / "relay"), tmp_path / "cache", "w0", link=source_link)
    publisher.publish(0, _state())
    source.fetch_latest(timeout_s=5.0)
    shard_bytes = sum(p.stat().st_size for p in (tmp_path / "relay" / version_dir(0)).glob("shard-*"))
    manifest_bytes = (tmp_path / "relay" / version_dir(0) / "manifest.json").stat().st_size
    sent = publisher_ledger.entries[("weights", "send")]
    received = source_ledger.entries[("weights", "recv")]
    assert sent.bytes_sent == shard_bytes + manifest_bytes and sent.calls == 1
    assert received.payload_bytes == shard_bytes and received.calls == 1
    # Each side waited for its link (virtual clock): one latency plus its bytes at 10 kB/s, less the real copy.
    upload, download = 0.05 + (shard_bytes + manifest_bytes) / 1e4, 0.05 + shard_bytes / 1e4
    assert publisher_clock.offset == pytest.approx(upload, abs=0.5)
    assert source_clock.offset == pytest.approx(download, abs=0.5)
    assert received.blocked_s >= download


def test_the_background_writer_skips_a_version_replaced_while_waiting() -> None:
    started, release, written = threading.Event(), threading.Event(), []

    def write(version: int, tensors: dict[str, torch.Tensor]) -> None:
        started.set()
        if version == 1:
            release.wait(5.0)
        written.append(version)

    writer = LatestWinsWriter(write, timeout_s=5.0)
    writer.submit(1, {})
    assert started.wait(5.0)
    writer.submit(2, {})
    writer.submit(3, {})  # replaces 2, which was still waiting
    release.set()
    writer.close()
    assert written == [1, 3] and writer.num_skipped == 1


def test_a_failed_background_write_is_raised_by_the_next_call() -> None:
    def write(version: int, tensors: dict[str, torch.Tensor]) -> None:
        raise OSError("disk full")

    writer = LatestWinsWriter(write, timeout_s=5.0)
    writer.submit(0, {})
    with pytest.raises(RuntimeError, match="disk full"):
        writer.flush()
    writer.close()


_CONSUMER = """
import hashlib, sys
from farsync.rl.broadcast import RelaySource
from farsync.rl.broadcast_relay import HttpRelay
source = RelaySource(HttpRelay(sys.argv[1]), None, "process-worker")
version, state = source.fetch_latest(timeout_s=30.0)
digest = hashlib.sha256(b"".join(state[k].contiguous().view(-1).view(torch.uint8).numpy().tobytes() for k in sorted(state)))
print(version, digest.hexdigest())
"""


def test_a_consumer_in_another_process_fetches_over_http(tmp_path: Path) -> None:
    state = _state(5)
    expected = hashlib.sha256(
        b"".join(state[k].contiguous().view(-1).view(torch.uint8).numpy().tobytes() for k in sorted(state))
    ).hexdigest()
    publisher = RelayPublisher(tmp_path / "relay", shard_bytes=4096)
    publisher.publish(4, state)
    with RelayServer(tmp_path / "relay") as server:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        done = subprocess.run(
            [sys.executable, "-c", "import torch\n" + _CONSUMER, server.url],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["4", expected]
    assert publisher.consumer_versions() == {"process-worker": 4}


def test_a_background_publish_leaves_the_link_time_off_the_trainer(tmp_path: Path) -> None:
    clock, ledger = Clock("virtual"), ByteLedger(rank=0)
    link = LinkEmulator(LinkModel(bandwidth_bps=80e3, latency_s=0.05), clock, ledger, "weights", group_size=2)
    publisher = RelayPublisher(tmp_path / "relay", shard_bytes=4096, link=link, background=True)
    publisher.publish(0, _state())
    publisher.close()
    sent = ledger.entries[("weights", "send")]
    assert sent.calls == 1 and sent.bytes_sent > 16_000 and sent.modeled_s > 1.0  # about 2 s at 10 kB/s
    assert clock.offset == 0.0 and sent.blocked_s == 0.0  # the writer thread waited, not the trainer
