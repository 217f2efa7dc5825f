"""Smoke test of ``farsync bench byzantine`` (worst case of every defence over an attack suite, two regimes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_helpers import finite, smoke_size, written

from farsync.bench import run_benchmark
from farsync.bench.byzantine import CACHE_ENV
from farsync.config import load_config


def test_byzantine_writes_the_worst_case_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smoke_size(monkeypatch)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    run_benchmark("byzantine", tmp_path, quick=True)
    data, markdown = written(tmp_path, "byzantine")
    defences = ("mean", "centered_clip", "centered_clip + nnm")
    cells = {(row["regime"], row["defence"], row["attack"]) for row in data["rows"]}
    assert cells == {
        (regime, defence, attack)
        for regime in ("sync", "diloco")
        for defence in defences
        for attack in ("none", "sign_flip", "ipm_0.5")
    }
    for row in data["rows"]:
        assert 0 <= row["final_eval_accuracy"] <= 1 and finite(row["final_eval_loss"]), row
        assert row["bytes_sent_per_worker"] > 0 and row["num_rounds"] >= 1
    for table in data["tables"].values():
        for entry in table:
            # The worst case is the minimum over the attacks, and it names the attack that reached it.
            assert entry["worst"] == min(entry["by_attack"].values())
            assert entry["by_attack"][entry["worst_attack"]] == entry["worst"]
    assert data["meta"]["chosen"]["defence"] in defences
    assert "## Synchronous SGD" in markdown and "## DiLoCo" in markdown and "| worst |" in markdown


def test_robust_preset_is_the_committed_benchmarks_choice() -> None:
    # Prepare: the defence the committed full benchmark chose, as settings
    results = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "byzantine.json"
    chosen = json.loads(results.read_text())["meta"]["chosen"]
    # Execute
    from_bench = load_config(None, chosen["settings"]).aggregation
    preset = load_config(None, ["aggregation.rule=robust"]).aggregation.resolved()
    # Assert: aggregation.rule = "robust" selects exactly that defence
    assert preset == from_bench, (preset, chosen)
