"""``farsync report DIR [DIR ...]``: runs side by side as a table, plus a comparison plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from farsync.report.plots import plot_comparison

__all__ = ["compare_runs", "format_table"]

COLUMNS = (
    ("run", "run"),
    ("algorithm", "algorithm"),
    ("workers", "num_workers"),
    ("steps", "num_steps"),
    ("rounds", "num_rounds"),
    ("eval loss", "final_eval_loss"),
    ("accuracy", "final_eval_accuracy"),
    ("MB sent/worker", "bytes_sent_per_worker"),
    ("vs DDP bytes", "bytes_reduction_vs_ddp"),
    ("wall s", "wall_s"),
    ("util", "compute_utilization"),
)


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "bytes_sent_per_worker":
        return f"{value / 1e6:.3f}"
    if key == "bytes_reduction_vs_ddp":
        return f"{value:.0f}x"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def format_table(rows: list[dict[str, Any]], markdown: bool = False) -> str:
    """A plain-text (or markdown) table of summaries."""
    header = [title for title, _ in COLUMNS]
    body = [[_cell(key, row.get(key)) for _, key in COLUMNS] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(
        [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in body]
    )


def compare_runs(run_dirs: list[Path], plot_path: Path | None = None) -> str:
    """Reads each run's ``summary.json``; returns the table and writes the comparison plot."""
    rows = []
    for run_dir in run_dirs:
        summary_path = run_dir / "summary.json"
        if not summary_path.is_file():
            raise FileNotFoundError(f"{run_dir}: no summary.json (is this a finished farsync run directory?)")
        rows.append({"run": run_dir.name, **json.loads(summary_path.read_text())})
    if plot_path is not None:
        plot_comparison(run_dirs, plot_path)
    return format_table(rows)
