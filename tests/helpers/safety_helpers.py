"""Shared bits of the safety-net tests: a tiny GPT run built from config, and reading its metrics back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tiny_runs import TINY_GPT

from farsync.config import RunConfig, load_config
from farsync.launch.local import launch

TINY = [
    *TINY_GPT,
    "train.eval_every=1000",
    "network.emulation=virtual",
    "checkpoint.every_rounds=0",
    "num_workers=2",
]
"""A one-block, 32-wide GPT on 200 kB of the embedded corpus, 2 workers: a run takes about a second."""


def tiny_config(*overrides: str) -> RunConfig:
    """The tiny GPT run with extra ``--set`` overrides (later ones win)."""
    return load_config(None, [*TINY, *overrides])


def run(out_dir: Path, *overrides: str, resume: bool = False) -> dict[str, Any]:
    """Launches the tiny run with ``overrides`` as threads; returns its summary."""
    return launch(tiny_config(*overrides), out_dir, mode="threads", progress=False, resume=resume)


def records(run_dir: Path, kind: str, worker: int | None = 0) -> list[dict[str, Any]]:
    """The run's ``metrics.jsonl`` records of ``kind`` (of one worker unless ``worker`` is None)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    found = [r for r in map(json.loads, lines) if r.get("kind") == kind]
    return [r for r in found if worker is None or r.get("worker") == worker]
