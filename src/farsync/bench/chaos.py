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

The ``fuzzed`` row (issue #18) runs the fault-free configuration again while a stranger on the coordinator's
port sends ``FARSYNC_FUZZ_MESSAGES`` (default 10,000) malformed and forged messages (:mod:`farsync.sim.fuzz`):
targets are the coordinator and every worker alive at the end, the final global hash equal to the fault-free
run's, and every fuzzed inbox message rejected and counted. The signing overhead (:mod:`farsync.bench.signing`)
is reported with it: target at most 1% of an inner step of the default job.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from farsync.bench.common import markdown_table, smoke, write_results
from farsync.bench.signing import signing_overhead
from farsync.config import RunConfig, format_bandwidth, format_duration, load_config
from farsync.elastic.launch import launch_elastic
from farsync.sim.faults import FaultPlan
from farsync.sim.fuzz import FuzzPlan

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
        "global_sha": summary["global_params_sha256"][0],
        "rejected_messages": summary.get("rejected_messages", 0),
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
    num_fuzz = int(os.environ.get("FARSYNC_FUZZ_MESSAGES", "1000" if quick else "10000"))
    fuzz = FuzzPlan(num_messages=num_fuzz, seed=0, rate_per_s=300.0 if not quick else 400.0)
    runs: list[tuple[str, FaultPlan | None]] = [("fault_free", None)]
    runs += [(f"chaos_seed{seed}", _plan(config, num_rounds, seed, quick)) for seed in seeds]
    runs += [("fuzzed", None)]
    rows: list[dict[str, Any]] = []
    num_params = 0
    fuzzed: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="farsync-chaos-") as scratch:
        for name, plan in runs:
            print(f"[bench] chaos: running {name} ...", flush=True)
            begin = time.perf_counter()
            summary = launch_elastic(
                config,
                Path(scratch) / name,
                progress=False,
                faults=plan,
                fuzz=fuzz if name == "fuzzed" else None,
                timeout_s=900,
            )
            elapsed = time.perf_counter() - begin
            num_params = int(summary["num_params"])
            rows.append(_row(name, summary, elapsed))
            if name == "fuzzed":
                fuzzed = summary
            print(
                f"[bench] chaos: {name}: eval loss {summary['final_eval_loss']:.4f} ({elapsed:.0f}s real)",
                flush=True,
            )
    clean, chaotic, fuzz_row = rows[0], rows[1:-1], rows[-1]
    fuzz_figures = _fuzz_figures(fuzzed, clean, config.num_workers, num_fuzz)
    overhead = signing_overhead()
    link = config.network
    model_bytes = 4 * num_params
    send_model_s = link.latency_s + model_bytes * 8 / link.bandwidth_bps
    for row in [*chaotic, fuzz_row]:
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
        **{f"fuzz_{key}": value for key, value in fuzz_figures["targets"].items()},
        "signing_overhead_at_most_1pct": overhead["target_met"],
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
        "fuzz": fuzz_figures,
        "signing_overhead": overhead,
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
        ("final global sha", "global_sha", ""),
        ("rejected messages", "rejected_messages", "d"),
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
            f"- fuzzed run: {fuzz_figures['tried']} messages tried "
            f"({fuzz_figures['inbox_tried']} to the inbox, {fuzz_figures['overwrites_tried']} key overwrites, "
            f"{fuzz_figures['forged_results_tried']} forged results); the coordinator rejected "
            f"{fuzz_figures['inbox_rejected']} inbox messages and put back {fuzz_figures['store_repaired']} "
            f"overwritten keys; workers rejected {fuzz_figures['rejected_by_workers']}; by kind tried "
            f"{fuzz_figures['by_kind_tried']}, rejected {fuzz_figures['rejected_by_kind']}",
            f"- signing overhead (default job: {overhead['model_params']} params, batch {overhead['batch_size']}, "
            f"H={overhead['num_inner_steps']}, heartbeat {overhead['heartbeat_interval_s']:g} s): one signed "
            f"request and reply {overhead['sign_verify_round_trip_us']:.0f} us CPU, inner step "
            f"{overhead['inner_step_ms']:.1f} ms CPU, {overhead['messages_per_inner_step']:.3f} messages per "
            f"inner step: {overhead['overhead_fraction']:.4%} of an inner step (target <= 1%)",
            "- targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in targets.items()),
        ]
    )
    write_results(out_dir, "chaos" if not quick else "chaos_quick", data, markdown)
    return data


def _fuzz_figures(
    summary: dict[str, Any], clean: dict[str, Any], num_workers: int, planned: int
) -> dict[str, Any]:
    """What the stranger tried against what was rejected, and the issue's targets for the fuzzed run."""
    tried = summary["fuzz"]
    by_kind = summary["rejected_by_kind"]
    inbox_rejected = summary["rejected_by_coordinator"] - by_kind.get("store", 0)
    figures = {
        "planned": planned,
        "tried": tried["tried"],
        "inbox_tried": tried["inbox_tried"],
        "overwrites_tried": tried["by_kind"].get("overwrite", 0),
        "forged_results_tried": tried["by_kind"].get("forged_result", 0),
        "inbox_rejected": inbox_rejected,
        "store_repaired": by_kind.get("store", 0),
        "rejected_by_workers": summary.get("rejected_by_workers", 0),
        "by_kind_tried": tried["by_kind"],
        "rejected_by_kind": by_kind,
    }
    figures["targets"] = {
        "all_sent": tried["tried"] >= planned,
        "coordinator_alive": bool(summary.get("coordinator_alive")),
        "every_worker_alive": summary["num_finished_workers"] == num_workers
        and summary["worker_failures"] == 0,
        "hash_equal_to_clean": summary["global_params_sha256"][0] == clean["global_sha"]
        and summary["global_params_equal"],
        "every_inbox_message_rejected": inbox_rejected == tried["inbox_tried"],
    }
    return figures
