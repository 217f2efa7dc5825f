"""Smoke test of ``farsync bench byzantine`` (accuracy of aggregation rules under attack, with validation)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_helpers import finite, smoke_size, written

from farsync.bench import run_benchmark


def test_byzantine_writes_both_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smoke_size(monkeypatch)
    run_benchmark("byzantine", tmp_path, quick=True)
    data, markdown = written(tmp_path, "byzantine")
    cells = {(row["rule"], row["attack"], row["num_byzantine"]) for row in data["rows"]}
    assert cells == {
        ("mean", "none", 0),
        ("centered_clip", "none", 0),
        ("mean", "sign_flip", 7),
        ("centered_clip", "sign_flip", 7),
        ("centered_clip + outlier bans", "none", 0),
        ("centered_clip + outlier bans", "sign_flip", 7),
    }
    for row in data["rows"]:
        assert 0 <= row["final_eval_accuracy"] <= 1 and finite(row["final_eval_loss"]), row
        assert row["bytes_sent_per_worker"] > 0 and row["num_rounds"] == data["meta"]["num_rounds"] >= 1
    assert "clean" in data["meta"]["targets"]
    assert (
        "| sign_flip | 7 |" in markdown
        and "With validation" in markdown
        and "Bytes sent per worker" in markdown
    )
