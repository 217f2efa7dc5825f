"""``farsync bench dilocox``: DDP against the DiLoCo family on a link where DDP spends ~100x its compute talking.

Every run trains the default GPT with 4 workers (threads), the same seed, data, inner optimizer and tokens
per worker; only the algorithm and the reducer differ. The link speed is derived, not guessed: a short
probe run measures one inner step's compute time ``t`` under the same conditions (4 worker threads on this
machine), and the bandwidth is set so that one DDP step's fp32 ring all-reduce takes ``100 t`` on the
emulated link. ``network.emulation = "virtual"``: the link time is accounted on a simulated clock, so
``wall_s`` is what the run would take on that link, while the benchmark itself runs at compute speed.

Runs: DDP; DiLoCo (the recipe of ``bench/core.py``); DiLoCo with the delayed and with the eager one-step
overlap; DiLoCoX (overlap + adaptive low-rank + int8 factors + error feedback); DiLoCoX without error
feedback; Streaming DiLoCo; and, when pipeline stages are available, DiLoCoX on 2 replicas x 2 stages.
It also times the int8 (and int4) quantized ring all-reduce against gloo's fp32 all-reduce on that link.

Wall time includes the final drain: an overlapped algorithm waits for its last all-reduce in ``finish()``,
after the loop, where the worker's ``wall_s`` no longer counts; the benchmark adds that wait back (from the
comm wait recorded after the last round), so overlapped and synchronous runs are compared on equal terms.

Environment: ``FARSYNC_DILOCOX_STEPS`` (inner steps per worker, default 400), ``FARSYNC_DILOCOX_H``
(inner steps per round, default 50, the recipe's H), ``FARSYNC_DILOCOX_RATIO`` (DDP communication /
compute per step, default 100), ``FARSYNC_DILOCOX_SKIP`` (comma-separated run names to leave out).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from farsync.bench.allreduce_timing import compare_allreduce
from farsync.bench.common import markdown_table, run_cached, smoke, versus_ddp, write_results
from farsync.config import load_config
from farsync.launch.local import launch

__all__ = ["run"]

logger = logging.getLogger(__name__)

QUICK_MODEL = [
    "model.num_layers=2",
    "model.width=32",
    "model.num_heads=2",
    "model.context_length=32",
    "data.max_bytes=300000",
]


def _recipe(h: int) -> list[str]:
    """The outer-loop settings of the DiLoCo recipe chosen in bench/core.py (outer lr, momentum, warm-up), at H = h.

    ``DILOCO_RECIPE`` names an entry of core's ``SWEEP`` (or, in older versions, is the override list itself);
    only its ``algorithm.*`` settings are taken, so a recipe's own compression does not replace DiLoCoX's.
    """
    try:
        from farsync.bench import core
    except ImportError:
        return [f"algorithm.num_inner_steps={h}"]
    chosen = getattr(core, "DILOCO_RECIPE", [])
    recipe = getattr(core, "SWEEP", {}).get(chosen, []) if isinstance(chosen, str) else list(chosen)
    skip = ("algorithm.name", "algorithm.num_inner_steps")
    kept = [o for o in recipe if o.startswith("algorithm.") and not o.startswith(skip)]
    return [*kept, f"algorithm.num_inner_steps={h}"]


def _variants(h: int, quick: bool) -> dict[str, list[str]]:
    recipe = _recipe(h)
    dilocox = ["algorithm.name=dilocox", *recipe]
    return {
        "ddp": ["algorithm.name=ddp"],
        "diloco": ["algorithm.name=diloco", *recipe],
        "diloco_delayed": [
            "algorithm.name=diloco",
            *recipe,
            "algorithm.delay=1",
            "algorithm.overlap=delayed",
        ],
        "diloco_eager": ["algorithm.name=diloco", *recipe, "algorithm.delay=1", "algorithm.overlap=eager"],
        "dilocox": dilocox,
        "dilocox_no_ef": [
            *dilocox,
            "compression.kind=lowrank",
            "compression.adaptive=true",
            "compression.error_feedback=false",
        ],
        "streaming": [
            "algorithm.name=streaming",
            *recipe,
            *(["algorithm.num_fragments=2", "algorithm.streaming_tau=2"] if quick else []),
        ],
        "dilocox_pipeline_2x2": [*dilocox, "parallel.num_stages=2"],
    }


def _probe_step_s(base: list[str], runs_dir: Path) -> dict[str, Any]:
    """Compute seconds of one inner step with 4 worker threads (a short DDP run, emulation off); cached."""
    probe_path = runs_dir / "probe.json"
    kept = [o for o in base if not o.startswith(("train.num_steps", "train.eval_every"))]
    overrides = [
        *kept,
        "algorithm.name=ddp",
        "network.emulation=off",
        "train.num_steps=16",
        "train.eval_every=1000",
    ]
    if probe_path.is_file():
        cached = json.loads(probe_path.read_text())
        if cached.get("overrides") == overrides:
            return dict(cached)
    config = load_config(None, overrides)
    summary = launch(config, runs_dir / "probe", progress=False, mode="threads")
    probe = {
        "overrides": overrides,
        "step_s": summary["compute_s"] / summary["num_steps"],
        "num_params": summary["num_params"],
        "num_workers": summary["num_workers"],
    }
    probe_path.write_text(json.dumps(probe, indent=2) + "\n")
    return probe


def _bandwidth_bps(probe: dict[str, Any], ratio: float) -> float:
    """Link rate at which one DDP step's fp32 ring all-reduce (+ the weight element) takes ``ratio x step_s``."""
    n = int(probe["num_workers"])
    payload = 4 * (int(probe["num_params"]) + 1)
    seconds = ratio * float(probe["step_s"])
    bytes_per_s = 2 * (n - 1) * payload / (n * seconds)
    return 8 * bytes_per_s


