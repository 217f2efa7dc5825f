"""Smoke test of ``farsync bench quality``: every section runs end to end and writes its tables, the
time-to-loss plot and its targets (at ``FARSYNC_BENCH_SMOKE=1`` size, where the numbers mean nothing)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from farsync.bench import run_benchmark
from farsync.bench.common import SMOKE_ENV


@pytest.mark.timeout(600)  # about 12 tiny runs; minutes on a loaded 2-core machine
def test_quality_writes_every_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    monkeypatch.setenv(SMOKE_ENV, "1")
    monkeypatch.delenv("FARSYNC_QUALITY_SECTIONS", raising=False)
    # Execute
    run_benchmark("quality", tmp_path, quick=True)
    # Assert
    data = json.loads((tmp_path / "quality_quick.json").read_text())
    markdown = (tmp_path / "quality_quick.md").read_text()
    assert (tmp_path / "quality_time_to_loss_quick.png").stat().st_size > 0
    variants = {row["variant"] for row in data["variants"]}
    assert variants == {"int4_ef"}
    assert {row["rule"] for row in data["overlap"]} == {"sync", "naive", "eager"}
    assert {row["variant"] for row in data["dilocox"]["rows"]} == {
        "ddp_100x",
        "dilocox_100x",
        "dilocox_emulation_off",
    }
    for row in [
        *data["ddp"],
        *data["recipes"],
        *data["variants"],
        *data["overlap"],
        *data["dilocox"]["rows"],
    ]:
        assert math.isfinite(row["final_eval_loss"]) and math.isfinite(row["final_local_eval_loss"])
        assert f"| {row['name']} |" in markdown or row in data["recipes"]
    curves = data["time_to_loss"]["1Gbit"]
    assert set(curves) == {"ddp", "diloco", "streaming", "dilocox"}
    assert all(len(c["curve"]) >= 2 for c in curves.values())
    assert "eager_within_5%_of_synchronous" in data["targets"] and "Targets:" in markdown
