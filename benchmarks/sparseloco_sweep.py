"""SparseLoCo in ``bench quality``'s regime: loss vs synchronous DiLoCo and bytes vs DDP, from the same code.

Runs (threads, virtual clock at 1 Gbit/s, cached under ``benchmarks/results/sparseloco_runs/``) use
``farsync.bench.quality``'s own run definitions: the 2-layer width-64 GPT (137k parameters), M = 4, H = 30,
1,200 steps, global batch 32, inner lr 8e-3. The baselines are synchronous DiLoCo at the benchmark's best
recipe (outer lr 1, Nesterov momentum 0.7). "bytes vs DDP" divides each run's summary's
``ddp_bytes_per_worker`` (what DDP's fp32 all-reduce would send per worker over the same steps: 987.955 MB;
``quality.md``'s measured DDP row sent 987.962 MB) by the bytes the run's ledger counted.

    nice -n 5 python benchmarks/sparseloco_sweep.py [name ...]

Run names: ``sl`` SparseLoCo, ``sldct`` its DCT-chunk variant; ``d`` density in % (share of each 64 x 64
tile kept), ``b`` the error-feedback decay beta, ``olr`` the outer lr alpha. Writes
``benchmarks/results/sparseloco.json`` and ``sparseloco.md`` (a markdown table, also printed).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from farsync.bench.common import run_cached
from farsync.bench.quality import INNER_LR, _base, _diloco

RUNS_DIR = Path(__file__).parent / "results" / "sparseloco_runs"
M, H = 4, 30
DILOCO = _diloco(1.0, 0.7, H)


def _sparse(fraction: float, decay: float, outer_lr: float, kind: str = "sparseloco") -> list[str]:
    return [
        "algorithm.name=diloco",
        f"algorithm.num_inner_steps={H}",
        f"algorithm.outer_lr={outer_lr}",
        f"compression.kind={kind}",
        f"compression.topk_fraction={fraction}",
        f"compression.error_decay={decay}",
    ]


RUNS: dict[str, list[str]] = {
    "diloco": DILOCO,
    "sl_d1.56_b0.95_olr1": _sparse(0.015625, 0.95, 1.0),
    "sl_d3.1_b0.95_olr1": _sparse(0.03125, 0.95, 1.0),
    "sl_d1.56_b0.9_olr1": _sparse(0.015625, 0.9, 1.0),
    "sl_d1.56_b0.95_olr1.5": _sparse(0.015625, 0.95, 1.5),
    "sl_d1.56_b0.95_olr2": _sparse(0.015625, 0.95, 2.0),
    "sl_d1.56_b0.95_olr3": _sparse(0.015625, 0.95, 3.0),
    "sl_d1.56_b0.95_olr4": _sparse(0.015625, 0.95, 4.0),
    "sl_d1.56_b0.98_olr1": _sparse(0.015625, 0.98, 1.0),
    "sldct_d1.56_b0.95_olr1": _sparse(0.015625, 0.95, 1.0, "sparseloco_dct"),
    "sl_d1.56_b0.9_olr2": _sparse(0.015625, 0.9, 2.0),
    "sl_d1.56_b0.8_olr2": _sparse(0.015625, 0.8, 2.0),
    "sl_d1.56_b0.9_olr3": _sparse(0.015625, 0.9, 3.0),
    "sl_d1.56_b0.98_olr2": _sparse(0.015625, 0.98, 2.0),
    "sl_d0.78_b0.95_olr2": _sparse(0.0078125, 0.95, 2.0),
    "sl_d3.1_b0.95_olr2": _sparse(0.03125, 0.95, 2.0),
    "sl_d3.1_b0.9_olr2": _sparse(0.03125, 0.9, 2.0),
    "sl_d2.3_b0.9_olr2": _sparse(0.0234375, 0.9, 2.0),
    "sldct_d1.56_b0.95_olr2": _sparse(0.015625, 0.95, 2.0, "sparseloco_dct"),
}


def main(argv: list[str]) -> None:
    names = argv or list(RUNS)
    rows = {}
    for name in names:
        overrides = [*_base(M, False), f"train.lr={INNER_LR}", *RUNS[name]]
        rows[name] = run_cached(name, overrides, RUNS_DIR, mode="threads")
    out = Path(__file__).parent / "results" / "sparseloco.json"
    previous = json.loads(out.read_text()) if out.is_file() else {}
    previous.update({name: _summary(row) for name, row in rows.items()})
    out.write_text(json.dumps(previous, indent=2, sort_keys=True))
    base = previous.get("diloco", {}).get("final_eval_loss")
    lines = ["| run | eval loss | vs DiLoCo | MB sent/worker | bytes vs DDP |", "|---|---|---|---|---|"]
    for name, row in previous.items():
        loss, mb = row["final_eval_loss"], row["mb_sent_per_worker"]
        gap = f"{100 * (loss / base - 1):+.2f}%" if base else "-"
        lines.append(f"| {name} | {loss:.4f} | {gap} | {mb:.4f} | {row['ddp_mb_per_worker'] / mb:.0f} |")
    table = "\n".join(lines)
    print(table)
    (out.parent / "sparseloco.md").write_text(
        f"# SparseLoCo sweep ({__file__.rsplit('/', 1)[-1]})\n\n{table}\n"
    )


def _summary(row: dict) -> dict:
    keys = ("final_eval_loss", "overrides", "config_sha", "wall_s", "compute_s")
    out = {k: row[k] for k in keys if k in row}
    out["mb_sent_per_worker"] = row["bytes_sent_per_worker"] / 1e6
    out["ddp_mb_per_worker"] = row["ddp_bytes_per_worker"] / 1e6
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
