"""Checkpoints at outer-round boundaries: atomic writes, checksums, falling back past a damaged one.

Layout under the run directory::

    checkpoints/round_000004/worker_0.pt         torch.save of the worker's whole state
    checkpoints/round_000004/worker_0.pt.sha256  hex digest of the file's bytes

Each file is written to a temporary name and renamed into place (atomic on POSIX), the digest last, so a
crash mid-write leaves either nothing or a complete pair. A checkpoint is usable only when every worker's
file is present and matches its digest; otherwise the loader says which file is damaged and falls back to
the previous round.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "find_latest", "load_worker_state", "prune", "save_worker_state"]

logger = logging.getLogger(__name__)

_ROUND_DIR = re.compile(r"round_(\d{6})$")


class CheckpointError(RuntimeError):
    """No usable checkpoint, or a damaged file was asked for explicitly."""


def _atomic_write(path: Path, data: bytes) -> None:
    temp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(temp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def save_worker_state(root: Path, round_index: int, rank: int, state: dict[str, Any]) -> Path:
    """Writes ``state`` for ``rank`` at ``round_index``; returns the file's path."""
    directory = root / "checkpoints" / f"round_{round_index:06d}"
    directory.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    path = directory / f"worker_{rank}.pt"
    _atomic_write(path, data)
    _atomic_write(path.with_name(path.name + ".sha256"), hashlib.sha256(data).hexdigest().encode())
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


def find_latest(root: Path, num_workers: int) -> tuple[int, Path] | None:
    """The newest round whose files for all ``num_workers`` workers verify; damaged rounds are skipped
    with a warning naming the file and the problem."""
    base = root / "checkpoints"
    if not base.is_dir():
        return None
    rounds = sorted(
        ((int(m.group(1)), d) for d in base.iterdir() if (m := _ROUND_DIR.match(d.name))), reverse=True
    )
    for round_index, directory in rounds:
        problems = [
            f"{directory / f'worker_{rank}.pt'}: {problem}"
            for rank in range(num_workers)
            if (problem := _verify(directory / f"worker_{rank}.pt")) is not None
        ]
        if not problems:
            return round_index, directory
        logger.warning(
            "checkpoint of round %d refused (%s); falling back to an earlier one",
            round_index,
            "; ".join(problems),
        )
    return None


def load_worker_state(directory: Path, rank: int) -> dict[str, Any]:
    """Loads ``rank``'s state from a checkpoint directory, verifying its checksum first."""
    path = directory / f"worker_{rank}.pt"
    problem = _verify(path)
    if problem is not None:
        raise CheckpointError(f"{path}: {problem}")
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return state


def prune(root: Path, keep: int) -> None:
    """Deletes all but the newest ``keep`` round directories."""
    base = root / "checkpoints"
    if not base.is_dir():
        return
    rounds = sorted(d for d in base.iterdir() if _ROUND_DIR.match(d.name))
    for directory in rounds[:-keep]:
        shutil.rmtree(directory, ignore_errors=True)
