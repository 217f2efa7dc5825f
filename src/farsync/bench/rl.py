"""``farsync bench rl``: GRPO's gain over a warm-started policy, sync vs bounded-staleness async, and the
supervised control.

For every seed: a supervised warm-start on the task's format until greedy pass@1 on a validation set
(training-stream problems, never the held-out ones) reaches 0.4; then, from the same weights, GRPO runs in
Echo's ``sync`` mode and in ``async`` mode with staleness bounds k = 1 and 2, with two inference worker
processes of which one is 3x slower; and the control: the warm-start's own supervised training continued, for
150 steps and for as long as the sync RL leg took (wall clock). Reported: held-out pass@1 (greedy, 200
problems) before and after, seconds per RL step in steady state (from the first step's end to the last, no
evaluation inside), stale rollouts dropped, tied groups, and the trainer/sampler log-prob mismatch; medians
over the seeds, and the issue's targets marked met or missed. Wall-clock figures depend on the machine's load.

Every leg runs with the wiring of ``farsync rl``: weights through the SHARDCAST-like relay, rollouts verified
(TOPLOC-like, ``rl.verify_fraction``). Per leg, the broadcast's cost is measured inside the run, against the
runner's own seconds per step: the trainer's wait in (background) ``publish`` and a worker's wall time to fetch
a version. Two sections from :mod:`farsync.rl.broadcast_bench` and :mod:`farsync.rl.verify_bench` follow
(broadcast CPU cost and corruption; verification calibration, detection and proof overhead).

This module is the ``grpo`` section of ``farsync bench rl``; the ``swarm`` section (SAPO sharing, poisoning and
defences) is :mod:`farsync.bench.rl_swarm`, run after it (``--section`` picks one; see :mod:`farsync.bench`).
"""

from __future__ import annotations

import copy
import json
import logging
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from farsync.bench.common import markdown_table, smoke, write_results
from farsync.config import ModelConfig, RLConfig, RunConfig
from farsync.rl import broadcast_bench, verify_bench
from farsync.rl.policy import build_policy, pass_at_1
from farsync.rl.runner import model_shape, run_rl
from farsync.rl.sft import SupervisedTrainer
from farsync.rl.tasks import CharTokenizer, make_task

__all__ = ["run"]

logger = logging.getLogger(__name__)

FULL: dict[str, Any] = {
    "seeds": [0, 1, 2],
    "num_steps": 150,
    "num_heldout": 200,
    "backend": "process",
    "legs": [["sync", 0], ["async", 1], ["async", 2]],
    "max_sft_steps": 2000,
    "model": {"num_layers": 2, "width": 64, "num_heads": 4, "context_length": 16},
}
QUICK: dict[str, Any] = {
    **FULL,
    "seeds": [0],
    "num_steps": 40,
    "num_heldout": 100,
    "legs": [["sync", 0], ["async", 1]],
}
SMOKE: dict[str, Any] = {
    **QUICK,
    "num_steps": 3,
    "num_heldout": 16,
    "backend": "thread",
    "max_sft_steps": 25,
    "model": {"num_layers": 1, "width": 32, "num_heads": 2, "context_length": 16},
}
TARGET_PASS = 0.4
"""Validation pass@1 at which the warm-start stops."""


def _config(plan: dict[str, Any], seed: int, mode: str = "sync", staleness: int = 0) -> RunConfig:
    return RunConfig(
        seed=seed,
        model=ModelConfig(**plan["model"]),
        rl=RLConfig(
            task="arithmetic",
            num_heldout=plan["num_heldout"],
            num_steps=plan["num_steps"],
            num_groups_per_step=8,
            group_size=8,
            lr=3e-4,
            loss="two_sided",
            mode=mode,  # type: ignore[arg-type]
            max_staleness=staleness,
            num_rollout_workers=2,
            worker_slowdowns=[1.0, 3.0],
            worker_backend=plan["backend"],
            eval_every=plan["num_steps"],
            num_sft_steps=plan["max_sft_steps"],
            sft_stop_at_pass=TARGET_PASS,
        ),
    )


def _heldout_pass(model: torch.nn.Module, config: RunConfig) -> float:
    task = make_task(config.rl.task, seed=config.seed, num_heldout=config.rl.num_heldout)
    return pass_at_1(
        model, task.heldout, task.reward, CharTokenizer(), max_new_tokens=config.rl.max_new_tokens
    )


