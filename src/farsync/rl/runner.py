"""``farsync rl``: a whole RL post-training run, from the warm-start to the summary.

This module composes the pieces into a run directory like training's (``config.toml``, ``metrics.jsonl``,
``summary.json``, TensorBoard or W&B through ``[logging]``): build the task and the policy, warm it up with
supervised steps (:mod:`farsync.rl.sft`), measure held-out pass@1, publish policy version 0, start the
inference workers (:mod:`farsync.rl.pool`), then for every step pull rollouts until a batch of complete
fresh groups is ready (:mod:`farsync.rl.intake`), take one GRPO step (:mod:`farsync.rl.trainer`) and publish
the next version. A checkpoint (model as safetensors, optimizer, counters) is written at every evaluation,
so ``resume`` continues where it stopped. Waiting for a batch has a timeout (``rl.rollout_timeout_s``) and
fails with a message saying what arrived.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from farsync.config import RunConfig, config_to_toml
from farsync.rl.difficulty import keep_by_difficulty, pass_rates
from farsync.rl.grpo import LossConfig
from farsync.rl.intake import RolloutIntake
from farsync.rl.messages import RolloutLimits
from farsync.rl.policy import build_policy, pass_at_1
from farsync.rl.pool import WorkerPool
from farsync.rl.proofs import Prover, Verifier
from farsync.rl.sft import SupervisedTrainer
from farsync.rl.tasks import CharTokenizer, RewardFn, Task, load_reward, make_task
from farsync.rl.trainer import GRPOTrainer, StepReport
from farsync.rl.worker import WorkerSettings

__all__ = ["RLStalled", "model_shape", "run_rl", "worker_settings"]

logger = logging.getLogger(__name__)


class RLStalled(TimeoutError):
    """No batch of usable rollouts arrived within ``rl.rollout_timeout_s``."""


def model_shape(config: RunConfig) -> dict[str, Any]:
    """The keyword arguments of :func:`farsync.rl.policy.build_policy` for ``[model]``, with the task
    tokenizer's vocabulary."""
    model = config.model
    return {
        "kind": model.kind,
        "architecture": model.architecture,
        "num_layers": model.num_layers,
        "width": model.width,
        "num_heads": model.num_heads,
        "context_length": model.context_length,
        "vocab_size": CharTokenizer().vocab_size,
        "num_kv_heads": model.num_kv_heads,
        "intermediate_size": model.intermediate_size,
        "tie_embeddings": model.tie_embeddings,
    }


def worker_settings(config: RunConfig, problem_indices: list[int] | None = None) -> list[WorkerSettings]:
    """One :class:`WorkerSettings` per configured inference worker (drawing from ``problem_indices`` when
    given: the problems offline difficulty filtering kept)."""
    rl = config.rl
    slowdowns = rl.worker_slowdowns or [1.0] * rl.num_rollout_workers
    return [
        WorkerSettings(
            worker_id=f"w{index}",
            worker_index=index,
            num_workers=rl.num_rollout_workers,
            task=rl.task,
            task_seed=config.seed,
            num_heldout=rl.num_heldout,
            model_shape=model_shape(config),
            mode=rl.mode,
            groups_per_version=max(1, rl.num_groups_per_step // rl.num_rollout_workers),
            group_size=rl.group_size,
            max_new_tokens=rl.max_new_tokens,
            temperature=rl.temperature,
            slowdown=slowdowns[index],
            max_pending=rl.num_groups_per_step * rl.group_size,
            seed=config.seed * 1000 + index,
            reward_spec=rl.reward,
            problem_indices=list(problem_indices or []),
        )
        for index in range(rl.num_rollout_workers)
    ]


def _check_fits(config: RunConfig, task: Task) -> None:
    from farsync.config import ConfigError

    if config.model.kind not in ("gpt", "hf") or config.model.hf_path:
        raise ConfigError(
            "model.kind" if config.model.kind not in ("gpt", "hf") else "model.hf_path",
            config.model.hf_path or config.model.kind,
            "RL trains a causal LM over the task's 44-character vocabulary: model.kind = 'gpt', or 'hf' built "
            "from the size keys (a checkpoint directory brings its own tokenizer, which the tasks do not use)",
        )
    needed = task.max_prompt_chars() + config.rl.max_new_tokens
    if needed > config.model.context_length:
        raise ConfigError(
            "model.context_length",
            config.model.context_length,
            f"task {config.rl.task!r} needs prompt + rl.max_new_tokens = {needed} tokens",
        )
    if config.rl.max_new_tokens < task.max_answer_chars() + 1:
        raise ConfigError(
            "rl.max_new_tokens",
            config.rl.max_new_tokens,
            f"task {config.rl.task!r} answers take up to {task.max_answer_chars()} characters plus the end token",
        )


class _Metrics:
    """metrics.jsonl plus the configured loggers."""

    def __init__(self, config: RunConfig, run_dir: Path) -> None:
        # Imported here: farsync.report pulls in matplotlib, seconds that `import farsync` should not pay.
        from farsync.report.loggers import run_loggers

        self.path = run_dir / "metrics.jsonl"
        self.loggers = run_loggers(config, run_dir)

    def log(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        self.loggers.log(record)

    def close(self) -> None:
        self.loggers.close()


def _save_checkpoint(run_dir: Path, trainer: GRPOTrainer, state: dict[str, Any]) -> None:
    directory = run_dir / "checkpoint"
    directory.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in trainer.model.state_dict().items()}, directory / "model.tmp")
    torch.save(trainer.optimizer.state_dict(), directory / "optimizer.tmp")
    (directory / "state.tmp").write_text(json.dumps(state))
    for name in ("model", "optimizer", "state"):
        suffix = {"model": ".safetensors", "optimizer": ".pt", "state": ".json"}[name]
        (directory / f"{name}.tmp").replace(directory / f"{name}{suffix}")


