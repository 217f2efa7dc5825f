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

from farsync.rl.files import DirectoryRolloutChannel, DirectoryWeights
from farsync.rl.messages import Rollout, encode_rollout
from farsync.rl.policy import build_policy, sample_group
from farsync.rl.proofs import NoProof, Prover
from farsync.rl.tasks import CharTokenizer, RewardFn, load_reward, make_task, safe_reward
from farsync.rl.transport import RolloutChannel, WeightSource, WeightsUnavailable

__all__ = ["WorkerReport", "WorkerSettings", "run_worker", "settings_dict", "worker_process"]

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
    reward_spec: str = ""
    """``"package.module:function"`` of a user reward for the claimed reward (empty: the task's own)."""
    wait_s: float = 1.0
    """Longest single wait before ``should_stop`` is checked again."""


@dataclass
class WorkerReport:
    """What a worker did."""

    groups: int = 0
    rollouts: int = 0
    busy_s: float = 0.0
    versions_used: int = 0


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
        self.generator.manual_seed(seed)
        samples = sample_group(
            self.model,
            prompt_ids,
            group_size=s.group_size,
            max_new_tokens=s.max_new_tokens,
            temperature=s.temperature,
            generator=self.generator,
        )
        rollouts = []
        for completion, logprobs in samples:
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
                    seed=seed,
                    temperature=s.temperature,
                    fingerprint=self.prover.prove(self.model, tuple(prompt_ids), tuple(completion)),
                )
            )
        return rollouts


def _next_version(settings: WorkerSettings, weights: WeightSource, held: int, used: int) -> int:
    """The version to sample the next group with: -1 means "none yet, ask again"."""
    if settings.mode == "sync":
        return held if used < settings.groups_per_version else -1
    return weights.latest_version()


def run_worker(
    settings: WorkerSettings,
    weights: WeightSource,
    channel: RolloutChannel,
    should_stop: Callable[[], bool],
    *,
    reward: RewardFn | None = None,
    prover: Prover | None = None,
) -> WorkerReport:
    """Samples and pushes rollouts until ``should_stop()`` (see the module doc)."""
    sampler = _Sampler(settings, reward, prover if prover is not None else NoProof())
    report = WorkerReport()
    held, used, counter = -1, 0, 0
    while not should_stop():
        wanted = _next_version(settings, weights, held, used)
        if wanted < 0 or wanted > held:
            try:
                held, state = weights.fetch_latest(settings.wait_s, newer_than=held)
            except WeightsUnavailable:
                continue
            sampler.model.load_state_dict(state)
            used, report.versions_used = 0, report.versions_used + 1
            continue
        if settings.mode == "async" and channel.pending() >= settings.max_pending:
            time.sleep(0.01)
            continue
        started = time.perf_counter()
        rollouts = sampler.group(held, counter)
        elapsed = time.perf_counter() - started
        if settings.slowdown > 1.0:
            time.sleep((settings.slowdown - 1.0) * elapsed)
        for rollout in rollouts:
            channel.push(encode_rollout(rollout), timeout_s=settings.wait_s * 30)
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
    weights = DirectoryWeights(root / "weights", reader_id=parsed.worker_id)
    channel = DirectoryRolloutChannel(root / "rollouts")
    stop_file = root / "stop"
    report = run_worker(parsed, weights, channel, stop_file.exists, reward=reward, prover=prover)
    (root / "workers").mkdir(exist_ok=True)
    (root / "workers" / f"{parsed.worker_id}.json").write_text(json.dumps(asdict(report)))


def settings_dict(settings: WorkerSettings) -> dict[str, Any]:
    """``settings`` as plain values (for a process's arguments)."""
    return asdict(settings)