def _warm_start(config: RunConfig) -> tuple[SupervisedTrainer, dict[str, Any]]:
    """Supervised steps (25 at a time) until validation pass@1 reaches the target, as the runner does."""
    torch.manual_seed(config.seed)
    model = build_policy(**model_shape(config))
    task = make_task(config.rl.task, seed=config.seed, num_heldout=config.rl.num_heldout)
    trainer = SupervisedTrainer(model, task, lr=config.rl.sft_lr, batch_size=config.rl.sft_batch_size)
    validation = task.validation()
    reached = 0.0
    while trainer.num_steps < config.rl.num_sft_steps and reached < TARGET_PASS:
        trainer.run(25)
        reached = pass_at_1(
            model, validation, task.reward, trainer.tokenizer, max_new_tokens=config.rl.max_new_tokens
        )
    info = {
        "sft_steps": trainer.num_steps,
        "sft_wall_s": trainer.wall_s,
        "validation_pass": reached,
        "heldout_pass": _heldout_pass(model, config),
    }
    return trainer, info


def _steady_s_per_step(run_dir: Path) -> float | None:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    walls = [r["wall_s"] for r in records if r.get("kind") == "rl_step"]
    if len(walls) < 2:
        return None
    return float(walls[-1] - walls[0]) / (len(walls) - 1)


def _leg(
    plan: dict[str, Any], seed: int, mode: str, staleness: int, state: dict[str, Any], runs: Path
) -> dict[str, Any]:
    name = f"{mode}{'-k' + str(staleness) if mode == 'async' else ''}-seed{seed}"
    begin = time.perf_counter()
    print(f"[bench rl] {name} ...", flush=True)
    summary = run_rl(_config(plan, seed, mode, staleness), runs / name, initial_state=copy.deepcopy(state))
    row = {
        "leg": name,
        "mode": mode,
        "k": staleness,
        "seed": seed,
        "start": summary["pass_at_1_start"],
        "final": summary["pass_at_1_final"],
        "gain": summary["pass_at_1_final"] - summary["pass_at_1_start"],
        "s_per_step": _steady_s_per_step(runs / name),
        "rl_wall_s": summary["rl_wall_s"],
        "dropped_stale": summary["intake"]["dropped_stale"],
        "tied_groups": summary["intake"]["tied_groups"],
        "mismatch": summary["mean_logprob_mismatch"],
        **_wiring(summary, _steady_s_per_step(runs / name)),
    }
    print(
        f"[bench rl] {name}: pass@1 {row['start']:.3f} -> {row['final']:.3f} ({time.perf_counter() - begin:.0f}s real)"
    )
    return row


def _wiring(summary: dict[str, Any], s_per_step: float | None) -> dict[str, Any]:
    """Broadcast and verification figures of one leg: the trainer's publish wait and a worker's fetch of a
    version, as shares of the runner's steady seconds per step; rollouts verified and rejected."""
    broadcast, verification = summary["broadcast"], summary["verification"]
    publish_s, fetch_s = broadcast["publish_s_per_step"], broadcast["fetch_s_per_version"]
    return {
        "publish_ms": 1e3 * publish_s,
        "fetch_ms": 1e3 * fetch_s,
        "publish_fraction": publish_s / s_per_step if s_per_step else None,
        "fetch_fraction": fetch_s / s_per_step if s_per_step else None,
        "broadcast_mb": broadcast["bytes_sent"] / 1e6,
        "verified": verification["verified"],
        "rejected": verification["rejected"],
    }


