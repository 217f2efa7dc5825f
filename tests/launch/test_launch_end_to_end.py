"""Whole runs: the CLI with worker processes, ``farsync report``, torchrun, and a classification run.

These start real interpreters where that is the point (``farsync train`` and torchrun); the rest run
workers as threads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from farsync import cli
from farsync.config import RunConfig, config_to_toml, load_config
from farsync.launch.local import launch

SUMMARY_FIELDS = {
    "algorithm",
    "num_workers",
    "num_steps",
    "num_rounds",
    "tokens",
    "final_eval_loss",
    "bytes_sent_per_worker",
    "ddp_bytes_per_worker",
    "wall_s",
    "compute_s",
    "comm_wait_s",
    "compute_utilization",
    "bandwidth_bps",
    "global_params_sha256",
}
"""The fields the issue requires in every summary.json."""


def _records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


@pytest.mark.timeout(600)  # three interpreters importing torch: minutes on a machine shared by many
def test_cli_train_with_two_worker_processes_writes_every_output(
    tmp_path: Path,
    tiny_overrides: list[str],
    tiny_config: Callable[..., RunConfig],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Prepare
    out = tmp_path / "diloco"
    overrides = [
        *tiny_overrides,
        "num_workers=2",
        "train.num_steps=10",
        "algorithm.num_inner_steps=5",
        "train.eval_every=5",
    ]
    command = [sys.executable, "-m", "farsync.cli", "train", "--out", str(out), "--no-progress"]
    for override in overrides:
        command += ["--set", override]
    ddp_dir = tmp_path / "ddp"
    launch(
        tiny_config("num_workers=2", "train.num_steps=10", "algorithm.name=ddp", "train.report_every=5"),
        ddp_dir,
        mode="threads",
        progress=False,
    )
    # Execute
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=_env())
    code = cli.main(["report", str(out), str(ddp_dir), "--plot", str(tmp_path / "comparison.png")])
    table = capsys.readouterr().out
    # Assert: the run
    assert done.returncode == 0, done.stderr[-3000:]
    assert "outputs in" in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_FIELDS <= summary.keys()
    assert (summary["algorithm"], summary["num_workers"], summary["num_steps"], summary["num_rounds"]) == (
        "diloco",
        2,
        10,
        2,
    )
    assert summary["tokens"] == 2 * 10 * 2 * 16  # workers x steps x batch x context
    hashes = summary["global_params_sha256"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    assert 0 < summary["bytes_sent_per_worker"] < summary["ddp_bytes_per_worker"]
    assert summary["bandwidth_bps"] == 1e9 and 0 < summary["compute_utilization"] <= 1
    kinds = {record["kind"] for record in _records(out)}
    assert {"step", "round", "eval"} <= kinds
    assert (out / "report.png").stat().st_size > 0
    assert load_config(out / "config.toml") == load_config(None, overrides)
    # Assert: the comparison
    assert code == 0
    assert "diloco" in table and "ddp" in table and "eval loss" in table
    assert (tmp_path / "comparison.png").is_file()


def test_ddp_sends_what_the_summary_says_ddp_sends(
    tmp_path: Path, tiny_config: Callable[..., RunConfig]
) -> None:
    # Prepare
    config = tiny_config("num_workers=2", "train.num_steps=4", "algorithm.name=ddp", "train.report_every=2")
    # Execute
    summary = launch(config, tmp_path / "run", mode="threads", progress=False)
    # Assert: fp32 gradients plus the one weight value that rides along in each all-reduce
    per_step = 2 * (2 - 1) * 4 * (summary["num_params"] + 1) // 2
    assert summary["bytes_sent_per_worker"] == 4 * per_step
    assert summary["ddp_bytes_per_worker"] == 4 * 4 * summary["num_params"]
    assert summary["num_rounds"] == 2
    assert len(set(summary["global_params_sha256"])) == 1


def test_report_of_a_directory_without_a_summary_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = cli.main(["report", str(tmp_path)])
    # Assert
    assert code == 2
    assert "no summary.json" in capsys.readouterr().err


@pytest.mark.timeout(600)
def test_torchrun_two_processes_complete_with_equal_global_weights(
    tmp_path: Path, tiny_config: Callable[..., RunConfig]
) -> None:
    # Prepare
    config_path = tmp_path / "config.toml"
    config = tiny_config("train.num_steps=6", "algorithm.num_inner_steps=3", "train.eval_every=100")
    config_path.write_text(config_to_toml(config))
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "farsync.launch.torchrun", str(config_path), "--out", str(out),
    ]  # fmt: skip
    # Execute
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=_env())
    # Assert
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["num_workers"], summary["num_steps"], summary["num_rounds"]) == (2, 6, 2)
    hashes = summary["global_params_sha256"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    assert not list(out.glob("metrics.rank*.jsonl"))  # merged into metrics.jsonl
    assert {"step", "round", "eval"} <= {r["kind"] for r in _records(out)}


def test_mlp_on_digits_with_two_workers_learns_and_reports_accuracy(tmp_path: Path) -> None:
    # Prepare
    config = load_config(
        None,
        [
            "num_workers=2",
            "model.kind=mlp",
            "model.width=64",
            "data.kind=digits",
            "train.num_steps=60",
            "train.batch_size=32",
            "train.lr=0.01",
            "train.weight_decay=0",
            "train.warmup_steps=5",
            "train.eval_every=1000",
            "algorithm.num_inner_steps=10",
            "network.emulation=virtual",
        ],
    )
    # Execute
    summary = launch(config, tmp_path / "run", mode="threads", progress=False)
    # Assert: chance is 0.1
    assert summary["final_eval_accuracy"] > 0.8
    assert summary["num_rounds"] == 6
    assert len(set(summary["global_params_sha256"])) == 1
    evals = [r for r in _records(tmp_path / "run") if r["kind"] == "eval"]
    assert evals and "eval_accuracy" in evals[-1]
