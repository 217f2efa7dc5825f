"""Checkpoints at outer-round boundaries: atomic writes, checksums, falling back past a damaged one.

Layout under the run directory::

    checkpoints/round_000004/checkpoint.json        {"num_workers": 2, "round": 4}, written by worker 0
    checkpoints/round_000004/worker_0.pt            torch.save of the worker's whole state
    checkpoints/round_000004/worker_0.pt.sha256     hex digest of the file's bytes

Each file is written to a temporary name and renamed into place (atomic on POSIX), the digest last, so a
crash mid-write leaves either nothing or a complete pair. A checkpoint is usable only when every worker's
file is present and matches its digest; otherwise the loader says which file is damaged and falls back to
the previous round. The manifest records how many workers wrote the round, so a run resumed with another
worker count still knows which files make the checkpoint complete (see :mod:`farsync.train.reshard`);
rounds written before manifests existed count their ``worker_<k>.pt`` files from 0.

A write that fails (a full disk, a quota, a read-only directory) removes its temporary file and raises
:class:`CheckpointWriteError`, whose message is one line naming the directory and, for a full disk, the free
space and what the file needed; the launchers print that line and stop the run with exit code
:data:`EXIT_CHECKPOINT_WRITE`. The round is left incomplete, and a resume falls back past it.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "EXIT_CHECKPOINT_WRITE",
    "Checkpoint",
    "CheckpointError",
    "CheckpointWriteError",
    "find_checkpoint",
    "find_latest",
    "load_worker_state",
    "prune",
    "save_worker_state",
]

logger = logging.getLogger(__name__)

_ROUND_DIR = re.compile(r"round_(\d{6})$")
MANIFEST = "checkpoint.json"


EXIT_CHECKPOINT_WRITE = 6
"""Exit code of a run stopped because a checkpoint could not be written (``farsync train``)."""


class CheckpointError(RuntimeError):
    """No usable checkpoint, or a damaged file was asked for explicitly."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint file could not be written; its temporary file is gone. The message is one line."""


@dataclass(frozen=True)
class Checkpoint:
    """A complete, verified checkpoint: its round, its directory and how many workers wrote it."""

    round: int
    directory: Path
    num_workers: int


def _size(num_bytes: float) -> str:
    """``12 kB``, ``3.4 MB``: decimal units, two significant digits at most below 10."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if num_bytes < 999.5 or unit == "TB":
            return f"{num_bytes:.2g} {unit}" if num_bytes < 10 else f"{num_bytes:.0f} {unit}"
        num_bytes /= 1000
    raise AssertionError("unreachable")


def _write_failed(directory: Path, error: OSError, needed: int) -> CheckpointWriteError:
    """One line for a failed write into ``directory`` of a worker's file of ``needed`` bytes."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        existing = next((d for d in (directory, *directory.parents) if d.is_dir()), directory)
        try:
            free = f"{_size(shutil.disk_usage(existing).free)} free"
        except OSError:
            free = "free space unknown"
        what = "no space left" if error.errno == errno.ENOSPC else "disk quota exceeded"
        return CheckpointWriteError(f"checkpoint: {what} on {directory} ({free}, needs ~{_size(needed)})")
    where = error.filename if error.filename else directory
    return CheckpointWriteError(f"checkpoint: cannot write {where}: {error.strerror or error}")


def _atomic_write(path: Path, data: bytes) -> None:
    temp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        # A partial temporary file only takes space a full disk lacks; the round stays incomplete.
        temp.unlink(missing_ok=True)
        raise