def _control(trainer: SupervisedTrainer, config: RunConfig, steps: int, seconds: float) -> dict[str, Any]:
    """The warm-start's supervised training continued: pass@1 after ``steps`` more steps, and after
    ``seconds`` of supervised stepping in all (measured the same way as RL's wall clock, on this machine)."""
    begin_wall = trainer.wall_s
    trainer.run(steps)
    after_steps = _heldout_pass(trainer.model, config)
    remaining = seconds - (trainer.wall_s - begin_wall)
    extra = trainer.run_for(remaining) if remaining > 0 else 0
    return {
        "sft_more_steps": steps,
        "pass_after_steps": after_steps,
        "sft_same_time_s": seconds,
        "sft_same_time_steps": steps + extra,
        "pass_after_same_time": _heldout_pass(trainer.model, config),
    }


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [float(r[key]) for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def _summarise(
    plan: dict[str, Any], rows: list[dict[str, Any]], controls: list[dict[str, Any]]
) -> dict[str, Any]:
    by_leg: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_leg.setdefault(f"{row['mode']}-k{row['k']}", []).append(row)
    medians: dict[str, dict[str, Any]] = {
        leg: {
            k: _median(group, k)
            for k in ("start", "final", "gain", "s_per_step", "publish_fraction", "fetch_fraction")
        }
        for leg, group in by_leg.items()
    }
    sync = medians.get("sync-k0", {})
    targets: dict[str, Any] = {
        "grpo_gain_points_sync": None if sync.get("gain") is None else 100 * sync["gain"],
        "control_gain_points_same_steps": None,
        "control_gain_points_same_time": None,
    }
    same_steps, same_time = _median(controls, "pass_after_steps"), _median(controls, "pass_after_same_time")
    if sync.get("start") is not None and same_steps is not None and same_time is not None:
        targets["control_gain_points_same_steps"] = 100 * (same_steps - sync["start"])
        targets["control_gain_points_same_time"] = 100 * (same_time - sync["start"])
    for k in (1, 2):
        leg = medians.get(f"async-k{k}")
        if leg and sync:
            targets[f"async_k{k}_minus_sync_points"] = 100 * (leg["final"] - sync["final"])
            if leg["s_per_step"] and sync["s_per_step"]:
                targets[f"async_k{k}_speedup_vs_sync"] = sync["s_per_step"] / leg["s_per_step"]
    return {"medians": medians, "targets": targets}


def _markdown(result: dict[str, Any]) -> str:
    t = result["summary"]["targets"]
    lines = [
        "# farsync bench rl",
        "",
        f"GRPO ({result['plan']['num_steps']} steps, two-sided clipping, 8 prompts x 8 completions per step) on "
        "2-digit addition with a 2-layer GPT, from a supervised warm-start; two inference worker processes, one "
        f"3x slower. Seeds {result['plan']['seeds']}; host {result['host']}, shared with other jobs (wall-clock "
        "figures are load-dependent). Command: `farsync bench rl" + (" --quick`" if result["quick"] else "`"),
        "",
        "## Warm-start (reported separately)",
        "",
        markdown_table(
            result["warm_starts"],
            [
                ("seed", "seed", ""),
                ("SFT steps", "sft_steps", ""),
                ("SFT s", "sft_wall_s", ".1f"),
                ("validation pass@1", "validation_pass", ".3f"),
                ("held-out pass@1", "heldout_pass", ".3f"),
            ],
        ),
        "",
        "## RL legs",
        "",
        markdown_table(
            result["rows"],
            [
                ("leg", "leg", ""),
                ("start", "start", ".3f"),
                ("final", "final", ".3f"),
                ("gain", "gain", "+.3f"),
                ("s/step", "s_per_step", ".3f"),
                ("stale dropped", "dropped_stale", ""),
                ("tied groups", "tied_groups", ""),
                ("log-prob mismatch", "mismatch", ".4f"),
            ],
        ),
        "",
        "## Weight broadcast and verification inside the runs",
        "",
        "Trainer's wait in the background publish per step, and a worker's wall time to fetch one version (all "
        "shards, checked), as shares of the runner's steady seconds per step (wall clock, loaded machine); "
        "rollouts recomputed by the verifier and rejected (honest workers: 0 expected).",
        "",
        markdown_table(
            result["rows"],
            [
                ("leg", "leg", ""),
                ("publish ms", "publish_ms", ".2f"),
                ("share of step", "publish_fraction", ".1%"),
                ("fetch ms", "fetch_ms", ".1f"),
                ("share of step", "fetch_fraction", ".1%"),
                ("MB published", "broadcast_mb", ".1f"),
                ("verified", "verified", ""),
                ("rejected", "rejected", ""),
            ],
        ),
        "",
        "## Supervised control (from the same warm-start)",
        "",
        markdown_table(
            result["controls"],
            [
                ("seed", "seed", ""),
                ("+steps", "sft_more_steps", ""),
                ("pass@1", "pass_after_steps", ".3f"),
                ("same time s", "sft_same_time_s", ".1f"),
                ("steps in that time", "sft_same_time_steps", ""),
                ("pass@1", "pass_after_same_time", ".3f"),
            ],
        ),
        "",
        "## Targets (medians over seeds)",
        "",
    ]
    gain = t.get("grpo_gain_points_sync")
    lines.append(
        f"- GRPO (sync) gain: {_fmt(gain)} points (target >= 10: {_verdict(gain, 10, True)}); "
        f"supervised control: {_fmt(t.get('control_gain_points_same_steps'))} points with the same number of "
        f"steps, {_fmt(t.get('control_gain_points_same_time'))} points in the same time."
    )
    for k in (1, 2):
        if f"async_k{k}_minus_sync_points" in t:
            diff = t[f"async_k{k}_minus_sync_points"]
            lines.append(
                f"- async k={k} final pass@1 minus sync: {_fmt(diff)} points (target >= -3: "
                f"{_verdict(diff, -3, True)})."
            )
        if f"async_k{k}_speedup_vs_sync" in t:
            speed = t[f"async_k{k}_speedup_vs_sync"]
            lines.append(
                f"- async k={k} steps/s over sync: {speed:.2f}x"
                + (f" (target >= 1.3x: {_verdict(speed, 1.3, True)})." if k == 1 else ".")
            )
    for k in (0, 1, 2):
        leg = result["summary"]["medians"].get(f"{'sync' if k == 0 else 'async'}-k{k}", {})
        if leg.get("publish_fraction") is not None:
            lines.append(
                f"- {'sync' if k == 0 else f'async k={k}'}: broadcast, the trainer's publish wait: "
                f"{leg['publish_fraction']:.1%} of a step (target < 5%: "
                f"{_verdict(leg['publish_fraction'], 0.05, False)}); a worker's fetch of one version: "
                f"{leg['fetch_fraction']:.1%} of a step (time that worker does not sample)."
            )
    lines += ["", "## Components", "", broadcast_bench.markdown(result["broadcast"]), ""]
    lines += [verify_bench.markdown(result["verification"])]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}"


