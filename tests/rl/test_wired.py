"""End to end with the real pieces wired: policy versions reach the workers through the SHARDCAST-like relay
(directory or HTTP), workers sample replayably with TOPLOC-like fingerprints, the trainer verifies a share of
the rollouts, and a worker that samples at another temperature than it claims is caught and excluded while
the run finishes."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest

import farsync.rl.worker
from farsync.config import ModelConfig, RLConfig, RunConfig
from farsync.rl.broadcast import version_dir
from farsync.rl.runner import run_rl


def _config(**rl: object) -> RunConfig:
    settings: dict[str, object] = {
        "num_sft_steps": 20,
        "num_steps": 3,
        "num_groups_per_step": 2,
        "group_size": 4,
        "num_heldout": 8,
        "eval_every": 3,
        "worker_backend": "thread",
        "rollout_timeout_s": 60.0,
        "num_rollout_workers": 2,
        "verify_fraction": 1.0,
        "shard_bytes": 4096,
    }
    settings.update(rl)
    return RunConfig(
        seed=0,
        model=ModelConfig(num_layers=1, width=32, num_heads=2, context_length=16),
        rl=RLConfig(**settings),
    )


@pytest.mark.parametrize("transport", ["relay", "http"])
def test_versions_come_through_the_relay_and_honest_rollouts_verify(tmp_path: Path, transport: str) -> None:
    summary = run_rl(_config(mode="sync", weight_transport=transport), tmp_path)
    assert summary["num_steps"] == 3
    relay = tmp_path / "relay"
    pointer = json.loads((relay / "LATEST").read_text())
    assert pointer["version"] == 3  # the last version stays on the relay, complete
    manifest_bytes = (relay / version_dir(3) / "manifest.json").read_bytes()
    assert hashlib.sha256(manifest_bytes).hexdigest() == pointer["manifest_sha256"]
    shards = json.loads(manifest_bytes)["shards"]
    assert len(shards) > 1  # 4 kB shards: the policy is really cut
    for shard in shards:
        data = (relay / version_dir(3) / shard["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"]
    broadcast = summary["broadcast"]
    assert broadcast["transport"] == transport and broadcast["versions_published"] == 4
    assert broadcast["bytes_sent"] > 0 and broadcast["failed_fetches"] == 0
    for report in summary["workers"].values():  # every worker fetched every version it used
        assert report["versions_used"] >= 3 and report["bytes_fetched"] > 0
    verification = summary["verification"]
    assert verification["verified"] == summary["intake"]["accepted"] > 0
    assert verification["rejected"] == 0 and verification["excluded_workers"] == []
    assert summary["intake"]["rejected"] == {}


def test_a_worker_sampling_at_another_temperature_is_excluded_and_the_run_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    honest = farsync.rl.worker.sample_group_with_proofs

    def lying(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name == "w1":  # the pool names worker threads by worker id
            kwargs["temperature"] *= 2.0  # samples hotter, claims the configured temperature
        return honest(*args, **kwargs)

    monkeypatch.setattr(farsync.rl.worker, "sample_group_with_proofs", lying)
    summary = run_rl(_config(mode="async", max_staleness=1, num_steps=4), tmp_path)
    assert summary["num_steps"] == 4
    verification = summary["verification"]
    assert verification["excluded_workers"] == ["w1"]  # one strike excludes: w0 never failed a check
    assert verification["rejected"] >= 1 and verification["verified"] > 0
    assert summary["intake"]["rejected"]["verification"] == verification["rejected"]
