"""``farsync bench chaos``: an elastic DiLoCo run under repeated SIGKILLs, against the same run without faults.

Four workers train a small GPT with DiLoCo for 20 rounds (H = 10) over an emulated wide-area link (20 Mbit/s,
200 ms, really slept so that kills land in collectives as well as in inner steps). The fault injector
(:mod:`farsync.sim.faults`) kills a random worker with SIGKILL about every 2 rounds (at a random moment
within a few seconds of the trigger) and restarts it 5 s later; the restarted worker rejoins at the next
round boundary and heals from a live peer. ``elastic.min_workers = 2``: never fewer than two train. The
chaotic run is repeated with two fault seeds (``FARSYNC_CHAOS_SEEDS``, default ``1,2``): "completes every
time" needs more than one try, and the eval-loss gap depends on which workers happen to be down.

Reported against the fault-free run with the same seed: final eval loss, rounds and inner steps lost by
survivors, healing time (against the time to send the model once over the link + 2 s), and whether every
finishing worker's global weights hash the same.

Targets (issue #5): completes; survivors lose 0 inner steps; eval loss within 2% of the fault-free run; all
hashes equal; healing <= one model transfer + 2 s.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from farsync.bench.common import markdown_table, smoke, write_results
from farsync.config import RunConfig, format_bandwidth, format_duration, load_config
from farsync.elastic.launch import launch_elastic
from farsync.sim.faults import FaultPlan

__all__ = ["run"]


def _config(quick: bool) -> RunConfig:
    rounds, h = (8, 5) if quick else (20, 10)
    overrides = [
        "num_workers=4" if not quick else "num_workers=3",
        "seed=0",
        "algorithm.name=diloco",
        f"algorithm.num_inner_steps={h}",
        f"train.num_steps={rounds * h}",
        "train.warmup_steps=10",
        "train.eval_every=100000",
        "train.num_eval_batches=8",
        "model.num_layers=2" if not quick else "model.num_layers=1",
        "model.width=64" if not quick else "model.width=32",
        "model.num_heads=4" if not quick else "model.num_heads=2",
        "model.context_length=64" if not quick else "model.context_length=32",
        "data.max_bytes=1000000" if not quick else "data.max_bytes=200000",
        "network.bandwidth='20Mbit'",
        "network.latency='200ms'" if not quick else "network.latency='100ms'",
        "network.emulation='sleep'",
        "elastic.min_workers=2",
        "elastic.heartbeat_interval_s=0.5",
        "elastic.failure_timeout_s=3.0",
        "elastic.collective_timeout_s=20.0",
        "checkpoint.every_rounds=0",
    ]
    if smoke():  # FARSYNC_BENCH_SMOKE=1 (tests): 2 workers, 8 rounds of H = 2 (bench/common.py)
        overrides += [
            "num_workers=2",
            "elastic.min_workers=1",
            "algorithm.num_inner_steps=2",
            "train.num_steps=16",
            "elastic.failure_timeout_s=10.0",  # a test machine's busy CPU can delay heartbeats by seconds
        ]
    return load_config(None, overrides)


def _row(name: str, summary: dict[str, Any], elapsed: float) -> dict[str, Any]:
    heal = summary.get("healing_s") or []
    return {
        "run": name,
        "final_eval_loss": summary["final_eval_loss"],
        "num_rounds": summary["num_rounds"],
        "num_kills": summary.get("num_kills", 0),
        "worker_failures": summary["worker_failures"],
        "num_quorum_changes": summary["num_quorum_changes"],
        "collective_retries": summary["collective_retries"],
        "rounds_lost_by_survivors": summary["rounds_lost_by_survivors"],
        "inner_steps_lost_by_survivors": summary["inner_steps_lost_by_survivors"],
        "num_heals": len(heal),
        "healing_max_s": max(heal) if heal else None,
        "healing_mean_s": sum(heal) / len(heal) if heal else None,
        "num_finished_workers": summary["num_finished_workers"],
        "global_params_equal": summary["global_params_equal"],
        "real_s": elapsed,
    }


def _plan(config: RunConfig, num_rounds: int, seed: int, quick: bool) -> FaultPlan:
    return FaultPlan(
        every_rounds=2,
        restart_after_s=5.0 if not quick else 1.0,
        min_alive=config.elastic.min_workers,
        jitter_s=2.0 if not quick else 0.5,
        last_round=num_rounds - 3,  # the last kills still leave time to rejoin before the end
        seed=seed,
    )


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    quick = quick or smoke()
    config = _config(quick)
    num_rounds = config.train.num_steps // config.algorithm.num_inner_steps
    seeds = [int(s) for s in os.environ.get("FARSYNC_CHAOS_SEEDS", "1" if quick else "1,2").split(",")]
    runs: list[tuple[str, FaultPlan | None]] = [("fault_free", None)]
    runs += [(f"chaos_seed{seed}", _plan(config, num_rounds, seed, quick)) for seed in seeds]
    rows: list[dict[str, Any]] = []
    num_params = 0
    with tempfile.TemporaryDirectory(prefix="farsync-chaos-") as scratch:
        for name, plan in runs:
            print(f"[bench] chaos: running {name} ...", flush=True)
            begin = time.perf_counter()
            summary = launch_elastic(config, Path(scratch) / name, progress=False, faults=plan, timeout_s=900)
            elapsed = time.perf_counter() - begin
            num_params = int(summary["num_params"])
            rows.append(_row(name, summary, elapsed))
            print(
                f"[bench] chaos: {name}: eval loss {summary['final_eval_loss']:.4f} ({elapsed:.0f}s real)",
                flush=True,
            )
    clean, chaotic = rows[0], rows[1:]
    link = config.network
    model_bytes = 4 * num_params
    send_model_s = link.latency_s + model_bytes * 8 / link.bandwidth_bps
    for row in chaotic:
        row["eval_loss_gap"] = row["final_eval_loss"] / clean["final_eval_loss"] - 1
    clean["eval_loss_gap"] = 0.0
    heals = [row["healing_max_s"] for row in chaotic if row["healing_max_s"] is not None]
    heal_max = max(heals) if heals else None
    targets = {
        "completed_every_time": all(row["num_finished_workers"] == config.num_workers for row in chaotic),
        "survivors_lost_0_inner_steps": all(row["inner_steps_lost_by_survivors"] == 0 for row in chaotic),
        "eval_loss_within_2pct": all(abs(row["eval_loss_gap"]) <= 0.02 for row in chaotic),
        "all_hashes_equal": all(bool(row["global_params_equal"]) for row in chaotic),
        "healing_within_one_transfer_plus_2s": heal_max is None or heal_max <= send_model_s + 2.0,
    }
    example = _plan(config, num_rounds, seeds[0], quick)
    data = {
        "config": {
            "num_workers": config.num_workers,
            "num_rounds": num_rounds,
            "num_inner_steps": config.algorithm.num_inner_steps,
            "bandwidth": format_bandwidth(link.bandwidth),
            "latency": format_duration(link.latency),
            "emulation": link.emulation,
            "min_workers": config.elastic.min_workers,
        },
        "fault_plan": {
            "every_rounds": example.every_rounds,
            "restart_after_s": example.restart_after_s,
            "jitter_s": example.jitter_s,
            "last_round": example.last_round,
            "seeds": seeds,
        },
        "rows": rows,
        "model_bytes": model_bytes,
        "send_model_once_s": send_model_s,
        "healing_budget_s": send_model_s + 2.0,
        "healing_max_s": heal_max,
        "targets": targets,
        "quick": quick,
    }
    columns = [
        ("run", "run", ""),
        ("final eval loss", "final_eval_loss", ".4f"),
        ("gap vs fault-free", "eval_loss_gap", "+.2%"),
        ("kills", "num_kills", "d"),
        ("failures", "worker_failures", "d"),
        ("quorum changes", "num_quorum_changes", "d"),
        ("collective retries", "collective_retries", "d"),
        ("rounds lost by survivors", "rounds_lost_by_survivors", "d"),
        ("inner steps lost by survivors", "inner_steps_lost_by_survivors", "d"),
        ("heals", "num_heals", "d"),
        ("healing max (s)", "healing_max_s", ".2f"),
        ("healing mean (s)", "healing_mean_s", ".2f"),
        ("hashes equal", "global_params_equal", ""),
        ("real time (s)", "real_s", ".0f"),
    ]
    markdown = "\n".join(
        [
            f"# chaos: elastic DiLoCo under SIGKILL{' (quick)' if quick else ''}",
            "",
            f"{config.num_workers} workers, {num_rounds} rounds of H={config.algorithm.num_inner_steps}, link "
            f"{format_bandwidth(link.bandwidth)} / {format_duration(link.latency)} ({link.emulation}), min_workers={config.elastic.min_workers}; a random "
            f"worker is SIGKILLed about every {example.every_rounds:g} rounds and restarted {example.restart_after_s:g} s "
            f"later (fault seeds {seeds}).",
            "",
            markdown_table(rows, columns),
            "",
            "- eval loss gap vs fault-free: "
            + ", ".join(f"{row['run']} {row['eval_loss_gap']:+.2%}" for row in chaotic)
            + " (target within 2%)",
            f"- healing budget: one model transfer ({model_bytes / 1e6:.2f} MB: {send_model_s:.2f} s) + 2 s = "
            f"{send_model_s + 2:.2f} s; worst healing {heal_max if heal_max is not None else float('nan'):.2f} s",
            "- targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in targets.items()),
        ]
    )
    write_results(out_dir, "chaos" if not quick else "chaos_quick", data, markdown)
    return data