def _load_checkpoint(run_dir: Path, trainer: GRPOTrainer) -> dict[str, Any]:
    directory = run_dir / "checkpoint"
    trainer.model.load_state_dict(load_file(directory / "model.safetensors"))
    trainer.optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))
    state: dict[str, Any] = json.loads((directory / "state.json").read_text())
    trainer.version = int(state["version"])
    return state


def _collect(
    intake: RolloutIntake, pool: WorkerPool, version: int, num_groups: int, timeout_s: float
) -> None:
    """Pulls messages until ``num_groups`` complete fresh groups are ready; raises :class:`RLStalled`."""
    deadline = time.monotonic() + timeout_s
    while intake.num_ready(version) < num_groups:
        if pool.alive() == 0:
            raise RLStalled(
                f"every inference worker has exited (policy version {version}); see their errors above "
                f"(intake: {intake.counters.as_dict()})"
            )
        if time.monotonic() > deadline:
            raise RLStalled(
                f"no batch of {num_groups} usable groups within {timeout_s:.0f}s at policy version {version} "
                f"(intake: {intake.counters.as_dict()}; {pool.alive()} workers alive)"
            )
        for message in pool.channel.pull(256, timeout_s=0.5):
            intake.add(message, version)


def _step_record(step: int, version: int, report: StepReport | None, wall_s: float) -> dict[str, Any]:
    record: dict[str, Any] = {"kind": "rl_step", "step": step, "version": version, "wall_s": wall_s}
    if report is None:
        record["skipped"] = True
        return record
    values = asdict(report)
    for key, value in values.items():
        record[key] = None if isinstance(value, float) and math.isnan(value) else value
    return record


