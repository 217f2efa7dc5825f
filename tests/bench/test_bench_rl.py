"""Smoke test of ``farsync bench rl`` (warm-start, sync and async legs, supervised control, targets)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_helpers import finite, smoke_size, written

from farsync.bench import run_benchmark


def test_rl_writes_legs_control_and_targets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smoke_size(monkeypatch)
    run_benchmark("rl", tmp_path, quick=True, sections=["grpo"])  # the swarm section: tests/rl
    data, markdown = written(tmp_path, "rl")
    assert [row["leg"] for row in data["rows"]] == ["sync-seed0", "async-k1-seed0"]
    for row in data["rows"]:
        assert 0 <= row["start"] <= 1 and 0 <= row["final"] <= 1 and finite(row["s_per_step"]), row
        assert f"| {row['leg']} |" in markdown
        assert row["verified"] > 0 and row["rejected"] == 0 and row["broadcast_mb"] > 0, row
        assert finite(row["publish_fraction"], row["fetch_fraction"]), row
    (control,) = data["controls"]
    assert control["sft_same_time_steps"] >= control["sft_more_steps"] == data["plan"]["num_steps"]
    targets = data["summary"]["targets"]
    assert finite(targets["grpo_gain_points_sync"], targets["async_k1_minus_sync_points"])
    assert "## Targets" in markdown and "## Supervised control" in markdown
    assert "### Weight broadcast" in markdown and "### Rollout verification" in markdown
    assert data["broadcast"]["corruption"]["corrupted_tensors_loaded"] == 0
