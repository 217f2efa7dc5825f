"""An inference worker: fetch the policy, sample groups of rollouts, tag them with the version, push them.

This module owns the sampling role. :func:`run_worker` loops until told to stop: it holds a policy version,
draws a training problem, samples ``group_size`` completions (:func:`farsync.rl.policy.sample_group`),
attaches a proof (:class:`~farsync.rl.proofs.Prover`) and the claimed reward, and pushes each rollout as a
message. The two modes of Echo (arXiv 2508.05387):

* ``sync``: before each batch the worker waits for the newest policy; it samples its share of the batch
  (``groups_per_version``) with it, then waits for the next version. A batch is split in advance, so the
  slowest worker sets the pace.
* ``async``: the worker picks up a newer version whenever one exists (never waiting for it), samples
  continuously and pauses only while the channel already holds ``max_pending`` messages. The trainer's
  staleness bound decides what is still usable.

Weights come from the SHARDCAST-like relay (:func:`weight_source`: a
:class:`~farsync.rl.broadcast.RelaySource` over the run directory's relay, or over HTTP); a fetch that fails
(a shard stays corrupt or unreachable) is logged by the source and the worker keeps the version it holds.
With ``verify`` the worker samples with :func:`~farsync.rl.verify.sample_group_with_proofs`: one replayable
seed per rollout (:func:`~farsync.rl.verify_sampling.rollout_seed`, stored in :attr:`Rollout.seed`) and the
TOPLOC-like fingerprint from the sampling forward passes themselves (no extra forward).

``slowdown`` emulates slower hardware: after sampling a group in ``t`` seconds the worker sleeps
``(slowdown - 1) t``. Every wait has a timeout and re-checks ``should_stop``. :func:`worker_process` is the
entry point of a worker in its own process, talking through a run directory (:mod:`farsync.rl.files`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from farsync.comm.clock import Clock
from farsync.comm.cost import LinkModel
from farsync.comm.ledger import ByteLedger
from farsync.comm.link import LinkEmulator
from farsync.rl.broadcast import RelaySource
from farsync.rl.broadcast_relay import DirectoryRelay, HttpRelay, Relay
from farsync.rl.files import DirectoryRolloutChannel
from farsync.rl.messages import Rollout, encode_rollout
from farsync.rl.policy import build_policy, sample_group
from farsync.rl.proofs import NoProof, Prover
from farsync.rl.tasks import CharTokenizer, RewardFn, load_reward, make_task, safe_reward
from farsync.rl.transport import RolloutChannel, WeightSource, WeightsUnavailable
from farsync.rl.verify import sample_group_with_proofs
from farsync.rl.verify_sampling import rollout_seed

__all__ = [
    "WorkerReport",
    "WorkerSettings",
    "rollout_dirs",
    "run_worker",
    "fetch_report",
    "settings_dict",
    "weight_source",
    "worker_process",
]

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class WorkerSettings:
    """What one inference worker needs (plain values, so it crosses a process boundary)."""

    worker_id: str
    """Unique name, carried in every rollout."""
    worker_index: int
    """0-based index; the worker draws training problems ``index, index + num_workers, ...`` (positions in
    ``problem_indices`` when it is given)."""
    num_workers: int
    """Number of inference workers."""
    task: str
    """Task name (:data:`farsync.rl.tasks.TASKS`)."""
    task_seed: int
    """Seed of the task's problems."""
    num_heldout: int
    """Size of the task's held-out set (training problems avoid it, so it must match the trainer's)."""
    model_shape: dict[str, Any]
    """Keyword arguments of :func:`farsync.rl.policy.build_policy`."""
    mode: Literal["sync", "async"]
    """Echo's sync (wait for each version) or async (bounded staleness) mode."""
    groups_per_version: int
    """``sync``: groups this worker samples with each version."""
    group_size: int
    """Completions per prompt."""
    max_new_tokens: int
    """Longest completion."""
    temperature: float
    """Sampling temperature."""
    slowdown: float = 1.0
    """>= 1: emulated speed handicap (sleep ``(slowdown - 1) x`` the sampling time)."""
    max_pending: int = 1_000
    """``async``: pause while the channel holds this many messages."""
    seed: int = 0
    """Base seed of the sampling generator."""
    problem_indices: list[int] = field(default_factory=list)
    """Training problems to draw from, in turn (empty: the whole training stream)."""
    num_trainers: int = 1
    """Trainers whose channels this worker's groups are dealt out to, in turn."""
    reward_spec: str = ""
    """``"package.module:function"`` of a user reward for the claimed reward (empty: the task's own)."""
    wait_s: float = 1.0
    """Longest single wait before ``should_stop`` is checked again."""
    poll_s: float = 0.02
    """How often the newest published version is checked while waiting for one."""
    fetch_timeout_s: float = 60.0
    """Longest fetch of one published version (all its shards); a fetch that fails keeps the held one."""
    refetch_s: float = 5.0
    """After a version failed to arrive intact, seconds before it is fetched again (``async`` samples on with
    the held version meanwhile)."""
    relay_dir: str = ""
    """The relay directory policy versions are fetched from (used when ``relay_url`` is empty)."""
    relay_url: str = ""
    """Base URL of the relay served over HTTP (empty: read ``relay_dir`` directly)."""
    shard_threads: int = 4
    """Shards fetched in parallel."""
    verify: bool = False
    """Sample with replayable seeds and attach a TOPLOC-like fingerprint (:mod:`farsync.rl.verify`)."""
    link_bandwidth_bps: float = 0.0
    """The worker's emulated link to the relay in bits/s (0: nothing modeled)."""
    link_latency_s: float = 0.0
    """One-way latency of that link."""
    link_emulation: Literal["sleep", "virtual", "off"] = "off"
    """How the link time is applied (:class:`farsync.comm.clock.Clock` modes: sleep, virtual, off)."""


