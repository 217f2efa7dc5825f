"""Weight broadcast through a relay: sharded, checksummed policy versions for untrusted links.

This module owns :class:`RelayPublisher` (the trainer's :class:`~farsync.rl.transport.WeightPublisher`) and
:class:`RelaySource` (an inference worker's :class:`~farsync.rl.transport.WeightSource`). They follow the
design of SHARDCAST in INTELLECT-2 (arXiv 2505.07291): a version is cut into shards, each with a sha256
checksum, published through relays that consumers download from in parallel; a consumer checks every shard
before it uses it. Ours differs from SHARDCAST in three ways, on purpose: shards are whole tensors batched by
bytes (each shard is a safetensors file that can be checked and parsed on its own) instead of byte ranges of
one checkpoint file; there is one relay (a directory, optionally served over HTTP by
:mod:`farsync.rl.broadcast_relay`) instead of a tree of relay servers picked by measured throughput; and old
versions are deleted only once every live consumer reports holding a newer one.

Publishing version ``v``: every shard file is written, then ``v<v>/manifest.json`` (the version's
description, :mod:`farsync.rl.broadcast_manifest`), then ``LATEST`` (the version and the manifest's sha256):
a version is visible only once complete. Then versions older than the slowest live consumer's are deleted.

Fetching: the consumer reads ``LATEST``, then the manifest (checked against the pointer's sha256 and parsed
strictly), then the shards in parallel threads. A shard whose size or sha256 differs is rejected, logged and
fetched again, at most ``num_retries`` more times; then the fetch fails with :class:`BroadcastFailed` (a
:class:`~farsync.rl.transport.WeightsUnavailable`) and the consumer keeps the version it holds: a corrupted
shard is never parsed, let alone loaded. A verified shard is kept (in memory, or in the consumer's cache
directory to survive a restart), so a fetch broken off half-way resumes with the shards still missing. Only
when every shard is verified are they parsed (safetensors, never pickle) and each tensor checked against the
manifest's name, dtype and shape. The consumer reports the version it holds to the relay
(``consumers/<id>.json``).

``RelayPublisher(background=True)`` copies the tensors and returns; a writer thread publishes the newest
version (:mod:`farsync.rl.broadcast_writer`), so the trainer does not wait for the disk or the link.

Bytes and time: with a :class:`~farsync.comm.link.LinkEmulator`, the publisher's upload is charged as a
``send`` of the version's bytes and each consumer's download as a ``recv`` of the bytes it fetched (retries
included), and both wait for the emulated link as farsync's collectives do. Every wait has a deadline.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import threading
import time
from collections.abc import Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
from safetensors import SafetensorError
from torch import Tensor

from farsync.comm.cost import Collective
from farsync.comm.link import LinkEmulator
from farsync.rl.broadcast_manifest import (
    DTYPES,
    Manifest,
    ManifestLimits,
    ManifestRejected,
    ShardSpec,
    TensorSpec,
    dtype_name,
    encode_manifest,
    parse_manifest,
    plan_shards,
)
from farsync.rl.broadcast_relay import Relay, RelayError, RelayMissing, report_age_s, write_atomically
from farsync.rl.broadcast_writer import LatestWinsWriter
from farsync.rl.transport import WeightsUnavailable

__all__ = ["BroadcastFailed", "FetchStats", "RelayPublisher", "RelaySource", "version_dir"]

logger = logging.getLogger(__name__)

_VERSION_DIR = re.compile(r"v(\d{8})")
_CONSUMER_ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_POINTER_BYTES = 1024


class BroadcastFailed(WeightsUnavailable):
    """A version could not be fetched intact (a shard stayed corrupt or unreachable); nothing was loaded."""


def version_dir(version: int) -> str:
    """The relay directory of ``version`` (``v00000007``)."""
    return f"v{version:08d}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RelayPublisher:
    """Publishes policy versions into a relay directory (a :class:`~farsync.rl.transport.WeightPublisher`).

    Args:
        root: the relay directory (served as is by :class:`~farsync.rl.broadcast_relay.RelayServer`).
        shard_bytes: target size of one shard; tensors are batched into shards up to this size.
        num_keep: the newest versions always kept, whatever the consumers report (>= 1).
        consumer_stale_s: a consumer whose last report is older than this no longer holds back deletion.
        link: the trainer's emulated link to the relay (``None``: nothing modeled).
        background: :meth:`publish` only snapshots the tensors and returns; a background thread writes the
            version, the newest first (:class:`~farsync.rl.broadcast_writer.LatestWinsWriter`: a version
            still waiting when a newer one comes is skipped). :meth:`flush` waits for the writes and re-raises
            a failed one.
        timeout_s: the longest :meth:`flush` waits for background writes.

    The tensors are copied when ``publish`` is called, so later training steps never change a version.
    """

    def __init__(
        self,
        root: Path | str,
        *,
        shard_bytes: int = 4 * 1024 * 1024,
        num_keep: int = 1,
        consumer_stale_s: float = 600.0,
        link: LinkEmulator | None = None,
        background: bool = False,
        timeout_s: float = 120.0,
    ) -> None:
        if shard_bytes < 1 or num_keep < 1 or consumer_stale_s <= 0:
            raise ValueError("shard_bytes and num_keep must be >= 1 and consumer_stale_s > 0")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.shard_bytes, self.num_keep, self.consumer_stale_s = shard_bytes, num_keep, consumer_stale_s
        self.link, self.timeout_s = link, timeout_s
        self.latest = max(self.published_versions(), default=-1)
        self._writer = LatestWinsWriter(self._write, timeout_s) if background else None

    def published_versions(self) -> list[int]:
        """Versions with a directory on the relay (complete or not), oldest first."""
        found = (_VERSION_DIR.fullmatch(p.name) for p in self.root.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m is not None)

    def publish(self, version: int, state_dict: Mapping[str, Tensor]) -> None:
        """Writes ``state_dict`` as ``version``: shards, then the manifest, then ``LATEST`` (module docstring)."""
        if version <= self.latest:
            raise ValueError(f"version {version} is not newer than the published {self.latest}")
        tensors = {
            name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in state_dict.items()
        }
        self.latest = version
        if self._writer is None:
            self._write(version, tensors)
            return
        self._writer.submit(version, tensors)

    @property
    def num_skipped(self) -> int:
        """Versions replaced by a newer one before the background writer got to them."""
        return self._writer.num_skipped if self._writer is not None else 0

    def flush(self) -> None:
        """Waits for the background writes (if any) and re-raises a failed one."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Finishes the background writes, then stops the writer thread."""
        if self._writer is not None:
            self._writer.close()

    def _write(self, version: int, tensors: dict[str, Tensor]) -> None:
        begin = self.link.clock.now() if self.link is not None else 0.0
        directory = self.root / version_dir(version)
        shards: list[ShardSpec] = []
        for index, names in enumerate(plan_shards(tensors, self.shard_bytes)):
            group = {name: tensors[name] for name in names}
            data = safetensors.torch.save(group)
            specs = tuple(TensorSpec(n, dtype_name(t.dtype), tuple(t.shape)) for n, t in group.items())
            shard = ShardSpec(f"shard-{index:05d}.safetensors", len(data), _sha256(data), specs)
            write_atomically(directory / shard.name, data)
            shards.append(shard)
        manifest = encode_manifest(Manifest(version, tuple(shards)))
        write_atomically(directory / "manifest.json", manifest)
        pointer = {"version": version, "manifest_sha256": _sha256(manifest)}
        write_atomically(self.root / "LATEST", json.dumps(pointer).encode())
        if self.link is not None:
            start, modeled = self.link.charge(
                Collective.SEND, sum(s.num_bytes for s in shards) + len(manifest)
            )
            self.link.wait_until(start + modeled)
            self.link.blocked_since(begin, Collective.SEND.value)
        self.collect_garbage()

    def consumer_versions(self) -> dict[str, int]:
        """The version each live consumer reports holding (stale or malformed reports are skipped)."""
        held: dict[str, int] = {}
        directory = self.root / "consumers"
        if not directory.is_dir():
            return held
        for path in directory.glob("*.json"):
            try:
                if report_age_s(path) > self.consumer_stale_s:
                    continue
                record = json.loads(path.read_bytes()[:4096])
                version = record["version"]
                if not isinstance(version, int) or isinstance(version, bool):
                    raise TypeError("version is not an integer")
            except (OSError, ValueError, KeyError, TypeError) as error:
                logger.warning("relay: ignoring consumer report %s: %s", path.name, error)
                continue
            held[path.stem] = version
        return held

    def collect_garbage(self) -> list[int]:
        """Deletes versions older than every live consumer's and not among the newest ``num_keep``."""
        versions = self.published_versions()
        held = self.consumer_versions()
        floor = min(held.values()) if held else max(versions, default=-1)
        keep = set(versions[-self.num_keep :])
        deleted = [v for v in versions if v < floor and v not in keep]
        for version in deleted:
            shutil.rmtree(self.root / version_dir(version), ignore_errors=True)
        if deleted:
            logger.debug("relay: deleted versions %s (slowest consumer holds %s)", deleted, floor)
        return deleted


