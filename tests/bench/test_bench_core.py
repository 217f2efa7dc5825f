"""Smoke test of ``farsync bench core`` (DDP, DiLoCo, FedAvg at equal tokens, plus the overhead measurement)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_helpers import assert_versus_ddp, finite, smoke_size, written

from farsync.bench import run_benchmark
from farsync.bench.core import DILOCO_RECIPE


def test_core_writes_every_row_with_finite_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smoke_size(monkeypatch)
    returned = run_benchmark("core", tmp_path, quick=True)
    data, markdown = written(tmp_path, "core_quick")
    assert data == returned
    rows = {row["name"]: row for row in data["runs"]}
    assert list(rows) == ["ddp", "single_worker", "fedavg", DILOCO_RECIPE]
    for name, row in rows.items():
        assert finite(row["final_eval_loss"], row["wall_s"], row["loss_vs_ddp"], row["speedup_vs_ddp"]), name
        assert row["num_steps"] == data["num_steps"] and f"| {name} |" in markdown
    assert_versus_ddp(rows, markdown, wall_key="wall_s")
    assert rows["single_worker"]["bytes_sent_per_worker"] == 0
    assert rows["ddp"]["bytes_sent_per_worker"] > rows[DILOCO_RECIPE]["bytes_sent_per_worker"] > 0
    overhead = data["overhead"]
    assert finite(overhead["plain_step_s"], overhead["diloco_step_s"], overhead["overhead"])
    assert set(data["targets"]) == {
        "diloco_loss_within_3pct_of_ddp",
        "diloco_bytes_at_least_50x_fewer",
        "overhead_at_most_3pct",
    }
    assert "Targets:" in markdown and "Framework overhead" in markdown
