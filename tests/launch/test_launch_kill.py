"""Worker processes die with their launcher, whatever kills it; elastic workers give up on a lost coordinator.

Real processes: ``farsync train`` is started as a child, killed once its workers are training, and the test
checks in /proc that none of the launcher's children is alive 10 seconds later.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from safety_runs_helpers import (
    TINY,
    alive,
    children,
    farsync_process,
    run_cli,
    sets,
    signal_state,
    wait_for_workers,
    wait_gone,
)

from farsync.elastic.client import CoordinatorClient, CoordinatorLost

LONG = [
    *TINY,
    "num_workers=2",
    "train.num_steps=1000000",
    "algorithm.num_inner_steps=50",
    "checkpoint.every_rounds=0",
]
"""A run that would go on for hours."""

START_S = 150.0
"""How long a loaded CI machine may take to import torch in a launcher and its workers."""


def _kill_all(pids: list[int]) -> None:
    for pid in alive(pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_no_worker_outlives_a_killed_launcher(tmp_path: Path, signum: signal.Signals) -> None:
    # Prepare: a long run, training
    out = tmp_path / "run"
    launcher = farsync_process(["train", "--no-progress", "--out", str(out), *sets(LONG)])
    everyone: list[int] = []
    try:
        wait_for_workers(launcher, 2, out / "metrics.jsonl", START_S)
        everyone = children(launcher.pid)
        # Execute
        launcher.send_signal(signum)
        code = launcher.wait(30)
        left = wait_gone(everyone, 10.0)
    finally:
        _kill_all(everyone)
        launcher.kill()
        launcher.communicate()
    # Assert
    assert left == []
    assert code == (143 if signum == signal.SIGTERM else -signal.SIGKILL)


def test_ctrl_c_prints_one_line_per_process_and_no_traceback(tmp_path: Path) -> None:
    # Prepare: the launcher leads its own process group, as a shell's foreground job does
    out = tmp_path / "run"
    launcher = farsync_process(
        ["train", "--no-progress", "--out", str(out), *sets(LONG)], start_new_session=True
    )
    everyone: list[int] = []
    try:
        workers = wait_for_workers(launcher, 2, out / "metrics.jsonl", START_S)
        everyone = children(launcher.pid)
        # Execute: Ctrl-C reaches every process of the group
        os.killpg(launcher.pid, signal.SIGINT)
        try:
            _, err = launcher.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the launcher ignored Ctrl-C: {signal_state(launcher.pid)}") from None
        left = wait_gone(everyone, 10.0)
    finally:
        _kill_all(everyone)
        launcher.kill()
    # Assert
    assert launcher.returncode == 130 and left == []
    assert "Traceback" not in err, err[-3000:]
    stopped = [line for line in err.splitlines() if line.startswith("farsync: worker")]
    assert sorted(stopped) == sorted(
        f"farsync: worker {rank} (pid {pid}) stopped" for rank, pid in _ranks(workers)
    )
    assert err.splitlines()[-1] == "farsync: interrupted"


def _ranks(workers: list[int]) -> list[tuple[int, int]]:
    """Worker processes are started in rank order, so their pids increase with the rank."""
    return list(enumerate(sorted(workers)))


def test_elastic_workers_die_with_a_killed_launcher(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "run"
    launcher = farsync_process(["train", "--elastic", "--no-progress", "--out", str(out), *sets(LONG)])
    everyone: list[int] = []
    try:
        wait_for_workers(launcher, 2, out / "metrics.worker0.jsonl", START_S)
        everyone = children(launcher.pid)
        # Execute
        launcher.kill()
        launcher.wait(30)
        left = wait_gone(everyone, 10.0)
    finally:
        _kill_all(everyone)
        launcher.communicate()
    # Assert
    assert everyone and left == []


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_elastic_worker_gives_up_on_an_unreachable_coordinator(capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    port = _free_port()
    begin = time.monotonic()
    # Execute: the client, then the command
    with pytest.raises(
        CoordinatorLost, match=r"unreachable for 1s \(elastic.coordinator_timeout_s\); giving up"
    ):
        CoordinatorClient(
            "127.0.0.1",
            port,
            token=None,
            slot=0,
            config_sha="x",
            num_slots=1,
            elastic={"coordinator_timeout_s": 1.0},
        )
    waited = time.monotonic() - begin
    overrides = [*TINY, "num_workers=1", "elastic.coordinator_timeout_s=1"]
    code, err = run_cli(capsys, "worker", "--coordinator", f"127.0.0.1:{port}", *sets(overrides))
    # Assert
    assert waited < 10
    assert (
        code == 5 and err[-1].startswith("farsync worker: coordinator 127.0.0.1") and "giving up" in err[-1]
    )
