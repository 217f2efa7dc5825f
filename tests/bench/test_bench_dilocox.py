"""Smoke test of ``farsync bench dilocox`` (DDP against the DiLoCo family on a slow link, plus ring timing)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_helpers import assert_versus_ddp, finite, smoke_size, written

from farsync.bench import run_benchmark

VARIANTS = [
    "ddp",
    "diloco",
    "diloco_delayed",
    "diloco_eager",
    "dilocox",
    "dilocox_no_ef",
    "streaming",
    "dilocox_pipeline_2x2",
]


def test_dilocox_writes_every_variant_with_finite_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    smoke_size(monkeypatch)
    monkeypatch.delenv("FARSYNC_DILOCOX_SKIP", raising=False)
    run_benchmark("dilocox", tmp_path, quick=True)
    data, markdown = written(tmp_path, "dilocox_quick")
    assert data["skipped"] == {}
    rows = {row["name"]: row for row in data["runs"]}
    assert list(rows) == VARIANTS
    for name, row in rows.items():
        assert finite(
            row["final_eval_loss"], row["wall_with_drain_s"], row["bytes_vs_ddp"], row["speedup_vs_ddp"]
        )
        assert 0 < row["utilization"] <= 1 and f"| {name} |" in markdown, name
    assert_versus_ddp(rows, markdown, wall_key="wall_with_drain_s")
    assert 0 < rows["dilocox"]["bytes_sent_per_worker"] < rows["diloco"]["bytes_sent_per_worker"]
    assert rows["dilocox"]["ranks"] and rows["dilocox"]["bits"]  # the adaptive choices, read from its metrics
    assert finite(data["bandwidth_bps"], data["probe"]["step_s"]) and data["bandwidth_bps"] > 0
    timing = data["allreduce_timing"]
    assert set(timing["kinds"]) == {"fp32", "int8", "int4"}
    assert all(finite(t["seconds"]) and t["seconds"] > 0 for t in timing["kinds"].values())
    assert "dilocox_bytes_at_least_1000x_fewer" in data["targets"] and "Targets:" in markdown
