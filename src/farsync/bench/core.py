"""``farsync bench core``: DDP, DiLoCo (H=50) and FedAvg at equal tokens per worker on the default GPT,
plus the DiLoCo recipe sweep and the framework-overhead measurement.

Every run uses the same model, data, seed, inner optimizer (AdamW, warm-up + cosine) and tokens per worker;
only the algorithm differs. The link is an emulated 1 Gbit/s in virtual mode (the time is accounted on a
simulated clock, see comm/clock.py), so ``wall_s`` is what the run would take on that link.

Targets (issue #2): DiLoCo with 4 workers and H=50 within 3% of DDP's final eval loss at equal tokens while
sending at least 50x fewer bytes per worker; an inner step under DiLoCo at most 3% slower than a plain loop.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from farsync.bench.common import markdown_table, run_cached, smoke, versus_ddp, write_results
from farsync.bench.overhead import measure_overhead
from farsync.config import ModelConfig

__all__ = ["DILOCO_RECIPE", "SWEEP", "run"]

# The DiLoCo recipe sweep, at H = 50 and equal tokens. Each entry is one run; the headline "diloco" row is
# the sweep entry named by DILOCO_RECIPE. "diloco_rule" leaves the outer learning rate and momentum to
# farsync.config.outer_recipe (the defaults, measured by ``bench quality``); the others set them explicitly.
# Outer amplification in steady state is outer_lr / (1 - momentum): 7 for the paper's 0.7 / 0.9.
SWEEP: dict[str, list[str]] = {
    "diloco_rule": ["algorithm.name=diloco", "algorithm.num_inner_steps=50"],
    "diloco_paper_0.7_0.9": [
        "algorithm.name=diloco",
        "algorithm.outer_lr=0.7",
        "algorithm.outer_momentum=0.9",
    ],
    "diloco_outer_lr0.4": ["algorithm.name=diloco", "algorithm.outer_lr=0.4", "algorithm.outer_momentum=0.9"],
    "diloco_outer_lr1.0": ["algorithm.name=diloco", "algorithm.outer_lr=1.0", "algorithm.outer_momentum=0.9"],
    "diloco_warmup4x5_int8": [
        "algorithm.name=diloco",
        "algorithm.num_warmup_rounds=4",
        "algorithm.num_warmup_inner_steps=5",
        "compression.kind=int8",
    ],
}
DILOCO_RECIPE = "diloco_rule"


def _base(num_steps: int, quick: bool) -> list[str]:
    base = [
        "num_workers=4",
        "seed=0",
        f"train.num_steps={num_steps}",
        "train.eval_every=50",
        "network.bandwidth='1Gbit'",
        "network.emulation='virtual'",
        "checkpoint.every_rounds=0",
    ]
    if quick:
        base += [
            "model.num_layers=1",
            "model.width=32",
            "model.num_heads=2",
            "model.context_length=32",
            "train.eval_every=10",
            "data.max_bytes=300000",
        ]
    return base


def _longer_runs(quick: bool, runs_dir: Path) -> list[dict[str, Any]]:
    """DDP and the headline DiLoCo recipe at twice the steps (more outer rounds at the same H); the gap to
    DDP at 16 rounds against 8 shows whether DiLoCo's shortfall is a matter of rounds."""
    steps = int(os.environ.get("FARSYNC_BENCH_LONG_STEPS", "800"))
    if quick or steps <= 0:
        return []
    base = _base(steps, False)
    rows = [
        run_cached(f"ddp_{steps}steps", [*base, "algorithm.name=ddp"], runs_dir),
        run_cached(f"diloco_{steps}steps", [*base, *SWEEP[DILOCO_RECIPE]], runs_dir),
    ]
    for row in rows:
        row.update(versus_ddp(row, rows[0]))
        row["mb_sent"] = row["bytes_sent_per_worker"] / 1e6
    return rows


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    quick = quick or smoke()
    num_steps = 40 if quick else int(os.environ.get("FARSYNC_BENCH_STEPS", "400"))
    h = "10" if quick else "50"
    base = _base(num_steps, quick)
    if smoke():  # FARSYNC_BENCH_SMOKE=1: every row of --quick at the smallest size (bench/common.py)
        num_steps, h = 8, "4"
        base = [*_base(num_steps, quick), "num_workers=2"]
    runs_dir = out_dir / ("core_runs_quick" if quick else "core_runs")
    named: dict[str, list[str]] = {
        "ddp": ["algorithm.name=ddp"],
        "single_worker": ["algorithm.name=ddp", "num_workers=1"],
        "fedavg": ["algorithm.name=fedavg"],
        **(SWEEP if not quick else {DILOCO_RECIPE: SWEEP[DILOCO_RECIPE]}),
    }
    rows = []
    for name, extra in named.items():
        overrides = [*base, *extra]
        if quick:
            overrides = [o.replace("num_inner_steps=50", f"num_inner_steps={h}") for o in overrides]
            if not any(o.startswith("algorithm.num_inner_steps") for o in overrides):
                overrides.append(f"algorithm.num_inner_steps={h}")
        rows.append(run_cached(name, overrides, runs_dir))
    ddp = rows[0]
    for row in rows:
        row.update(versus_ddp(row, ddp))
    torch.set_num_threads(1)
    overhead = measure_overhead(
        ModelConfig() if not quick else ModelConfig(num_layers=1, width=32, num_heads=2, context_length=32),
        batch_size=8,
        num_inner_steps=int(h),
        num_blocks=1 if smoke() else 3 if quick else 6,
    )
    diloco = next(r for r in rows if r["name"] == DILOCO_RECIPE)
    targets = {
        "diloco_loss_within_3pct_of_ddp": diloco["loss_vs_ddp"] <= 0.03,
        "diloco_bytes_at_least_50x_fewer": diloco["bytes_vs_ddp"] >= 50,
        "overhead_at_most_3pct": overhead["overhead"] <= 0.03,
    }
    columns = [
        ("run", "name", ""),
        ("algorithm", "algorithm", ""),
        ("workers", "num_workers", ""),
        ("steps/worker", "num_steps", ""),
        ("rounds", "num_rounds", ""),
        ("eval loss", "final_eval_loss", ".4f"),
        ("vs DDP", "loss_vs_ddp", "+.2%"),
        ("MB sent/worker", "mb_sent", ".2f"),
        ("bytes vs DDP", "bytes_vs_ddp", ".1f"),
        ("wall s (1 Gbit/s)", "wall_s", ".1f"),
        ("speedup", "speedup_vs_ddp", ".2f"),
        ("compute util", "compute_utilization", ".1%"),
    ]
    for row in rows:
        row["mb_sent"] = row["bytes_sent_per_worker"] / 1e6
    lines = [
        "# farsync bench core" + (" (quick)" if quick else ""),
        "",
        f"Default GPT, {num_steps} inner steps per worker, equal tokens per worker, emulated 1 Gbit/s (virtual clock).",
        "",
        markdown_table(rows, columns),
        "",
        f"Framework overhead (world size 1, interleaved, median of {overhead['num_blocks']} blocks of "
        f"{overhead['num_inner_steps']} steps): plain {overhead['plain_step_s'] * 1e3:.1f} ms/step, "
        f"DiLoCo {overhead['diloco_step_s'] * 1e3:.1f} ms/step, overhead {overhead['overhead']:+.2%}.",
        "",
        f"Headline DiLoCo recipe: `{DILOCO_RECIPE}` (the defaults: outer lr and momentum from "
        "`farsync.config.outer_recipe`, measured by `farsync bench quality`).",
        "",
        "Targets: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in targets.items()),
    ]
    long_rows = _longer_runs(quick, runs_dir)
    if long_rows:
        lines += [
            "",
            f"## More rounds: {long_rows[0]['num_steps']} inner steps per worker (H = 50, "
            f"{long_rows[1]['num_rounds']} rounds), same recipe",
            "",
            markdown_table(long_rows, columns),
        ]
    data = {
        "num_steps": num_steps,
        "runs": rows,
        "longer_runs": long_rows,
        "overhead": overhead,
        "targets": targets,
    }
    write_results(out_dir, "core" if not quick else "core_quick", data, "\n".join(lines))
    print("\n".join(lines))
    return data
