"""Measurements behind weight broadcast: its cost against a training step, and corruption never loaded.

This module owns the functions ``farsync bench rl`` (or a script) calls to measure :mod:`farsync.rl.broadcast`:

* :func:`step_fraction`: CPU seconds of one publish and one fetch of a policy of the example's size, against
  the CPU seconds of one training step of that policy (forward, backward and AdamW on a batch of the
  example's shape), plus the modeled link time of the version's bytes at given bandwidths.
* :func:`corruption_run`: many broadcasts through relays that corrupt shards in transit (bit flips,
  truncation) and, for some versions, on the relay itself; every state dict a consumer loads is compared bit
  for bit with what was published, so a corrupted shard that got through would be counted.

CPU time (``time.process_time``) is used instead of wall time: the machine is shared, and CPU time depends
far less on the load.
"""

from __future__ import annotations

import hashlib
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from farsync.comm.cost import Collective, LinkModel, wire_time
from farsync.models.gpt import GPT, GPTConfig
from farsync.rl.broadcast import BroadcastFailed, RelayPublisher, RelaySource, version_dir
from farsync.rl.broadcast_faults import CorruptingRelay
from farsync.rl.broadcast_relay import DirectoryRelay

__all__ = ["corruption_run", "example_policy", "markdown", "run", "step_fraction"]


def example_policy() -> GPT:
    """The policy of ``examples/rl_arithmetic.toml`` (2 layers, width 64, context 16, 44 tokens)."""
    torch.manual_seed(0)
    return GPT(GPTConfig(num_layers=2, width=64, num_heads=4, context_length=16, vocab_size=44))


