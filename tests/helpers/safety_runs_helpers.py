"""Shared bits of the run-safety tests: a tiny run with checkpoints, the CLI in-process, directory snapshots,
and finding a launcher's worker processes in /proc."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tiny_runs import TINY_GPT

from farsync import cli
from farsync.config import load_config
from farsync.launch.local import launch

TINY = [
    *TINY_GPT,
    "train.eval_every=1000",
    "network.emulation=off",
]
"""A one-block, 32-wide GPT on 200 kB of the embedded corpus: a step takes milliseconds."""

CHECKPOINTED = [
    *TINY,
    "num_workers=2",
    "train.num_steps=10",
    "algorithm.num_inner_steps=5",
    "checkpoint.every_rounds=1",
]
"""Two workers, two rounds of H = 5, a checkpoint after each."""


def sets(overrides: list[str]) -> list[str]:
    """``--set`` arguments for ``overrides``."""
    return [part for override in overrides for part in ("--set", override)]


def make_run(out: Path, *extra: str) -> dict[str, Any]:
    """A finished tiny run (workers as threads) with checkpoints after rounds 1 and 2; returns its summary."""
    return launch(load_config(None, [*CHECKPOINTED, *extra]), out, mode="threads", progress=False)


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` (relative path) -> SHA-256 of its bytes."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    """``farsync ARGV`` in this process: the exit code and the lines it wrote to stderr."""
    code = cli.main(list(argv))
    return code, capsys.readouterr().err.strip().splitlines()


def records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


# ---------------------------------------------------------------------------------------- processes


@contextlib.contextmanager
def _foreground_sigint() -> Iterator[None]:
    """While a child starts: SIGINT handled and unblocked here, so the child starts with SIGINT as a shell's
    foreground job has it (default action, deliverable). An ignored or blocked SIGINT is inherited across
    exec, and a Python child that starts with SIGINT ignored never turns Ctrl-C into KeyboardInterrupt;
    whatever an earlier test or library left in this process must not decide what a Ctrl-C test sees."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.signal(signal.SIGINT, previous)


def farsync_process(argv: list[str], **kwargs: Any) -> subprocess.Popen[str]:
    """``python -m farsync.cli ARGV`` as a child process, output captured, SIGINT as in a foreground job."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with _foreground_sigint():
        return subprocess.Popen(
            [sys.executable, "-m", "farsync.cli", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            **kwargs,
        )


def signal_state(pid: int) -> str:
    """The process's signal masks and state from /proc (for a failure message)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return "gone"
    return "; ".join(line for line in lines if line.startswith(("State", "SigBlk", "SigIgn", "SigCgt")))


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of ``pid`` from /proc, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[1] == pid and stat[0] != "Z":
                found.append(int(entry.name))
    return found


def alive(pids: list[int]) -> list[int]:
    """The processes of ``pids`` still running (a zombie waiting for its reaper has ended)."""
    return [pid for pid in pids if (stat := _stat(pid)) is not None and stat[0] != "Z"]


def wait_for_workers(
    process: subprocess.Popen[str], count: int, metrics: Path, timeout_s: float
) -> list[int]:
    """Waits until the launcher ``process`` has ``count`` worker processes and ``metrics`` shows a step."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-3000:]
        workers = [pid for pid in children(process.pid) if _is_worker(pid)]
        if len(workers) >= count and metrics.is_file() and '"step"' in metrics.read_text():
            return workers
        time.sleep(0.2)
    raise AssertionError(f"the run did not start within {timeout_s:g}s")


def _is_worker(pid: int) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"resource_tracker" not in command


def wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    """Waits up to ``timeout_s`` for ``pids`` to end; returns those still running."""
    deadline = time.monotonic() + timeout_s
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive(pids)