@dataclass
class WorkerReport:
    """What a worker did."""

    groups: int = 0
    rollouts: int = 0
    busy_s: float = 0.0
    versions_used: int = 0
    bytes_fetched: int = 0
    """Weight bytes downloaded from the relay (retries included)."""
    failed_fetches: int = 0
    """Versions that could not be fetched intact (the worker kept the one it held)."""
    corrupt_shards: int = 0
    """Shards rejected by their sha256 check."""
    fetch_s: float = 0.0
    """Wall seconds spent fetching published versions (waiting for a new one excluded)."""


def _group_seed(seed: int, worker_id: str, counter: int) -> int:
    digest = hashlib.sha256(f"{seed}/{worker_id}/{counter}".encode()).digest()
    return int.from_bytes(digest[:7], "big")


class _Sampler:
    def __init__(self, settings: WorkerSettings, reward: RewardFn | None, prover: Prover) -> None:
        self.settings, self.prover = settings, prover
        self.task = make_task(settings.task, seed=settings.task_seed, num_heldout=settings.num_heldout)
        if reward is None:
            reward = load_reward(settings.reward_spec) if settings.reward_spec else self.task.reward
        self.reward = reward
        self.tokenizer = CharTokenizer()
        self.model = build_policy(**settings.model_shape)
        self.model.eval()
        self.generator = torch.Generator()

    def group(self, version: int, counter: int) -> list[Rollout]:
        s = self.settings
        position = s.worker_index + s.num_workers * counter
        if s.problem_indices:
            position = s.problem_indices[position % len(s.problem_indices)]
        problem = self.task.train_problem(position)
        prompt_ids = self.tokenizer.encode(problem.prompt)
        seed = _group_seed(s.seed, s.worker_id, counter)
        rollouts = []
        for completion, logprobs, proof, sampled_seed in self._sample(prompt_ids, seed):
            claimed, _ = safe_reward(self.reward, problem.prompt, self.tokenizer.decode(completion))
            rollouts.append(
                Rollout(
                    task_id=problem.task_id,
                    group_id=f"{s.worker_id}-{counter}",
                    group_size=s.group_size,
                    prompt_ids=tuple(prompt_ids),
                    completion_ids=tuple(completion),
                    sampling_logprobs=tuple(logprobs),
                    reward=claimed,
                    policy_version=version,
                    worker_id=s.worker_id,
                    seed=sampled_seed,
                    temperature=s.temperature,
                    fingerprint=proof,
                )
            )
        return rollouts

    def _sample(self, prompt_ids: list[int], seed: int) -> list[tuple[list[int], list[float], bytes, int]]:
        """The group's ``(completion, log-probs, proof, seed)``: replayable and proven with ``verify``."""
        s = self.settings
        if s.verify:
            seeds = [rollout_seed(seed, index) for index in range(s.group_size)]
            proven = sample_group_with_proofs(
                self.model,
                prompt_ids,
                seeds=seeds,
                max_new_tokens=s.max_new_tokens,
                temperature=s.temperature,
                end_id=CharTokenizer.END_ID,
            )
            return [
                (ids, values, proof, each) for (ids, values, proof), each in zip(proven, seeds, strict=True)
            ]
        self.generator.manual_seed(seed)
        samples = sample_group(
            self.model,
            prompt_ids,
            group_size=s.group_size,
            max_new_tokens=s.max_new_tokens,
            temperature=s.temperature,
            generator=self.generator,
        )
        return [
            (ids, values, self.prover.prove(self.model, tuple(prompt_ids), tuple(ids)), seed)
            for ids, values in samples
        ]


