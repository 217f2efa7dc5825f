"""Helpers for the Hugging Face run tests: reading a run directory's records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def worker_losses(run_dir: Path, worker: int = 0) -> list[float]:
    """Worker ``worker``'s inner-step losses, in step order."""
    steps = [r for r in read_records(run_dir) if r["kind"] == "step" and r["worker"] == worker]
    return [float(r["loss"]) for r in sorted(steps, key=lambda r: r["step"])]