class _RLRun:
    """One run's state: the policy, its trainers, the worker pool and the counters."""

    def __init__(
        self, config: RunConfig, run_dir: Path, task: Task, reward: RewardFn, metrics: _Metrics
    ) -> None:
        self.config, self.run_dir, self.task, self.reward, self.metrics = (
            config,
            run_dir,
            task,
            reward,
            metrics,
        )
        rl = config.rl
        torch.manual_seed(config.seed)
        self.model = build_policy(**model_shape(config))
        self.tokenizer = CharTokenizer()
        self.sft = SupervisedTrainer(self.model, task, lr=rl.sft_lr, batch_size=rl.sft_batch_size)
        loss = LossConfig(
            loss=rl.loss,
            clip_low=rl.clip_low,
            clip_high=rl.clip_high,
            delta=rl.delta,
            kl_coef=rl.kl_coef,
            max_tokens=rl.max_new_tokens,
        )
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=rl.lr, weight_decay=0.0)
        self.trainer = GRPOTrainer(self.model, optimizer, loss, temperature=rl.temperature)
        self.state: dict[str, Any] = {"step": 0, "version": 0, "sft": {}, "pass_at_1": {}}
        self.timing = {"collect_s": 0.0, "train_s": 0.0, "publish_s": 0.0, "eval_s": 0.0}
        self.held_models: dict[int, torch.nn.Module] = {}
        self.num_held_models = 0

    def hold(self, version: int) -> None:
        """Keeps a frozen copy of the current policy as ``version`` for the verifier (the newest few)."""
        if self.num_held_models < 1:
            return
        self.held_models[version] = copy.deepcopy(self.model).eval()
        for old in sorted(self.held_models)[: -self.num_held_models]:
            del self.held_models[old]

    def evaluate(self, label: str) -> float:
        started = time.perf_counter()
        score = pass_at_1(
            self.model,
            self.task.heldout,
            self.reward,
            self.tokenizer,
            max_new_tokens=self.config.rl.max_new_tokens,
        )
        self.timing["eval_s"] += time.perf_counter() - started
        self.state["pass_at_1"][label] = score
        self.metrics.log({"kind": "eval", "step": self.state["step"], "label": label, "pass_at_1": score})
        return score

    def warm_start(self) -> None:
        rl = self.config.rl
        before = self.evaluate("before_sft") if rl.num_sft_steps else None
        validation = self.task.validation() if rl.sft_stop_at_pass > 0 else []
        validation_pass = None
        while self.sft.num_steps < rl.num_sft_steps:
            self.sft.run(min(25, rl.num_sft_steps - self.sft.num_steps))
            if validation:
                validation_pass = pass_at_1(
                    self.model, validation, self.reward, self.tokenizer, max_new_tokens=rl.max_new_tokens
                )
                if validation_pass >= rl.sft_stop_at_pass:
                    break
        after = self.evaluate("after_sft")
        self.state["sft"] = {
            "num_steps": self.sft.num_steps,
            "wall_s": self.sft.wall_s,
            "final_loss": self.sft.last_loss if self.sft.num_steps else None,
            "validation_pass_at_1": validation_pass,
            "pass_at_1_before": before,
            "pass_at_1_after": after,
        }
        self.metrics.log({"kind": "sft", "step": 0, **self.state["sft"]})

    def filter_problems(self) -> None:
        """Offline difficulty filtering (:mod:`farsync.rl.difficulty`) with the starting policy."""
        rl = self.config.rl
        if rl.num_difficulty_problems == 0:
            return
        started = time.perf_counter()
        candidates = list(range(rl.num_difficulty_problems))
        rates = pass_rates(
            self.model,
            self.task,
            candidates,
            self.reward,
            num_samples=rl.num_difficulty_samples,
            max_new_tokens=rl.max_new_tokens,
            temperature=rl.temperature,
            seed=self.config.seed,
        )
        kept = keep_by_difficulty(candidates, rates, low=0.0, high=1.0)
        if not kept:
            raise RLStalled(
                f"offline difficulty filtering kept none of {len(candidates)} problems (every pass rate is 0 or "
                "1); warm up longer (rl.num_sft_steps) or set rl.num_difficulty_problems = 0"
            )
        self.state["problem_indices"] = kept
        self.state["difficulty"] = {
            "num_candidates": len(candidates),
            "num_kept": len(kept),
            "num_always_solved": sum(r == 1.0 for r in rates),
            "num_never_solved": sum(r == 0.0 for r in rates),
            "wall_s": time.perf_counter() - started,
        }
        self.metrics.log({"kind": "difficulty", "step": 0, **self.state["difficulty"]})

    def train(self, pool: WorkerPool, intake: RolloutIntake, progress: bool) -> None:
        rl = self.config.rl
        bar = tqdm(
            total=rl.num_steps,
            initial=self.state["step"],
            unit="step",
            disable=not progress,
            dynamic_ncols=True,
        )
        started, eval_before = time.perf_counter(), self.timing["eval_s"]
        while self.state["step"] < rl.num_steps:
            version = self.trainer.version
            t0 = time.perf_counter()
            _collect(intake, pool, version, rl.num_groups_per_step, rl.rollout_timeout_s)
            t1 = time.perf_counter()
            report = self.trainer.step(intake.take_groups(rl.num_groups_per_step, version))
            t2 = time.perf_counter()
            self.trainer.version += 1
            pool.weights.publish(self.trainer.version, self.model.state_dict())
            self.hold(self.trainer.version)
            self.timing["collect_s"] += t1 - t0
            self.timing["train_s"] += t2 - t1
            self.timing["publish_s"] += time.perf_counter() - t2
            self.state["step"] += 1
            self.state["version"] = self.trainer.version
            self.metrics.log(_step_record(self.state["step"], version, report, time.perf_counter() - started))
            bar.update(1)
            if report is not None:
                bar.set_postfix(reward=f"{report.mean_reward:.2f}", mismatch=f"{report.logprob_mismatch:.3f}")
            if self.state["step"] % rl.eval_every == 0 or self.state["step"] == rl.num_steps:
                self.evaluate(f"step_{self.state['step']}")
                _save_checkpoint(self.run_dir, self.trainer, self.state)
        bar.close()
        loop_s = time.perf_counter() - started - (self.timing["eval_s"] - eval_before)
        self.state["rl_wall_s"] = self.state.get("rl_wall_s", 0.0) + loop_s