def _next_version(settings: WorkerSettings, weights: WeightSource, held: int, used: int) -> int:
    """The version to sample the next group with: -1 means "none yet, ask again"."""
    if settings.mode == "sync":
        return held if used < settings.groups_per_version else -1
    return weights.latest_version()


@dataclass
class _Backoff:
    """A version whose fetch failed, and when to try it again."""

    version: int = -1
    until: float = 0.0


def _fetch_newer(
    settings: WorkerSettings,
    weights: WeightSource,
    sampler: _Sampler,
    report: WorkerReport,
    held: int,
    backoff: _Backoff,
) -> int:
    """Loads the newest published version if it is newer than ``held`` (and not a version that just failed);
    returns the version held afterwards. A failed fetch is logged by the source; ``held`` stays."""
    latest = weights.latest_version()
    if latest <= held or (latest == backoff.version and time.monotonic() < backoff.until):
        return held
    started = time.perf_counter()
    try:
        version, state = weights.fetch_latest(settings.fetch_timeout_s, newer_than=held)
    except WeightsUnavailable:
        backoff.version, backoff.until = latest, time.monotonic() + settings.refetch_s
        return held
    finally:
        report.fetch_s += time.perf_counter() - started
    sampler.model.load_state_dict(state)
    report.versions_used += 1
    return version


