"""Plots: one run's loss against tokens and against bytes sent, and several runs compared."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

__all__ = ["format_count", "load_metrics", "plot_comparison", "plot_run"]

_COUNT_SUFFIXES = ("", "k", "M", "B", "T")


def format_count(value: float) -> str:
    """A count as a short tick label: ``950``, ``2.5k``, ``100k``, ``2.5M``, ``1.2B`` (three significant digits).

    Raw integers such as ``12500000`` run into their neighbours on a token axis.
    """
    magnitude = abs(value)
    for power, suffix in enumerate(_COUNT_SUFFIXES):
        scaled = magnitude / 1000**power
        text = f"{scaled:.3g}"
        # Rounding can carry into the next unit (999_999 -> "1e+03" k): move up a unit then.
        if float(text) < 1000 or power == len(_COUNT_SUFFIXES) - 1:
            sign = "-" if value < 0 and float(text) != 0 else ""
            return f"{sign}{text}{suffix}"
    raise AssertionError("unreachable")


def _label_tokens(axis: Axes) -> None:
    axis.set_xlabel("tokens per worker")
    axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _position: format_count(value)))


def load_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _eval_points(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    points = [r for r in records if r.get("kind") == "eval" and r.get("worker", 0) == 0]
    return sorted(points, key=lambda r: r["step"])


def plot_run(metrics_path: Path, out_path: Path, title: str = "") -> None:
    """Two panels: eval loss against tokens per worker and against bytes sent (log scale)."""
    records = load_metrics(metrics_path)
    steps = [r for r in records if r.get("kind") == "step" and r.get("worker", 0) == 0]
    evals = _eval_points(records)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if steps:
        left.plot(
            [r["tokens"] for r in steps], [r["loss"] for r in steps], alpha=0.35, label="train (worker 0)"
        )
    if evals:
        left.plot([r["tokens"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval")
        right.plot(
            [max(r["bytes_sent"], 1) for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval"
        )
    _label_tokens(left)
    left.set_ylabel("loss")
    right.set_xlabel("bytes sent per worker")
    right.set_xscale("log")
    right.set_ylabel("eval loss")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(out_path, dpi=100)
    plt.close(figure)


def plot_comparison(run_dirs: list[Path], out_path: Path) -> None:
    """Eval loss against tokens and against bytes for several runs."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for run_dir in run_dirs:
        evals = _eval_points(load_metrics(run_dir / "metrics.jsonl"))
        if not evals:
            continue
        label = run_dir.name
        left.plot([r["tokens"] for r in evals], [r["eval_loss"] for r in evals], "o-", label=label)
        right.plot(
            [max(r["bytes_sent"], 1) for r in evals], [r["eval_loss"] for r in evals], "o-", label=label
        )
    _label_tokens(left)
    right.set_xlabel("bytes sent per worker")
    right.set_xscale("log")
    for axis in (left, right):
        axis.set_ylabel("eval loss")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out_path, dpi=100)
    plt.close(figure)
