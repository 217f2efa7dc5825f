"""Shared checks of the benchmark smoke tests: every benchmark at ``FARSYNC_BENCH_SMOKE=1`` size."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from farsync.bench.common import SMOKE_ENV


def smoke_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrinks the benchmarks to smoke-test size for this test (see :mod:`farsync.bench.common`)."""
    monkeypatch.setenv(SMOKE_ENV, "1")


def written(out_dir: Path, name: str) -> tuple[dict[str, Any], str]:
    """The ``<name>.json`` and ``<name>.md`` a benchmark wrote, both non-empty."""
    data = json.loads((out_dir / f"{name}.json").read_text())
    markdown = (out_dir / f"{name}.md").read_text()
    assert data and markdown.startswith("#")
    return data, markdown


def finite(*values: Any) -> bool:
    """True if every value is a real, finite number."""
    return all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def assert_versus_ddp(rows: dict[str, dict[str, Any]], markdown: str, wall_key: str) -> None:
    """Each row's "vs DDP" figures agree with its own loss, bytes and wall time against the ``ddp`` row's,
    and its "vs DDP" cell prints that loss gap (worse than DDP = positive)."""
    ddp = rows["ddp"]
    lines = markdown.splitlines()
    for name, row in rows.items():
        gap = row["final_eval_loss"] / ddp["final_eval_loss"] - 1.0
        assert row["loss_vs_ddp"] == pytest.approx(gap), name
        assert row["bytes_vs_ddp"] == pytest.approx(
            ddp["bytes_sent_per_worker"] / max(row["bytes_sent_per_worker"], 1)
        )
        assert row["speedup_vs_ddp"] == pytest.approx(ddp[wall_key] / row[wall_key]), name
        line = next(line for line in lines if line.startswith(f"| {name} |"))
        assert f"| {gap:+.2%} |" in line, (name, line)