def _train_step(model: GPT, optimizer: torch.optim.Optimizer, tokens: torch.Tensor) -> None:
    logits = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def step_fraction(
    *,
    batch: int = 64,
    num_steps: int = 30,
    shard_bytes: int = 4 * 1024 * 1024,
    bandwidths_bps: tuple[float, ...] = (1e9, 1e8),
) -> dict[str, Any]:
    """Broadcast cost against one training step of the example's policy (medians over ``num_steps``).

    ``batch`` is the example's rollouts per step (8 groups of 8). Three loops of ``num_steps`` steps: training
    alone; training with a synchronous publish and one consumer's fetch after each step; training with a
    background publish (the trainer only snapshots the tensors). Reported: CPU seconds of a step, of a
    synchronous publish and of a fetch; the trainer's wall-clock wait in ``publish`` in background mode, against
    the wall-clock time of the steps of that loop (both stretch alike on a loaded machine), and the same wait
    when the writer has finished the previous version; the
    step's CPU time while background writes run; the trainer thread's own CPU time in a background ``publish``
    (the snapshot); the modeled link time of a version at ``bandwidths_bps``.
    """
    model = example_policy()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    tokens = torch.randint(0, model.config.vocab_size, (batch, model.config.context_length))
    alone, publish, fetch, blocked, trainer_cpu, step_with_writer, step_wall = [], [], [], [], [], [], []
    for _ in range(num_steps):
        start = time.process_time()
        _train_step(model, optimizer, tokens)
        alone.append(time.process_time() - start)
    with tempfile.TemporaryDirectory() as root:
        publisher = RelayPublisher(Path(root) / "sync", shard_bytes=shard_bytes)
        source = RelaySource(DirectoryRelay(Path(root) / "sync"), None, "w0")
        for version in range(num_steps):
            _train_step(model, optimizer, tokens)
            start = time.process_time()
            publisher.publish(version, model.state_dict())
            middle = time.process_time()
            source.fetch_latest(timeout_s=30.0, newer_than=version - 1)
            publish.append(middle - start)
            fetch.append(time.process_time() - middle)
        version_bytes = sum(
            p.stat().st_size for p in (Path(root) / "sync" / version_dir(num_steps - 1)).iterdir()
        )
        source.close()
        background = RelayPublisher(Path(root) / "background", shard_bytes=shard_bytes, background=True)
        for version in range(num_steps):
            start, wall = time.process_time(), time.perf_counter()
            _train_step(model, optimizer, tokens)
            step_with_writer.append(time.process_time() - start)
            step_wall.append(time.perf_counter() - wall)
            wall, cpu = time.perf_counter(), time.thread_time()
            background.publish(version, model.state_dict())
            blocked.append(time.perf_counter() - wall)
            trainer_cpu.append(time.thread_time() - cpu)
        skipped = background.num_skipped
        idle_writer = []
        for version in range(num_steps, 2 * num_steps):
            background.flush()  # the previous version is written: the writer thread is idle
            wall = time.perf_counter()
            background.publish(version, model.state_dict())
            idle_writer.append(time.perf_counter() - wall)
        background.close()
    step_s = _median(alone)
    link = {
        f"{bps / 1e6:g} Mbit/s": wire_time(Collective.SEND, version_bytes, 2, LinkModel(bps, 0.0)) / step_s
        for bps in bandwidths_bps
    }
    return {
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "version_bytes": version_bytes,
        "num_shards": -(-version_bytes // shard_bytes),
        "train_step_cpu_s": step_s,
        "publish_cpu_s": _median(publish),
        "fetch_cpu_s": _median(fetch),
        "background_publish_wait_s": _median(blocked),
        "background_publish_trainer_cpu_s": _median(trainer_cpu),
        "background_versions_skipped": skipped,
        "background_publish_wait_s_idle_writer": _median(idle_writer),
        "train_step_cpu_s_with_background_writes": _median(step_with_writer),
        "publish_fraction": _median(publish) / step_s,
        "fetch_fraction": _median(fetch) / step_s,
        "background_wait_fraction_of_step_wall": _median(blocked) / _median(step_wall),
        "train_step_wall_s_with_background_writes": _median(step_wall),
        "background_trainer_cpu_fraction": _median(trainer_cpu) / step_s,
        "link_time_fraction": link,
    }


def _digests(state: dict[str, torch.Tensor]) -> dict[str, str]:
    return {
        name: hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
        for name, t in state.items()
    }


def corruption_run(
    *,
    num_versions: int = 1000,
    num_consumers: int = 2,
    p_corrupt: float = 0.2,
    p_corrupt_at_rest: float = 0.02,
    num_retries: int = 3,
    shard_bytes: int = 64 * 1024,
    seed: int = 0,
) -> dict[str, Any]:
    """``num_versions`` broadcasts of the example's policy to ``num_consumers`` consumers through relays that
    corrupt each shard read with probability ``p_corrupt``; a share ``p_corrupt_at_rest`` of versions also
    gets one shard damaged on the relay (every fetch of it fails). Returns what was injected, rejected and
    loaded; ``corrupted_tensors_loaded`` counts loaded tensors that differ from the published ones."""
    rng = random.Random(seed)
    model = example_policy()
    published: dict[int, dict[str, str]] = {}
    totals: dict[str, int] = {
        "loaded": 0,
        "failed_fetches": 0,
        "corrupted_tensors_loaded": 0,
        "damaged_at_rest": 0,
    }
    start = time.process_time()
    with tempfile.TemporaryDirectory() as root:
        relay_dir = Path(root) / "relay"
        publisher = RelayPublisher(relay_dir, shard_bytes=shard_bytes, num_keep=2)
        relays = [
            CorruptingRelay(DirectoryRelay(relay_dir), p_corrupt, seed=seed + i) for i in range(num_consumers)
        ]
        sources = [
            # even consumers keep verified shards on disk, odd ones in memory
            RelaySource(
                relay, Path(root) / f"cache{i}" if i % 2 == 0 else None, f"c{i}", num_retries=num_retries
            )
            for i, relay in enumerate(relays)
        ]
        for version in range(num_versions):
            with torch.no_grad():
                next(model.parameters()).add_(1e-3)  # every version differs
            state = model.state_dict()
            publisher.publish(version, state)
            published[version] = _digests(state)
            if rng.random() < p_corrupt_at_rest:
                shards = sorted((relay_dir / version_dir(version)).glob("shard-*"))
                victim = shards[rng.randrange(len(shards))]
                data = bytearray(victim.read_bytes())
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
                victim.write_bytes(bytes(data))
                totals["damaged_at_rest"] += 1
            for source in sources:
                try:
                    got, loaded = source.fetch_latest(timeout_s=30.0, newer_than=source.held_version)
                except BroadcastFailed:
                    totals["failed_fetches"] += 1
                    continue
                totals["loaded"] += 1
                digests = _digests(loaded)
                totals["corrupted_tensors_loaded"] += sum(digests[n] != d for n, d in published[got].items())
        for source in sources:
            source.close()
    return {
        **totals,
        "num_versions": num_versions,
        "num_consumers": num_consumers,
        "shard_reads": sum(r.num_reads for r in relays),
        "corrupted_in_transit": sum(sum(r.corrupted.values()) for r in relays),
        "corrupt_rejected": sum(s.stats.num_corrupt_rejected for s in sources),
        "cpu_s": time.process_time() - start,
    }


def run(quick: bool) -> dict[str, Any]:
    """Both measurements at the benchmark's size (``quick``: 100 broadcasts instead of 1,000)."""
    return {
        "step": step_fraction(num_steps=10 if quick else 30),
        "corruption": corruption_run(num_versions=100 if quick else 1000),
    }


def markdown(result: dict[str, Any]) -> str:
    """The results section of :func:`run` (CPU seconds; wall-clock figures depend on the machine's load)."""
    step, corruption = result["step"], result["corruption"]
    link = ", ".join(f"{k}: {v:.1%}" for k, v in step["link_time_fraction"].items())
    return "\n".join(
        [
            "### Weight broadcast",
            "",
            f"Policy of the example: {step['num_parameters']:,} parameters, {step['version_bytes']:,} bytes per "
            f"version in {step['num_shards']} shard(s). One training step (batch of 64): "
            f"{step['train_step_cpu_s'] * 1e3:.1f} ms CPU.",
            "",
            "| per version | CPU ms | share of a step |",
            "|---|---|---|",
            f"| publish, synchronous | {step['publish_cpu_s'] * 1e3:.2f} | {step['publish_fraction']:.1%} |",
            f"| publish, background: trainer's wait (wall ms; share of a step's wall time) | "
            f"{step['background_publish_wait_s'] * 1e3:.2f} | {step['background_wait_fraction_of_step_wall']:.1%} |",
            f"| publish, background, writer idle: trainer's wait (wall ms) | "
            f"{step['background_publish_wait_s_idle_writer'] * 1e3:.2f} | "
            f"{step['background_publish_wait_s_idle_writer'] / step['train_step_wall_s_with_background_writes']:.1%} |",
            f"| publish, background: trainer thread's CPU | {step['background_publish_trainer_cpu_s'] * 1e3:.2f} | "
            f"{step['background_trainer_cpu_fraction']:.1%} |",
            f"| fetch (one consumer) | {step['fetch_cpu_s'] * 1e3:.2f} | {step['fetch_fraction']:.1%} |",
            "",
            f"Modeled link time of one version, as a share of a step: {link}.",
            "",
            f"Corruption: {corruption['num_versions']} versions to {corruption['num_consumers']} consumers; "
            f"{corruption['corrupted_in_transit']} of {corruption['shard_reads']} shard reads corrupted in transit, "
            f"{corruption['damaged_at_rest']} versions damaged on the relay; {corruption['corrupt_rejected']} corrupt "
            f"shards rejected, {corruption['loaded']} versions loaded, {corruption['failed_fetches']} fetches failed "
            f"safely (old version kept); **corrupted tensors loaded: {corruption['corrupted_tensors_loaded']}**.",
        ]
    )