@dataclass
class FetchStats:
    """What a :class:`RelaySource` has done, for logs and benchmarks."""

    num_versions_loaded: int = 0
    num_shards_fetched: int = 0
    num_shards_reused: int = 0
    num_corrupt_rejected: int = 0
    num_read_errors: int = 0
    num_failed_fetches: int = 0
    bytes_fetched: int = 0


class RelaySource:
    """Fetches policy versions from a relay (a :class:`~farsync.rl.transport.WeightSource`; module docstring).

    Args:
        relay: where versions are read (:class:`~farsync.rl.broadcast_relay.DirectoryRelay` or ``HttpRelay``).
        cache_dir: this consumer's own directory for verified shards, so a fetch resumes after a broken
            transfer even across a restart; ``None`` keeps them in memory (resume within the process).
        consumer_id: the name it reports under (``[A-Za-z0-9_.-]``, at most 64 characters).
        num_threads: shards fetched in parallel.
        num_retries: further attempts at a shard after a corrupt or failed read.
        poll_interval_s: how often ``LATEST`` is polled while waiting for a newer version.
        limits: what a manifest may describe.
        link: this consumer's emulated link to the relay (``None``: nothing modeled).
    """

    def __init__(
        self,
        relay: Relay,
        cache_dir: Path | str | None,
        consumer_id: str,
        *,
        num_threads: int = 4,
        num_retries: int = 3,
        poll_interval_s: float = 0.05,
        limits: ManifestLimits | None = None,
        link: LinkEmulator | None = None,
    ) -> None:
        if _CONSUMER_ID.fullmatch(consumer_id) is None:
            raise ValueError(f"consumer_id {consumer_id!r} must be 1-64 characters of [A-Za-z0-9_.-]")
        if num_threads < 1 or num_retries < 0 or poll_interval_s <= 0:
            raise ValueError("num_threads must be >= 1, num_retries >= 0 and poll_interval_s > 0")
        self.relay, self.consumer_id = relay, consumer_id
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._memory: dict[str, bytes] = {}  # verified shards by relay name, when there is no cache_dir
        self.num_retries, self.poll_interval_s = num_retries, poll_interval_s
        self.limits = limits if limits is not None else ManifestLimits()
        self.link = link
        self.held_version = -1
        self.stats = FetchStats()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix=f"fetch-{consumer_id}")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _count(self, **increments: int) -> None:
        with self._lock:
            for name, amount in increments.items():
                setattr(self.stats, name, getattr(self.stats, name) + amount)

    def _pointer(self, timeout_s: float) -> tuple[int, str] | None:
        try:
            record = json.loads(self.relay.read("LATEST", _POINTER_BYTES, timeout_s))
            version, digest = record["version"], record["manifest_sha256"]
            if not isinstance(version, int) or isinstance(version, bool) or version < 0:
                raise TypeError(f"version {version!r} is not a non-negative integer")
            if not isinstance(digest, str):
                raise TypeError("manifest_sha256 is not a string")
        except RelayMissing:
            return None
        except (RelayError, ValueError, KeyError, TypeError) as error:
            logger.warning("%s: unusable LATEST pointer: %s", self.consumer_id, error)
            self._count(num_read_errors=1)
            return None
        return version, digest

    def latest_version(self) -> int:
        pointer = self._pointer(timeout_s=5.0)
        return -1 if pointer is None else pointer[0]

    def fetch_latest(self, timeout_s: float, newer_than: int = -1) -> tuple[int, dict[str, Tensor]]:
        """Waits up to ``timeout_s`` for a version newer than ``newer_than``, fetches and checks it.

        Raises :class:`~farsync.rl.transport.WeightsUnavailable` when none comes in time, and
        :class:`BroadcastFailed` when one cannot be fetched intact; the held version is then unchanged.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            pointer = self._pointer(max(deadline - time.monotonic(), 1e-3))
            if pointer is not None and pointer[0] > newer_than:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WeightsUnavailable(f"no policy version newer than {newer_than} within {timeout_s:.1f}s")
            time.sleep(min(self.poll_interval_s, remaining))
        version, manifest_sha = pointer
        try:
            manifest = self._manifest(version, manifest_sha, deadline)
            payloads = self._shards(manifest, deadline)
            state = self._load(manifest, payloads)
        except BroadcastFailed as error:
            self._count(num_failed_fetches=1)
            logger.error("%s: version %d not loaded: %s", self.consumer_id, version, error)
            raise
        self._hold(version)
        return version, state

    def _manifest(self, version: int, expected_sha: str, deadline: float) -> Manifest:
        name = f"{version_dir(version)}/manifest.json"
        problem = ""
        for _ in range(self.num_retries + 1):
            try:
                data = self.relay.read(
                    name, self.limits.max_manifest_bytes, max(deadline - time.monotonic(), 1e-3)
                )
                if _sha256(data) != expected_sha:
                    raise ManifestRejected("its sha256 differs from the one in LATEST")
                return parse_manifest(data, self.limits, version)
            except (RelayError, ManifestRejected) as error:
                problem = str(error)
                logger.warning("%s: manifest of version %d rejected: %s", self.consumer_id, version, problem)
                self._count(num_read_errors=1)
            if time.monotonic() >= deadline:
                break
        raise BroadcastFailed(f"manifest {name}: {problem}")

    def _shards(self, manifest: Manifest, deadline: float) -> dict[str, bytes]:
        directory = version_dir(manifest.version)
        with self._lock:  # shards of an older version that never completed are of no more use
            self._memory = {k: v for k, v in self._memory.items() if k.startswith(f"{directory}/")}
        payloads: dict[str, bytes] = {}
        missing: list[ShardSpec] = []
        for shard in manifest.shards:
            cached = self._cached(f"{directory}/{shard.name}", shard)
            if cached is None:
                missing.append(shard)
            else:
                payloads[shard.name] = cached
        self._count(num_shards_reused=len(payloads))
        begin = self.link.clock.now() if self.link is not None else 0.0
        fetched_before, start, modeled = self.stats.bytes_fetched, 0.0, 0.0
        if self.link is not None and missing:
            # Charged when issued, as the communicator does: the real transfer overlaps the modeled one.
            start, modeled = self.link.charge(Collective.RECV, sum(s.num_bytes for s in missing))
        futures: list[Future[bytes]] = [
            self._pool.submit(self._fetch, s, directory, deadline) for s in missing
        ]
        done, pending = wait(
            futures, timeout=max(deadline - time.monotonic(), 0.0), return_when=FIRST_EXCEPTION
        )
        for future in pending:
            future.cancel()
        for future in done:
            error = future.exception()
            if error is not None:
                raise error
        if pending:
            raise BroadcastFailed(f"{len(pending)} of {len(missing)} shards still missing at the deadline")
        for shard, future in zip(missing, futures, strict=True):
            payloads[shard.name] = future.result()
        if self.link is not None and missing:
            refetched = self.stats.bytes_fetched - fetched_before - sum(s.num_bytes for s in missing)
            if refetched > 0:
                _, extra = self.link.charge(Collective.RECV, refetched)
                modeled += extra - self.link.latency_s  # retries ride the same transfer: no second latency
            self.link.wait_until(start + modeled)
            self.link.blocked_since(begin, Collective.RECV.value)
        return payloads

    def _cached(self, name: str, shard: ShardSpec) -> bytes | None:
        if self.cache_dir is None:
            return self._memory.get(name)  # verified when stored
        path = self.cache_dir / name
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if len(data) == shard.num_bytes and _sha256(data) == shard.sha256:
            return data
        path.unlink(missing_ok=True)
        return None

    def _keep(self, name: str, data: bytes) -> None:
        if self.cache_dir is None:
            with self._lock:
                self._memory[name] = data
        else:
            write_atomically(self.cache_dir / name, data)

    def _fetch(self, shard: ShardSpec, directory: str, deadline: float) -> bytes:
        name = f"{directory}/{shard.name}"
        problem = ""
        for attempt in range(self.num_retries + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                problem = problem or "deadline passed"
                break
            try:
                data = self.relay.read(name, shard.num_bytes, remaining)
            except RelayMissing as error:
                raise BroadcastFailed(str(error)) from None
            except RelayError as error:
                problem = str(error)
                self._count(num_read_errors=1)
                continue
            self._count(bytes_fetched=len(data))
            if len(data) != shard.num_bytes or _sha256(data) != shard.sha256:
                problem = (
                    f"{len(data)} bytes with sha256 {_sha256(data)[:12]}..., manifest: {shard.sha256[:12]}..."
                )
                logger.warning(
                    "%s: corrupt shard %s rejected (attempt %d)", self.consumer_id, name, attempt + 1
                )
                self._count(num_corrupt_rejected=1)
                continue
            self._keep(name, data)
            self._count(num_shards_fetched=1)
            return data
        raise BroadcastFailed(f"shard {name} after {self.num_retries + 1} attempts: {problem}")

    def _load(self, manifest: Manifest, payloads: dict[str, bytes]) -> dict[str, Tensor]:
        state: dict[str, Tensor] = {}
        for shard in manifest.shards:
            try:
                tensors = safetensors.torch.load(payloads[shard.name])
            except (SafetensorError, ValueError, RuntimeError) as error:
                raise BroadcastFailed(f"shard {shard.name} is not a safetensors file: {error}") from None
            if sorted(tensors) != sorted(t.name for t in shard.tensors):
                raise BroadcastFailed(f"shard {shard.name} holds other tensors than its manifest entry")
            for spec in shard.tensors:
                tensor = tensors[spec.name]
                if tensor.dtype != DTYPES[spec.dtype] or tuple(tensor.shape) != spec.shape:
                    raise BroadcastFailed(
                        f"tensor {spec.name} is {tensor.dtype}{list(tensor.shape)}, not as declared"
                    )
                state[spec.name] = tensor
        return state

    def _hold(self, version: int) -> None:
        self.held_version = version
        self._count(num_versions_loaded=1)
        with self._lock:
            self._memory.clear()
        for path in self.cache_dir.glob("v*") if self.cache_dir is not None else ():
            match = _VERSION_DIR.fullmatch(path.name)
            if match is not None and int(match.group(1)) < version:
                shutil.rmtree(path, ignore_errors=True)
        try:
            self.relay.report(self.consumer_id, {"version": version, "time": time.time()}, timeout_s=5.0)
        except (RelayError, ValueError) as error:
            logger.warning("%s: could not report holding version %d: %s", self.consumer_id, version, error)
