"""A swarm run from a TOML file (``farsync rl FILE`` where FILE has a ``[swarm]`` table): its config, checks,
run directory and progress.

The ``[swarm]`` table loads straight into :class:`~farsync.rl.swarm.SwarmSettings` (so a field added there is a
config key at once), ``[swarm.loss]`` and ``[swarm.limits]`` into its nested sections, and an optional
``[warm_start]`` table into :class:`WarmStartSettings`: the supervised warm-start every node starts from (a
fresh policy earns no reward on the shipped tasks, so all its groups tie and GRPO has nothing to learn from).
:func:`load_swarm_config` checks everything it can before anything is written: unknown keys, types, the
settings' own ``validate()``, then the names that are resolved only when the nodes are built (task, defences,
judge, attack and its parameters, every model shape, built on the meta device); each failure is one
:class:`~farsync.config.ConfigError` naming the key, the value and what is allowed.

:func:`run_swarm_in_dir` writes the run directory like ``farsync rl``'s: ``config.toml`` (the resolved
settings, which :func:`load_swarm_config` reads back), ``metrics.jsonl`` (the warm-start, then one line per
round) and ``summary.json`` (:func:`~farsync.rl.swarm.run_swarm`'s summary plus the warm-start and totals). A
swarm keeps no checkpoint: a run is started anew.
"""

from __future__ import annotations

import copy
import inspect
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from farsync.config import ConfigError, build_section, section_to_toml
from farsync.rl.defences import DEFENCES, build_defences
from farsync.rl.poison import load_poison
from farsync.rl.policy import build_policy, pass_at_1
from farsync.rl.sft import SupervisedTrainer
from farsync.rl.swarm import SwarmSettings, run_swarm, task_vocab_size
from farsync.rl.swarm_node import SwarmNode
from farsync.rl.tasks import TASKS, CharTokenizer, make_task

__all__ = [
    "SWARM_SECTION",
    "SwarmRunConfig",
    "WarmStartSettings",
    "load_swarm_config",
    "result_line",
    "run_swarm_in_dir",
]

SWARM_SECTION = "swarm"
"""The TOML table whose presence makes ``farsync rl`` run a swarm."""


@dataclass(kw_only=True)
class WarmStartSettings:
    """Supervised warm-start of the swarm's shared initial policy (``swarm.model_shape``) on the task's format.

    Nodes with their own shape (``swarm.node_shapes``) start from fresh weights, as in
    :func:`~farsync.rl.swarm.run_swarm`."""

    num_steps: int = 0
    """Most supervised steps (0: no warm-start; every node starts from fresh weights)."""
    lr: float = 3e-3
    """AdamW learning rate of the warm-start."""
    batch_size: int = 32
    """Training problems per step."""
    stop_at_pass: float = 0.0
    """Stop once greedy pass@1 on ``num_validation`` training-stream problems (never the held-out ones),
    checked every 25 steps, reaches this (0: run all ``num_steps``)."""
    num_validation: int = 64
    """Validation problems for ``stop_at_pass``."""

    def validate(self) -> None:
        """Raises ``ValueError`` naming the first bad setting and what is allowed."""
        checks = [
            (self.num_steps >= 0, "num_steps", "must be >= 0 (0: no warm-start)"),
            (self.lr > 0, "lr", "must be > 0"),
            (self.batch_size >= 1, "batch_size", "must be >= 1"),
            (0.0 <= self.stop_at_pass <= 1.0, "stop_at_pass", "must be in [0, 1]"),
            (self.num_validation >= 1, "num_validation", "must be >= 1"),
        ]
        for ok, key, allowed in checks:
            if not ok:
                raise ValueError(f"warm_start.{key} = {getattr(self, key)!r}: {allowed}")


@dataclass(kw_only=True)
class SwarmRunConfig:
    """What a swarm TOML file holds: ``[swarm]`` and an optional ``[warm_start]``."""

    swarm: SwarmSettings = field(default_factory=SwarmSettings)
    """The swarm (:class:`~farsync.rl.swarm.SwarmSettings`; ``[swarm.loss]``, ``[swarm.limits]`` nested)."""
    warm_start: WarmStartSettings = field(default_factory=WarmStartSettings)
    """The supervised warm-start of the shared initial policy."""

    def validate(self) -> None:
        """Both sections' own checks (``ValueError`` worded ``"key = value: allowed"``)."""
        self.swarm.validate()
        self.warm_start.validate()