def _resolve_reward(config: RunConfig, task: Task, reward: RewardFn | None) -> RewardFn:
    from farsync.config import ConfigError

    if reward is not None:
        return reward
    if not config.rl.reward:
        return task.reward
    try:
        return load_reward(config.rl.reward)
    except ValueError as error:
        raise ConfigError("rl.reward", config.rl.reward, str(error)) from None


def run_rl(
    config: RunConfig,
    out_dir: str | Path,
    *,
    reward: RewardFn | None = None,
    verifier: Verifier | None = None,
    prover: Prover | None = None,
    resume: bool = False,
    progress: bool = False,
    initial_state: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Runs RL post-training as ``config`` says, in ``out_dir``; returns the summary (also summary.json).

    ``reward`` is a Python reward function ``(prompt, completion) -> float`` (overrides ``rl.reward``);
    ``verifier`` checks rollouts on the trainer and ``prover`` fingerprints them on thread workers
    (:mod:`farsync.rl.proofs`). ``initial_state`` starts RL from those policy weights (a state dict of the
    configured GPT) instead of the warm-start. Raises :class:`~farsync.config.ConfigError` on a bad setting and
    :class:`RLStalled` when rollouts stop arriving.
    """
    config.validate()
    run_dir = Path(out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    task = make_task(config.rl.task, seed=config.seed, num_heldout=config.rl.num_heldout)
    _check_fits(config, task)
    reward_fn = _resolve_reward(config, task, reward)
    (run_dir / "config.toml").write_text(config_to_toml(config))
    metrics = _Metrics(config, run_dir)
    try:
        run = _RLRun(config, run_dir, task, reward_fn, metrics)
        if resume and (run_dir / "checkpoint" / "state.json").is_file():
            run.state = _load_checkpoint(run_dir, run.trainer)
        else:
            if initial_state is not None:
                run.model.load_state_dict(initial_state)
            else:
                run.warm_start()
            run.evaluate("rl_start")
            run.filter_problems()
        return _train_with_workers(run, reward, verifier, prover, progress)
    finally:
        metrics.close()


def _train_with_workers(
    run: _RLRun, reward: RewardFn | None, verifier: Verifier | None, prover: Prover | None, progress: bool
) -> dict[str, Any]:
    config = run.config
    rl = config.rl
    for leftover in ("weights", "rollouts", "workers"):
        shutil.rmtree(run.run_dir / leftover, ignore_errors=True)
    settings = worker_settings(config, run.state.get("problem_indices"))
    pool = WorkerPool(settings, run.run_dir, backend=rl.worker_backend, reward=reward, prover=prover)
    limits = RolloutLimits(
        vocab_size=run.tokenizer.vocab_size,
        max_prompt_tokens=config.model.context_length,
        max_completion_tokens=rl.max_new_tokens,
        max_group_size=rl.group_size,
    )
    staleness = rl.max_staleness if rl.mode == "async" else 0
    intake = RolloutIntake(
        run.task,
        run.reward,
        limits,
        max_staleness=staleness,
        verifier=verifier,
        model_for_version=run.held_models.get if verifier is not None else None,
    )
    run.num_held_models = staleness + 1 if verifier is not None else 0
    pool.weights.publish(run.trainer.version, run.model.state_dict())
    run.hold(run.trainer.version)
    pool.start()
    try:
        run.train(pool, intake, progress)
    finally:
        pool.stop()
        for transient in ("weights", "rollouts"):
            shutil.rmtree(run.run_dir / transient, ignore_errors=True)
        (run.run_dir / "stop").unlink(missing_ok=True)
    summary = _summary(run, intake, pool)
    (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _summary(run: _RLRun, intake: RolloutIntake, pool: WorkerPool) -> dict[str, Any]:
    rl = run.config.rl
    steps = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    step_records = [r for r in steps if r.get("kind") == "rl_step" and not r.get("skipped")]
    mismatches = [r["logprob_mismatch"] for r in step_records]
    return {
        "kind": "rl",
        "task": rl.task,
        "mode": rl.mode,
        "max_staleness": rl.max_staleness if rl.mode == "async" else 0,
        "loss": rl.loss,
        "num_steps": run.state["step"],
        "sft": run.state["sft"],
        "difficulty": run.state.get("difficulty"),
        "pass_at_1": run.state["pass_at_1"],
        "pass_at_1_start": run.state["pass_at_1"].get("rl_start"),
        "pass_at_1_final": run.state["pass_at_1"].get(f"step_{run.state['step']}"),
        "rl_wall_s": run.state.get("rl_wall_s", 0.0),
        "timing": run.timing,
        "mean_logprob_mismatch": sum(mismatches) / len(mismatches) if mismatches else None,
        "skipped_steps": sum(1 for r in steps if r.get("skipped")),
        "intake": intake.counters.as_dict(),
        "workers": {name: asdict(report) for name, report in pool.reports.items()},
    }