def _final_drain_s(run_dir: Path, summary: dict[str, Any]) -> float:
    """Mean comm wait after the last round record (the overlapped algorithms' final drain in ``finish()``)."""
    last: dict[int, float] = {}
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record.get("kind") == "round":
                last[int(record["worker"])] = float(record.get("comm_wait_s", 0.0))
    if not last:
        return 0.0
    return max(0.0, float(summary["comm_wait_s"]) - sum(last.values()) / len(last))


def _compression_choices(run_dir: Path) -> dict[str, Any]:
    ranks, bits = [], []
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record.get("kind") == "round" and record.get("worker") == 0 and "compression_rank" in record:
                ranks.append(record["compression_rank"])
                bits.append(record.get("compression_bits"))
    return {"ranks": ranks, "bits": bits} if ranks else {}


def _run_all(
    base: list[str], h: int, runs_dir: Path, quick: bool
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    rows, skipped = [], {}
    left_out = {n for n in os.environ.get("FARSYNC_DILOCOX_SKIP", "").split(",") if n}
    for name, extra in _variants(h, quick).items():
        if name in left_out:
            skipped[name] = "left out of this invocation (FARSYNC_DILOCOX_SKIP)"
            continue
        try:
            row = run_cached(name, [*base, *extra], runs_dir, mode="threads")
        except Exception as error:  # noqa: BLE001 - a missing optional capability is reported, not fatal
            if name == "ddp":
                raise
            logger.warning("bench dilocox: %s skipped: %r", name, error)
            skipped[name] = f"{type(error).__name__}: {error}"[:300]
            continue
        drain = _final_drain_s(runs_dir / name, row)
        row["final_drain_s"] = drain
        row["wall_with_drain_s"] = row["wall_s"] + drain
        row["utilization"] = row["compute_s"] / row["wall_with_drain_s"] if row["wall_with_drain_s"] else 1.0
        row.update(_compression_choices(runs_dir / name))
        rows.append(row)
    return rows, skipped


def _compare(rows: list[dict[str, Any]]) -> None:
    ddp = rows[0]
    for row in rows:
        row.update(versus_ddp(row, ddp, wall_key="wall_with_drain_s"))
        row["mb_sent"] = row["bytes_sent_per_worker"] / 1e6
        row["peak_kb"] = row["peak_sync_bytes"] / 1e3
        row["overlap"] = "-"
        overrides = " ".join(row["overrides"])
        if "delay=1" in overrides or row["algorithm"] == "dilocox":
            row["overlap"] = "eager" if "overlap=eager" in overrides else "delayed"


def _targets(rows: list[dict[str, Any]], timing: dict[str, Any]) -> dict[str, Any]:
    by = {r["name"]: r for r in rows}
    x = by.get("dilocox")
    targets: dict[str, Any] = {}
    if x is not None:
        targets["dilocox_bytes_at_least_1000x_fewer"] = [
            round(x["bytes_vs_ddp"], 1),
            x["bytes_vs_ddp"] >= 1000,
        ]
        targets["dilocox_loss_within_4pct_of_ddp"] = [round(x["loss_vs_ddp"], 4), x["loss_vs_ddp"] <= 0.04]
        targets["dilocox_compute_utilization_at_least_95pct"] = [
            round(x["utilization"], 4),
            x["utilization"] >= 0.95,
        ]
        targets["dilocox_speedup_at_least_50x"] = [round(x["speedup_vs_ddp"], 1), x["speedup_vs_ddp"] >= 50]
    int8 = timing.get("speedup", {}).get("int8")
    if int8 is not None:
        targets["int8_ring_at_least_3_5x_fp32_throughput"] = [round(int8, 2), int8 >= 3.5]
    return targets


def _worth(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Eval-loss differences that show what error feedback and the eager update are worth (negative = better)."""
    by = {r["name"]: r["final_eval_loss"] for r in rows}
    worth = {}
    for label, with_it, without in (
        ("error_feedback (dilocox - dilocox_no_ef)", "dilocox", "dilocox_no_ef"),
        ("eager (diloco_eager - diloco_delayed)", "diloco_eager", "diloco_delayed"),
    ):
        if with_it in by and without in by:
            worth[label] = by[with_it] - by[without]
    return worth


def _command(quick: bool) -> str:
    names = ("FARSYNC_DILOCOX_STEPS", "FARSYNC_DILOCOX_H", "FARSYNC_DILOCOX_RATIO", "FARSYNC_DILOCOX_SKIP")
    env = " ".join(f"{n}={os.environ[n]}" for n in names if os.environ.get(n))
    return f"{env + ' ' if env else ''}farsync bench dilocox{' --quick' if quick else ''}"


COLUMNS = [
    ("run", "name", ""),
    ("algorithm", "algorithm", ""),
    ("overlap", "overlap", ""),
    ("eval loss", "final_eval_loss", ".4f"),
    ("vs DDP", "loss_vs_ddp", "+.2%"),
    ("MB sent/worker", "mb_sent", ".3f"),
    ("bytes vs DDP", "bytes_vs_ddp", ".0f"),
    ("peak KB/sync", "peak_kb", ".1f"),
    ("wall s (virtual)", "wall_with_drain_s", ".0f"),
    ("compute util", "utilization", ".1%"),
    ("util before drain", "compute_utilization", ".1%"),
    ("speedup vs DDP", "speedup_vs_ddp", ".1f"),
]


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    quick = quick or smoke()
    num_steps = 20 if quick else int(os.environ.get("FARSYNC_DILOCOX_STEPS", "400"))
    ratio = float(os.environ.get("FARSYNC_DILOCOX_RATIO", "100"))
    h = 5 if quick else int(os.environ.get("FARSYNC_DILOCOX_H", "50"))
    num_workers = 4
    if smoke():  # FARSYNC_BENCH_SMOKE=1 (tests): every row of --quick at the smallest size (bench/common.py)
        num_steps, h, num_workers = 6, 3, 2
    runs_dir = out_dir / ("dilocox_runs_quick" if quick else "dilocox_runs")
    runs_dir.mkdir(parents=True, exist_ok=True)
    base = [
        f"num_workers={num_workers}",
        "seed=0",
        f"train.num_steps={num_steps}",
        f"train.eval_every={num_steps}",
        "checkpoint.every_rounds=0",
        *(QUICK_MODEL if quick else []),
    ]
    begin = time.perf_counter()
    probe = _probe_step_s(base, runs_dir)
    bps = _bandwidth_bps(probe, ratio)
    link = [f"network.bandwidth={bps!r}", "network.emulation='virtual'"]
    rows, skipped = _run_all([*base, *link], h, runs_dir, quick)
    _compare(rows)
    timing = compare_allreduce(
        world_size=num_workers,
        numel=probe["num_params"],
        bandwidth_bps=bps,
        kinds=("fp32", "int8", "int4"),
        repeats=2,
    )
    targets = _targets(rows, timing)
    worth = _worth(rows)
    ddp = rows[0]
    measured_ratio = ddp["comm_wait_s"] / max(ddp["compute_s"], 1e-9)
    lines = [
        "# farsync bench dilocox" + (" (quick)" if quick else ""),
        "",
        f"{'Tiny' if quick else 'Default'} GPT ({probe['num_params']:,} parameters), 4 workers (threads), "
        f"{num_steps} inner steps per worker, H = {h}, equal tokens per worker. Probe: one inner step computes in "
        f"{probe['step_s'] * 1e3:.1f} ms with 4 worker threads on this machine; link set to "
        f"{bps / 1e6:.3f} Mbit/s so one DDP step's fp32 all-reduce takes {ratio:.0f}x that "
        f"(measured in the DDP run: comm wait / compute = {measured_ratio:.0f}x). Virtual clock; wall time "
        "includes the final drain of the overlapped runs.",
        "",
        markdown_table(rows, COLUMNS),
        "",
        "All-reduce of one fp32-equivalent model-sized vector on the same emulated link (4 ranks, virtual clock): "
        + ", ".join(
            f"{kind} {res['seconds']:.2f} s ({res['fp32_equivalent_bytes_per_s'] / 1e6:.3f} MB/s fp32-equivalent)"
            for kind, res in timing["kinds"].items()
        )
        + "; speedup over gloo fp32: "
        + ", ".join(f"{k} {v:.2f}x" for k, v in timing["speedup"].items() if k != "fp32")
        + ".",
        "",
        "What error feedback and eager are worth (eval-loss difference, negative = helps): "
        + ", ".join(f"{k}: {v:+.4f}" for k, v in worth.items()),
        "",
        "Targets: " + ", ".join(f"{k}: {v[0]} ({'met' if v[1] else 'MISSED'})" for k, v in targets.items()),
    ]
    for row in rows:
        if row.get("ranks"):
            lines.append(f"\n{row['name']}: chosen rank per round {row['ranks']}, bits {row['bits']}")
    for name, why in skipped.items():
        lines.append(f"\nSkipped {name}: {why}")
    lines.append(
        f"\nCommand: `{_command(quick)}` ({time.perf_counter() - begin:.0f} s real for what was not cached)."
    )
    data = {
        "num_steps": num_steps,
        "num_inner_steps": h,
        "ratio_target": ratio,
        "probe": probe,
        "bandwidth_bps": bps,
        "runs": rows,
        "skipped": skipped,
        "allreduce_timing": timing,
        "worth": worth,
        "targets": targets,
    }
    write_results(out_dir, "dilocox_quick" if quick else "dilocox", data, "\n".join(lines))
    print("\n".join(lines))
    return data