def _check_plugins(settings: SwarmSettings) -> None:
    """The names the nodes resolve when they are built, resolved once here (nothing is written yet)."""
    if settings.task not in TASKS:
        raise ConfigError("swarm.task", settings.task, "allowed: " + ", ".join(sorted(TASKS)))
    for name in settings.defences:
        if name not in DEFENCES:
            raise ConfigError("swarm.defences", settings.defences, "allowed items: " + ", ".join(DEFENCES))
    try:
        build_defences(
            settings.defences, task=settings.task, min_logprob=settings.min_logprob, judge=settings.judge
        )
    except ValueError as error:
        raise ConfigError("swarm.judge", settings.judge, str(error)) from None
    try:
        load_poison(settings.attack, **settings.attack_params)
    except ValueError as error:
        raise ConfigError("swarm.attack", settings.attack, str(error)) from None


def _check_shapes(settings: SwarmSettings) -> None:
    """Every node's model shape binds to :func:`~farsync.rl.policy.build_policy` and builds (on the meta
    device: no memory, no time)."""
    allowed = ", ".join(p for p in inspect.signature(build_policy).parameters if p != "vocab_size")
    shapes = [("swarm.model_shape", settings.model_shape)] + [
        (f"swarm.node_shapes[{i}]", {**settings.model_shape, **shape})
        for i, shape in enumerate(settings.node_shapes)
    ]
    for key, shape in shapes:
        if "vocab_size" in shape:
            raise ConfigError(key, shape, "vocab_size is the task's (filled in); allowed keys: " + allowed)
        try:
            with torch.device("meta"):
                build_policy(**shape, vocab_size=task_vocab_size())
        except (TypeError, ValueError, KeyError, ImportError) as error:
            raise ConfigError(key, shape, f"{error}; keys: {allowed}") from None


def load_swarm_config(data: dict[str, Any]) -> SwarmRunConfig:
    """The swarm run a config file's tables describe (``[swarm]``, optional ``[warm_start]``), checked;
    raises :class:`~farsync.config.ConfigError` on the first bad key or value."""
    for key, value in data.items():
        if key not in ("swarm", "warm_start"):
            raise ConfigError(
                key,
                value,
                "a config with a [swarm] table runs a swarm, which reads only [swarm] (with [swarm.loss], "
                "[swarm.limits]; the model is swarm.model_shape) and [warm_start]",
            )
    config = build_section(SwarmRunConfig, data)
    _check_plugins(config.swarm)
    _check_shapes(config.swarm)
    return config


def config_toml(config: SwarmRunConfig) -> str:
    """The resolved settings as TOML that :func:`load_swarm_config` reads back to an equal config."""
    return section_to_toml("swarm", config.swarm) + "\n" + section_to_toml("warm_start", config.warm_start)


def _warm_start(config: SwarmRunConfig) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
    settings, warm = config.swarm, config.warm_start
    if warm.num_steps == 0:
        return None, {"sft_steps": 0}
    torch.manual_seed(settings.seed)
    model = build_policy(**settings.model_shape, vocab_size=task_vocab_size())
    task = make_task(settings.task, seed=settings.task_seed, num_heldout=settings.num_heldout)
    trainer = SupervisedTrainer(model, task, lr=warm.lr, batch_size=warm.batch_size)
    validation, reached = task.validation(warm.num_validation), 0.0
    chunk = 25 if warm.stop_at_pass > 0 else warm.num_steps
    while trainer.num_steps < warm.num_steps and (warm.stop_at_pass == 0 or reached < warm.stop_at_pass):
        trainer.run(min(chunk, warm.num_steps - trainer.num_steps))
        reached = pass_at_1(
            model, validation, task.reward, CharTokenizer(), max_new_tokens=settings.max_new_tokens
        )
    info = {
        "sft_steps": trainer.num_steps,
        "sft_wall_s": trainer.wall_s,
        "validation_pass": reached,
        "last_loss": trainer.last_loss,
    }
    return copy.deepcopy(model.state_dict()), info


