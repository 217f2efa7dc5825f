"""``farsync bench byzantine``: the smoke run of the breakdown grid, the report's arithmetic (worst case,
area, choice), and the preset kept equal to the committed benchmark's choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_helpers import finite, smoke_size, written

from farsync.bench import run_benchmark
from farsync.bench.byzantine import CACHE_ENV
from farsync.bench.byzantine_report import area, choose, curves
from farsync.config import load_config


def test_byzantine_writes_the_breakdown_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smoke_size(monkeypatch)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    run_benchmark("byzantine", tmp_path, quick=True)
    data, markdown = written(tmp_path, "byzantine")
    defences = ("mean", "centered_clip (neighbors radius) + nnm", "centered_clip (history) + nnm")
    cells = {(row["regime"], row["defence"], row["attack"], row["f"]) for row in data["rows"]}
    expected = {(regime, d, "none", 0) for regime in ("sync", "diloco") for d in defences}
    expected |= {(regime, d, attack, f) for regime in ("sync", "diloco") for d in defences
                 for attack in ("sign_flip", "alie") for f in (3, 7)}  # fmt: skip
    assert cells == expected
    for row in data["rows"]:
        assert 0 <= row["final_eval_accuracy"] <= 1 and finite(row["final_eval_loss"]), row
    for table in data["tables"].values():
        for entry in table.values():
            for f, worst in entry["worst"].items():
                assert worst == min(entry["by_attack"][f].values())
    assert data["meta"]["chosen"]["defence"] in defences
    assert data["meta"]["verification"]["sync"]["verify_bytes_per_worker"] > 0
    assert (tmp_path / "byzantine_curve.png").stat().st_size > 0
    assert "## Synchronous SGD" in markdown and "## DiLoCo" in markdown and "| area |" in markdown


def test_area_is_the_mean_height_of_the_curve() -> None:
    # Trapezoids over x in [0, 0.5]: (0.1 * (1 + 0.8) + 0.4 * (0.8 + 0.2)) / 2 / 0.5 = 0.58.
    assert area([(0.0, 1.0), (0.1, 0.8), (0.5, 0.2)]) == pytest.approx(0.58)
    assert area([(0.0, 0.7)]) == 0.7


def test_curves_take_the_worst_attack_and_choose_takes_the_largest_mean_area() -> None:
    # Prepare: defence "a" falls to 0.5 at f = 1 under "y"; defence "b" holds 0.8 in one regime only.
    def rows(b_worst: float) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for defence, clean, worst in (("mean", 0.9, 0.1), ("a", 0.9, 0.5), ("b", 0.9, b_worst)):
            out.append({"defence": defence, "attack": "none", "f": 0, "final_eval_accuracy": clean})
            out.append({"defence": defence, "attack": "x", "f": 1, "final_eval_accuracy": 0.85})
            out.append({"defence": defence, "attack": "y", "f": 1, "final_eval_accuracy": worst})
        return out

    # Execute
    tables = {regime: curves(rows(b), ["mean", "a", "b"], ["x", "y"], [1], n=2)
              for regime, b in (("sync", 0.8), ("diloco", 0.3))}  # fmt: skip
    # Assert: a's curve is 0.9 -> 0.5 over [0, 1/2], area 0.7; b's areas 0.85 and 0.6 (mean 0.725).
    assert tables["sync"]["a"]["worst"] == {"1": 0.5} and tables["sync"]["a"]["worst_attack"] == {"1": "y"}
    assert tables["sync"]["a"]["area"] == pytest.approx(0.7)
    assert tables["sync"]["b"]["clean_reference"] == 0.9
    assert choose(tables) == "b"


def test_robust_preset_is_the_committed_benchmarks_choice() -> None:
    # Prepare: the defence the committed benchmark chose, as settings
    results = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "byzantine.json"
    chosen = json.loads(results.read_text())["meta"]["chosen"]
    # Execute
    from_bench = load_config(None, chosen["settings"]).aggregation
    preset = load_config(None, ["aggregation.rule=robust"]).aggregation.resolved()
    # Assert: aggregation.rule = "robust" selects exactly that defence
    assert preset == from_bench, (preset, chosen)
