"""``farsync bench frontier``: the pure pieces against hand-computed values, and a smoke run end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_helpers import finite, smoke_size, written

from farsync.bench import run_benchmark
from farsync.bench.frontier import STEP_S, _Bench, link_bandwidth_bps, loss_at, retime, time_to
from farsync.comm.cost import Collective, LinkModel, wire_time


def test_link_bandwidth_gives_the_asked_ratio() -> None:
    # 1,000 parameters + the weight element, 4 workers: a ring all-reduce of 4,004 bytes.
    for ratio in (1.0, 10.0, 100.0):
        bps = link_bandwidth_bps(1000, ratio, num_workers=4)
        seconds = wire_time(Collective.ALL_REDUCE, 4004, 4, LinkModel(bps, 0.0))
        assert seconds == pytest.approx(ratio * STEP_S)


def test_retime_scales_only_the_communication() -> None:
    # Step 10 at 1.5 s: 1.0 s of modelled compute and 0.5 s on the link; a 10x slower link makes it 5 s.
    assert retime([(10, 1.5, 2.0)], 10.0) == [(10, pytest.approx(1.0 + 5.0), 2.0)]


def test_curve_readers() -> None:
    curve = [(1.0, 3.0), (2.0, 2.5), (4.0, 2.0)]
    assert time_to(curve, 2.5) == 2.0
    assert time_to(curve, 1.9) is None
    assert loss_at(curve, 0.5) is None
    assert loss_at(curve, 3.9) == 2.5
    assert loss_at(curve, 4.0) == 2.0


@pytest.mark.timeout(300)
def test_frontier_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smoke_size(monkeypatch)
    monkeypatch.setenv("FARSYNC_FRONTIER_METHODS", "diloco_h15,streaming_int4")
    run_benchmark("frontier", tmp_path, quick=True)
    data, markdown = written(tmp_path, "frontier_quick")
    assert set(data["links"]) == {"1x", "100x"}
    slow, fast = data["links"]["100x"], data["links"]["1x"]
    for link in (slow, fast):
        rows = link["rows"]
        assert {"ddp", "diloco_h15", "streaming_int4"} <= set(rows)
        ddp_bytes = rows["ddp"]["bytes_sent_per_worker"]
        for row in rows.values():
            assert finite(row["final_eval_loss"], row["wall_s"])
            assert row["bytes_vs_ddp"] == pytest.approx(ddp_bytes / row["bytes_sent_per_worker"])
        # T_eq is the modelled compute of every step plus 10%; the methods' losses are read off their curves.
        assert link["t_eq_s"] == pytest.approx(1.1 * 60 * STEP_S)
        assert (tmp_path / f"frontier_{link['ratio']:g}x_quick.png").stat().st_size > 0
    # Same steps, same losses on both links (no method here adapts to the link); only the time differs.
    assert slow["rows"]["diloco_h15"]["final_eval_loss"] == fast["rows"]["diloco_h15"]["final_eval_loss"]
    assert slow["rows"]["ddp"]["wall_s"] > 10 * fast["rows"]["ddp"]["wall_s"]
    assert "Which method to pick" in markdown
    # The blocking methods ran on the fast link and were retimed for the slow one: a real run there agrees.
    assert slow["rows"]["ddp"]["retimed_from"] == "1x"
    real = _Bench(tmp_path, quick=True).run("ddp_real_100x", 100.0, ["algorithm.name=ddp"])
    assert real["final_eval_loss"] == slow["rows"]["ddp"]["final_eval_loss"]
    assert real["wall_s"] == pytest.approx(slow["rows"]["ddp"]["wall_s"], rel=1e-6)
    assert [w for w, _ in real["curve"]] == pytest.approx(
        [w for w, _ in slow["rows"]["ddp"]["curve"]], rel=1e-6
    )
