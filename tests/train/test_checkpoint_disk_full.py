"""A full disk during a checkpoint: one line naming the directory, the free space and the need; no temporary
files left; the run stops with exit code 6 (threads and real worker processes)."""

from __future__ import annotations

import errno
import io
import os
import shutil
from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest
import torch
from safety_runs_helpers import CHECKPOINTED, sets

from farsync import cli
from farsync.config import load_config
from farsync.launch.local import launch
from farsync.train.checkpoint import (
    EXIT_CHECKPOINT_WRITE,
    CheckpointWriteError,
    find_checkpoint,
    save_worker_state,
)

_Usage = namedtuple("_Usage", "total used free")

_FULL_DISK_HOOK = """
import errno, os
_fsync = os.fsync
def _full(fd):
    if ".pt.tmp" in os.readlink(f"/proc/self/fd/{fd}"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return _fsync(fd)
os.fsync = _full
"""
"""``sitecustomize`` for spawned worker processes: their checkpoint files' fsync fails with ENOSPC."""


def _disk_full_on_checkpoint_files(monkeypatch: pytest.MonkeyPatch, free: int = 12_345) -> None:
    """In this process: a worker file's fsync fails with ENOSPC after its bytes were written (as a full disk
    does), and the disk reports ``free`` bytes."""
    fsync = os.fsync

    def full(fd: int) -> None:
        if ".pt.tmp" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: _Usage(10**9, 10**9 - free, free))


def _temporary_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if ".tmp" in path.name]


def test_a_full_disk_raises_one_line_and_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a 3.4 MB state
    state = {"weights": torch.zeros(850_000)}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    _disk_full_on_checkpoint_files(monkeypatch)
    # Execute
    with pytest.raises(CheckpointWriteError) as caught:
        save_worker_state(tmp_path, 3, 0, state, num_workers=2)
    # Assert
    directory = tmp_path / "checkpoints" / "round_000003"
    needed = len(buffer.getvalue())
    assert 3.35e6 < needed < 3.45e6
    assert str(caught.value) == f"checkpoint: no space left on {directory} (12 kB free, needs ~3.4 MB)"
    assert _temporary_files(tmp_path) == [] and not (directory / "worker_0.pt").exists()


def test_another_write_error_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "worker_0.pt.tmp1")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(CheckpointWriteError, match=r"^checkpoint: cannot write worker_0.pt.tmp1: Permission"):
        save_worker_state(tmp_path, 1, 0, {"step": 1})
    assert _temporary_files(tmp_path) == []


def test_a_threads_run_stops_with_the_disk_error_and_no_worker_error_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare
    out = tmp_path / "run"
    _disk_full_on_checkpoint_files(monkeypatch)
    # Execute: the first checkpoint (after round 1) fails on both workers
    with pytest.raises(CheckpointWriteError) as caught:
        launch(load_config(None, CHECKPOINTED), out, mode="threads", progress=False)
    # Assert
    message = str(caught.value)
    assert message.startswith(
        f"checkpoint: no space left on {out / 'checkpoints' / 'round_000001'} (12 kB free"
    )
    assert "\n" not in message and not [r for r in caplog.records if r.levelname == "ERROR"]
    assert _temporary_files(out) == [] and not (out / "summary.json").exists()
    assert find_checkpoint(out) is None  # the incomplete round is no checkpoint to resume from


def test_worker_processes_on_a_full_disk_print_one_line_and_exit_6(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the spawned workers' interpreters load a sitecustomize that fills the disk for them
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_FULL_DISK_HOOK)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])))
    out = tmp_path / "run"
    # Execute: farsync train, workers as processes
    code = cli.main(["train", "--no-progress", "--out", str(out), *sets(CHECKPOINTED)])
    # Assert: one line from the launcher, none from the workers (no tracebacks), no temporary files
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert code == EXIT_CHECKPOINT_WRITE, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"farsync: checkpoint: no space left on {out / 'checkpoints' / 'round_000001'} ("
    )
    assert "needs ~" in lines[0] and _temporary_files(out) == []