class _RoundLog:
    """``run_swarm``'s per-round hook: one metrics.jsonl line and a progress-bar update per round."""

    def __init__(self, metrics: Any, bar: Any) -> None:
        self.metrics, self.bar = metrics, bar
        self.trained: dict[str, int] = {}

    def __call__(self, round_index: int, nodes: list[SwarmNode]) -> None:
        rewards = []
        for node in nodes:
            count = len(node.counters.local_rewards)
            if node.attack is None and count > self.trained.get(node.node_id, 0):
                rewards.append(node.counters.local_rewards[-1])
            self.trained[node.node_id] = count
        record = {
            "kind": "round",
            "round": round_index,
            "num_trained": len(rewards),
            "mean_local_reward": sum(rewards) / len(rewards) if rewards else None,
            "rejected": sum(sum(n.counters.rejected.values()) for n in nodes),
            "banned": sum(len(n.counters.banned) for n in nodes),
            "dropped_by_defences": sum(sum(n.defence_log.dropped.values()) for n in nodes),
        }
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        self.bar.update(1)
        reward = record["mean_local_reward"]
        self.bar.set_postfix(
            reward="-" if reward is None else f"{reward:.2f}",
            rejected=record["rejected"],
            dropped=record["dropped_by_defences"],
        )


def _totals(summary: dict[str, Any]) -> dict[str, Any]:
    honest = [row for row in summary["nodes"] if not row["malicious"]]
    return {
        "num_honest": len(honest),
        "num_malicious": len(summary["nodes"]) - len(honest),
        "rejected_total": sum(sum(row["rejected"].values()) for row in honest),
        "banned_total": sum(len(row["banned"]) for row in honest),
        "dropped_by_defences_total": sum(sum(row["defences"]["dropped"].values()) for row in honest),
    }


def run_swarm_in_dir(config: SwarmRunConfig, run_dir: Path, *, progress: bool = False) -> dict[str, Any]:
    """Warm-starts (if configured) and runs the swarm in ``run_dir``; returns the summary (also
    ``summary.json``). ``config`` comes from :func:`load_swarm_config` (checked there)."""
    config.validate()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(config_toml(config))
    begin = time.perf_counter()
    with (run_dir / "metrics.jsonl").open("w") as metrics:
        state, warm_info = _warm_start(config)
        metrics.write(json.dumps({"kind": "warm_start", **warm_info}) + "\n")
        bar = tqdm(total=config.swarm.num_rounds, unit="round", disable=not progress, dynamic_ncols=True)
        try:
            summary = run_swarm(
                config.swarm, initial_state=state, run_dir=run_dir, on_round=_RoundLog(metrics, bar)
            )
        finally:
            bar.close()
    summary = {
        "task": config.swarm.task,
        "num_nodes": config.swarm.num_nodes,
        "num_rounds": config.swarm.num_rounds,
        "warm_start": warm_info,
        **_totals(summary),
        **summary,
        "total_wall_s": time.perf_counter() - begin,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def result_line(summary: dict[str, Any]) -> str:
    """The CLI's one-line result: per-node means over the honest nodes, and what they refused."""
    return (
        f"swarm of {summary['num_nodes']} nodes ({summary['num_malicious']} malicious) on {summary['task']}, "
        f"{summary['num_rounds']} rounds: per honest node cumulative reward "
        f"{summary['mean_cumulative_local_reward']:.3f}, held-out pass@1 {summary['mean_pass_at_1']:.3f}, "
        f"trigger rate {summary['mean_trigger_rate']:.3f}; {summary['rejected_total']} messages rejected, "
        f"{summary['banned_total']} bans, {summary['dropped_by_defences_total']} groups dropped by defences, "
        f"{summary['bytes_total'] / 1e6:.2f} MB shared ({summary['total_wall_s']:.1f}s)"
    )