def run_worker(
    settings: WorkerSettings,
    weights: WeightSource,
    channel: RolloutChannel | list[RolloutChannel],
    should_stop: Callable[[], bool],
    *,
    reward: RewardFn | None = None,
    prover: Prover | None = None,
) -> WorkerReport:
    """Samples and pushes rollouts until ``should_stop()`` (see the module doc). With several channels (one per
    trainer), group ``c`` goes to channel ``c mod len(channels)``, so trainers get equal shares."""
    channels = channel if isinstance(channel, list) else [channel]
    sampler = _Sampler(settings, reward, prover if prover is not None else NoProof())
    report = WorkerReport()
    held, used, counter = -1, 0, 0
    backoff = _Backoff()
    while not should_stop():
        wanted = _next_version(settings, weights, held, used)
        if wanted < 0 or wanted > held:
            newer = _fetch_newer(settings, weights, sampler, report, held, backoff)
            if newer != held:
                held, used = newer, 0
                continue
            if (
                settings.mode == "sync" or held < 0
            ):  # nothing to sample with yet: poll (should_stop stays prompt)
                time.sleep(settings.poll_s)
                continue
            # async, the newest version failed to arrive intact: sample on with the held one
        if settings.mode == "async" and sum(c.pending() for c in channels) >= settings.max_pending:
            time.sleep(0.01)
            continue
        started = time.perf_counter()
        rollouts = sampler.group(held, counter)
        elapsed = time.perf_counter() - started
        if settings.slowdown > 1.0:
            time.sleep((settings.slowdown - 1.0) * elapsed)
        for rollout in rollouts:
            channels[counter % len(channels)].push(encode_rollout(rollout), timeout_s=settings.wait_s * 30)
        report.busy_s += time.perf_counter() - started
        report.groups += 1
        report.rollouts += len(rollouts)
        counter += 1
        used += 1
    return report


def worker_process(
    settings: dict[str, Any],
    run_dir: str,
    reward: RewardFn | None = None,
    prover: Prover | None = None,
    num_threads: int = 1,
) -> None:
    """Entry point of a worker process: weights and rollouts through ``run_dir``; stops when
    ``run_dir/stop`` exists. Writes its :class:`WorkerReport` to ``run_dir/workers/<id>.json``. ``reward``
    and ``prover`` come from the parent that started it (its own objects, pickled by multiprocessing)."""
    import json

    torch.set_num_threads(num_threads)
    parsed = WorkerSettings(**settings)
    root = Path(run_dir)
    weights = weight_source(parsed)
    channels: list[RolloutChannel] = [
        DirectoryRolloutChannel(path) for path in rollout_dirs(root, parsed.num_trainers)
    ]
    stop_file = root / "stop"
    try:
        report = run_worker(parsed, weights, channels, stop_file.exists, reward=reward, prover=prover)
    finally:
        weights.close()
    fetch_report(report, weights)
    (root / "workers").mkdir(exist_ok=True)
    (root / "workers" / f"{parsed.worker_id}.json").write_text(json.dumps(asdict(report)))


def rollout_dirs(run_dir: Path, num_trainers: int) -> list[Path]:
    """The rollout directory of each trainer under ``run_dir``."""
    if num_trainers == 1:
        return [run_dir / "rollouts"]
    return [run_dir / "rollouts" / f"trainer{rank}" for rank in range(num_trainers)]


def settings_dict(settings: WorkerSettings) -> dict[str, Any]:
    """``settings`` as plain values (for a process's arguments)."""
    return asdict(settings)


def weight_source(settings: WorkerSettings) -> RelaySource:
    """This worker's end of the weight broadcast: a :class:`~farsync.rl.broadcast.RelaySource` over HTTP
    (``relay_url``) or the relay directory, verified shards kept in memory, on its emulated link."""
    relay: Relay = HttpRelay(settings.relay_url) if settings.relay_url else DirectoryRelay(settings.relay_dir)
    link = None
    if settings.link_bandwidth_bps > 0:
        model = LinkModel(bandwidth_bps=settings.link_bandwidth_bps, latency_s=settings.link_latency_s)
        link = LinkEmulator(model, Clock(settings.link_emulation), ByteLedger(), "weights", group_size=2)
    return RelaySource(relay, None, settings.worker_id, num_threads=settings.shard_threads, link=link)


def fetch_report(report: WorkerReport, source: WeightSource) -> None:
    """Copies a :class:`~farsync.rl.broadcast.RelaySource`'s fetch counters into ``report``."""
    if isinstance(source, RelaySource):
        report.bytes_fetched = source.stats.bytes_fetched
        report.failed_fetches = source.stats.num_failed_fetches
        report.corrupt_shards = source.stats.num_corrupt_rejected
