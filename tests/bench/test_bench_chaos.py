"""Smoke test of ``farsync bench chaos`` (an elastic DiLoCo run under SIGKILLs against a fault-free one).

The benchmark runs in its own ``farsync bench`` process, as users run it: the elastic launcher forks its
workers from the calling process, and a pytest process that already ran threaded tests is no clean parent
to fork from (a forked worker was seen to hang in its final plot after such tests).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from bench_helpers import finite, written

from farsync.bench.common import SMOKE_ENV


@pytest.mark.timeout(400)
def test_chaos_writes_the_fault_free_and_the_chaotic_run(tmp_path: Path) -> None:
    env = {**os.environ, SMOKE_ENV: "1", "FARSYNC_CHAOS_SEEDS": "1", "FARSYNC_FUZZ_MESSAGES": "300"}
    command = [sys.executable, "-m", "farsync.cli", "bench", "chaos", "--quick", "--out", str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=380)
    assert done.returncode == 0, done.stderr[-2000:]
    data, markdown = written(tmp_path, "chaos_quick")
    rows = {row["run"]: row for row in data["rows"]}
    assert list(rows) == ["fault_free", "chaos_seed1", "fuzzed"]
    for name, row in rows.items():
        assert finite(row["final_eval_loss"], row["eval_loss_gap"], row["real_s"]), name
        assert row["num_finished_workers"] == data["config"]["num_workers"] and f"| {name} |" in markdown
    assert rows["fault_free"]["num_kills"] == 0 and rows["fault_free"]["global_params_equal"]
    assert set(data["targets"]) == {
        "completed_every_time",
        "survivors_lost_0_inner_steps",
        "eval_loss_within_2pct",
        "all_hashes_equal",
        "healing_within_one_transfer_plus_2s",
        "fuzz_all_sent",
        "fuzz_coordinator_alive",
        "fuzz_every_worker_alive",
        "fuzz_hash_equal_to_clean",
        "fuzz_every_inbox_message_rejected",
        "signing_overhead_at_most_1pct",
    }
    fuzz = data["fuzz"]
    assert fuzz["tried"] == 300 and fuzz["inbox_rejected"] == fuzz["inbox_tried"] > 0
    assert data["targets"]["fuzz_hash_equal_to_clean"] and data["targets"]["fuzz_coordinator_alive"]
    assert 0 < data["signing_overhead"]["overhead_fraction"] < 1
    assert finite(data["send_model_once_s"]) and "targets:" in markdown
