"""The benchmark tables' "vs DDP" figures, pinned by hand values: a run 3% worse than DDP reads +3.00%."""

from __future__ import annotations

import pytest

from farsync.bench.common import markdown_table, versus_ddp

DDP = {
    "final_eval_loss": 2.0,
    "bytes_sent_per_worker": 100_000_000,
    "wall_s": 100.0,
    "wall_with_drain_s": 200.0,
}


def test_a_worse_run_has_a_positive_gap_fewer_bytes_and_its_speedup() -> None:
    # Prepare: 2.06 against DDP's 2.0, 1 MB against 100 MB, 4 s against 100 s.
    row = {"final_eval_loss": 2.06, "bytes_sent_per_worker": 1_000_000, "wall_s": 4.0}
    # Execute
    figures = versus_ddp(row, DDP)
    # Assert
    assert figures["loss_vs_ddp"] == pytest.approx(0.03)
    assert figures["bytes_vs_ddp"] == pytest.approx(100.0)
    assert figures["speedup_vs_ddp"] == pytest.approx(25.0)
    table = markdown_table(
        [{"name": "diloco", **figures}], [("run", "name", ""), ("vs DDP", "loss_vs_ddp", "+.2%")]
    )
    assert table.splitlines()[-1] == "| diloco | +3.00% |"


def test_a_better_run_has_a_negative_gap_and_ddp_against_itself_is_even() -> None:
    better = {"final_eval_loss": 1.9, "bytes_sent_per_worker": 0, "wall_s": 400.0, "wall_with_drain_s": 50.0}
    figures = versus_ddp(better, DDP, wall_key="wall_with_drain_s")
    assert figures["loss_vs_ddp"] == pytest.approx(-0.05)
    assert figures["bytes_vs_ddp"] == pytest.approx(1e8)  # nothing sent counts as one byte
    assert figures["speedup_vs_ddp"] == pytest.approx(4.0)  # the drain-inclusive wall, not wall_s
    assert versus_ddp(DDP, DDP) == {"loss_vs_ddp": 0.0, "bytes_vs_ddp": 1.0, "speedup_vs_ddp": 1.0}
