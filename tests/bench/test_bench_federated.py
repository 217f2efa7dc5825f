"""Smoke test of ``farsync bench federated`` (FedSGD vs FedAvg, gossip vs all-reduce, DP accuracy vs epsilon)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_helpers import finite, smoke_size, written

from farsync.bench import run_benchmark
from farsync.bench.federated import METHODS


def test_federated_writes_all_three_experiments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smoke_size(monkeypatch)
    run_benchmark("federated", tmp_path, quick=True)
    data, markdown = written(tmp_path, "federated")
    best = data["fedavg"]["best"]
    assert set(best) == {f"{method}/iid" for method in METHODS}
    for key, trial in best.items():
        assert 0 <= trial["best_accuracy"] <= 1 and trial["rounds_run"] >= 1, key
        assert finite(trial["local_steps_per_client"]) and trial["local_steps_per_client"] > 0, key
    assert set(data["fedavg"]["speedups"]) == {
        f"{method} / iid / {target}" for method in METHODS if method != "FedSGD" for target in ("90%", "95%")
    }
    gossip = data["gossip"]["rows"]
    assert len(gossip) == 3
    for name, row in gossip.items():
        assert 0 <= row["accuracy"] <= 1 and finite(row["gap_points"]) and row["bytes_sent_per_worker"] > 0, (
            name
        )
        assert f"| {name} |" in markdown
    privacy = data["privacy"]["rows"]
    assert [row["noise_multiplier"] for row in privacy] == [0.0, 1.0]
    assert privacy[0]["epsilon"] is None and finite(privacy[1]["epsilon"]) and privacy[1]["epsilon"] > 0
    assert all(0 <= row["final_accuracy"] <= 1 for row in privacy)
    assert "## Targets" in markdown and "## Central DP-FedAvg" in markdown
