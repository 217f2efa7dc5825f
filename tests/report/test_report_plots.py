"""report.png's token axis: counts are short labels (2.5k, 12.5M), not raw integers that run into each other."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pytest
from matplotlib.figure import Figure

from farsync.report import plots
from farsync.report.plots import format_count


@pytest.mark.parametrize(
    ("value", "label"),
    [
        (0, "0"),
        (950, "950"),
        (1000, "1k"),
        (2500, "2.5k"),
        (12_500, "12.5k"),
        (100_000, "100k"),
        (999_999, "1M"),  # rounding carries into the next unit
        (2_500_000, "2.5M"),
        (12_345_678, "12.3M"),
        (1_200_000_000, "1.2B"),
        (-2500, "-2.5k"),
    ],
)
def test_counts_are_short_labels(value: float, label: str) -> None:
    assert format_count(value) == label


def _kept_figures(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """The figures the plot functions close, kept open for inspection."""
    figures: list[Figure] = []
    monkeypatch.setattr(plots.plt, "close", figures.append)
    return figures


def _write_metrics(run_dir: Path, tokens_per_step: int) -> None:
    records: list[dict[str, Any]] = []
    for step in range(1, 21):
        tokens = step * tokens_per_step
        records.append({"kind": "step", "worker": 0, "step": step, "tokens": tokens, "loss": 5.0 - step / 20})
        if step % 10 == 0:
            records.append(
                {
                    "kind": "eval",
                    "worker": 0,
                    "step": step,
                    "tokens": tokens,
                    "eval_loss": 4.9,
                    "bytes_sent": 1e5,
                }
            )
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))


def _token_tick_labels(figure: Figure) -> list[str]:
    figure.canvas.draw()
    return [tick.get_text() for tick in figure.axes[0].get_xticklabels() if tick.get_text()]


def test_the_run_and_comparison_plots_label_tokens_in_millions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: 20 steps of 625k tokens (12.5M per worker at the end).
    _write_metrics(tmp_path / "run", tokens_per_step=625_000)
    figures = _kept_figures(monkeypatch)
    # Execute
    plots.plot_run(tmp_path / "run" / "metrics.jsonl", tmp_path / "report.png", title="run")
    plots.plot_comparison([tmp_path / "run"], tmp_path / "compare.png")
    assert len(figures) == 2
    # Assert: every token label is short and in millions (no 12500000, no 1e7 offset).
    assert (tmp_path / "report.png").stat().st_size > 0
    for figure in figures:
        labels = _token_tick_labels(figure)
        assert labels, "no token tick labels"
        assert all(label == "0" or label.endswith("M") for label in labels), labels
        assert not figure.axes[0].xaxis.get_offset_text().get_text()
    monkeypatch.undo()
    for figure in figures:
        plt.close(figure)
