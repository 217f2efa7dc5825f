"""Three workers as real processes; one is SIGKILLed mid-round and restarted; the run completes in sync."""

from __future__ import annotations

import json
import random
from pathlib import Path

from farsync.config import load_config
from farsync.elastic.launch import launch_elastic
from farsync.sim.faults import FaultPlan, ScheduledKill


def test_kill_mid_round_restart_heal_and_finish_with_equal_weights(tmp_path: Path) -> None:
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog while birds sing in the morning light".split()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(rng.choice(words) for _ in range(20000)))
    config = load_config(
        None,
        [
            "num_workers=3",
            "model.num_layers=1",
            "model.width=32",
            "model.num_heads=2",
            "model.context_length=32",
            f"data.path='{corpus}'",
            "train.num_steps=30",
            "train.warmup_steps=2",
            "train.eval_every=1000",
            "train.num_eval_batches=2",
            "algorithm.num_inner_steps=5",
            "network.emulation='off'",
            "elastic.min_workers=3",  # survivors wait for the restarted worker: the test cannot race the end
            "elastic.heartbeat_interval_s=0.2",
            "elastic.failure_timeout_s=5.0",
            "elastic.collective_timeout_s=10.0",
            "checkpoint.every_rounds=0",
        ],
    )
    # Worker 2 dies in the middle of its third round (steps 10..15) and comes back half a second later.
    faults = FaultPlan(kills=[ScheduledKill(worker=2, round=2, step=12)], restart_after_s=0.5)
    out = tmp_path / "run"
    summary = launch_elastic(config, out, progress=False, faults=faults, timeout_s=150)

    assert summary["num_kills"] == 1 and summary["worker_failures"] >= 1
    assert summary["num_finished_workers"] == 3
    assert summary["global_params_equal"], summary["global_params_sha256"]
    assert summary["rounds_lost_by_survivors"] == 0 and summary["inner_steps_lost_by_survivors"] == 0
    assert summary["num_rounds"] == 6 and summary["num_steps"] == 30
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    heals = [r for r in records if r.get("kind") == "heal"]
    assert [h["worker"] for h in heals] == [2] and heals[0]["round"] >= 2
    quorums = [r for r in records if r.get("kind") == "quorum" and r.get("source") == "coordinator"]
    assert any(q["healers"] == [2] and q["members"] == [0, 1, 2] for q in quorums)