def save_worker_state(
    root: Path, round_index: int, rank: int, state: dict[str, Any], *, num_workers: int | None = None
) -> Path:
    """Writes ``state`` for ``rank`` at ``round_index``; returns the file's path. Raises
    :class:`CheckpointWriteError` when a file cannot be written (module docstring).

    ``num_workers``: how many workers write this round; worker 0 records it in the round's manifest (before
    its own file, so a manifest never vouches for files that are not there yet).
    """
    directory = root / "checkpoints" / f"round_{round_index:06d}"
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    path = directory / f"worker_{rank}.pt"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if num_workers is not None and rank == 0:
            manifest = {"num_workers": num_workers, "round": round_index}
            _atomic_write(directory / MANIFEST, json.dumps(manifest).encode())
        _atomic_write(path, data)
        _atomic_write(path.with_name(path.name + ".sha256"), hashlib.sha256(data).hexdigest().encode())
    except OSError as error:
        raise _write_failed(directory, error, len(data)) from error
    return path


def _verify(path: Path) -> str | None:
    """None if ``path`` matches its digest, else what is wrong with it."""
    digest_path = path.with_name(path.name + ".sha256")
    if not path.is_file():
        return "missing"
    if not digest_path.is_file():
        return "its checksum file is missing"
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != digest_path.read_text().strip():
        return "checksum mismatch (corrupted or truncated)"
    return None


def _rounds(root: Path) -> list[tuple[int, Path]]:
    """Round directories under ``root/checkpoints``, newest first."""
    base = root / "checkpoints"
    if not base.is_dir():
        return []
    found = ((int(m.group(1)), d) for d in base.iterdir() if (m := _ROUND_DIR.match(d.name)))
    return sorted(found, reverse=True)


def _written_by(directory: Path) -> int:
    """How many workers wrote the round in ``directory`` (its manifest, else its files counted from 0)."""
    manifest = directory / MANIFEST
    if manifest.is_file():
        try:
            return int(json.loads(manifest.read_text())["num_workers"])
        except (ValueError, KeyError, TypeError):
            logger.warning("%s is unreadable; counting the worker files instead", manifest)
    count = 0
    while (directory / f"worker_{count}.pt").is_file() or (directory / f"worker_{count}.pt.sha256").is_file():
        count += 1
    return count


def _problems(directory: Path, num_workers: int) -> list[str]:
    if num_workers < 1:
        return [f"{directory}: no worker files"]
    return [
        f"{directory / f'worker_{rank}.pt'}: {problem}"
        for rank in range(num_workers)
        if (problem := _verify(directory / f"worker_{rank}.pt")) is not None
    ]


def _newest_usable(root: Path, count: Callable[[Path], int]) -> tuple[int, Path, int] | None:
    for round_index, directory in _rounds(root):
        num_workers = count(directory)
        problems = _problems(directory, num_workers)
        if not problems:
            return round_index, directory, num_workers
        logger.warning(
            "checkpoint of round %d refused (%s); falling back to an earlier one",
            round_index,
            "; ".join(problems),
        )
    return None


def find_checkpoint(root: Path) -> Checkpoint | None:
    """The newest round whose files, for as many workers as wrote it, all verify; damaged rounds are
    skipped with a warning naming the file and the problem."""
    found = _newest_usable(root, _written_by)
    return None if found is None else Checkpoint(*found)


def find_latest(root: Path, num_workers: int) -> tuple[int, Path] | None:
    """The newest round whose files for all ``num_workers`` workers verify; damaged rounds are skipped
    with a warning naming the file and the problem."""
    found = _newest_usable(root, lambda _: num_workers)
    return None if found is None else (found[0], found[1])


def load_worker_state(directory: Path, rank: int) -> dict[str, Any]:
    """Loads ``rank``'s state from a checkpoint directory, verifying its checksum first."""
    path = directory / f"worker_{rank}.pt"
    problem = _verify(path)
    if problem is not None:
        raise CheckpointError(f"{path}: {problem}")
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return state


def prune(root: Path, keep: int, *, current: int | None = None) -> None:
    """Deletes all but the newest ``keep`` round directories.

    ``current``: the round just written. Rounds after it are left out of the count and left in place: they
    are what a run resumed from an earlier checkpoint has not rewritten yet, and are no reason to delete the
    good checkpoints it started from.
    """
    rounds = [(index, d) for index, d in _rounds(root) if current is None or index <= current]
    for _, directory in rounds[keep:]:
        shutil.rmtree(directory, ignore_errors=True)