def _verdict(value: float | None, bound: float, at_least: bool) -> str:
    if value is None:
        return "not measured"
    return "met" if (value >= bound if at_least else value <= bound) else "MISSED"


def _components(quick: bool) -> dict[str, Any]:
    """rl-transport's component benchmarks (smoke runs: their smallest sizes)."""
    print("[bench rl] broadcast and verification components ...", flush=True)
    if smoke():
        model = verify_bench.make_policy(0)
        return {
            "broadcast": {
                "step": broadcast_bench.step_fraction(num_steps=2),
                "corruption": broadcast_bench.corruption_run(num_versions=5),
            },
            "verification": {
                "calibration": verify_bench.calibrate(model, num_groups=1),
                "detection": verify_bench.detection(model, verify_bench.make_policy(1), num_groups=1),
                "overhead": verify_bench.proof_overhead(model, num_groups=1),
            },
        }
    return {"broadcast": broadcast_bench.run(quick), "verification": verify_bench.run(quick)}


def run(out_dir: Path, quick: bool) -> dict[str, Any]:
    """Runs the legs for every seed; writes ``rl.json`` and ``rl.md`` into ``out_dir``."""
    torch.set_num_threads(1)
    plan = SMOKE if smoke() else QUICK if quick else FULL
    runs = out_dir / "runs" / "rl"
    begin = time.perf_counter()
    warm_starts, rows, controls = [], [], []
    for seed in plan["seeds"]:
        config = _config(plan, seed)
        trainer, info = _warm_start(config)
        warm_starts.append({"seed": seed, **info})
        state = copy.deepcopy(trainer.model.state_dict())
        seed_rows = [_leg(plan, seed, mode, k, state, runs) for mode, k in plan["legs"]]
        rows.extend(seed_rows)
        sync_wall = next(r["rl_wall_s"] for r in seed_rows if r["mode"] == "sync")
        controls.append({"seed": seed, **_control(trainer, config, plan["num_steps"], sync_wall)})
    result = {
        "quick": quick,
        "plan": plan,
        "warm_starts": warm_starts,
        "rows": rows,
        "controls": controls,
        "summary": _summarise(plan, rows, controls),
        **_components(quick or smoke()),
        "seconds": time.perf_counter() - begin,
        "host": f"{platform.machine()} CPU, torch {torch.__version__}",
    }
    write_results(out_dir, "rl", result, _markdown(result))
    return result
