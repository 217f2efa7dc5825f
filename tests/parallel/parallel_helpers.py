"""Shared settings for the pipelined-run tests: a tiny GPT and few steps, so each run takes seconds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TINY = [
    "model.num_layers=2",
    "model.width=32",
    "model.num_heads=2",
    "model.context_length=16",
    "train.batch_size=4",
    "train.num_steps=6",
    "train.warmup_steps=2",
    "train.eval_every=3",
    "train.num_eval_batches=2",
    "algorithm.name=diloco",
    "algorithm.num_inner_steps=3",
    "data.max_bytes=200000",
    "network.emulation=virtual",
    "checkpoint.every_rounds=0",
    "seed=3",
]
"""2 outer rounds of H = 3 inner steps on a 2-layer, width-32 GPT with batch 4 and context 16."""


def pipelined(
    num_replicas: int = 2, num_stages: int = 2, num_microbatches: int = 2, schedule: str = "1f1b"
) -> list[str]:
    return [
        f"num_workers={num_replicas * num_stages}",
        f"parallel.num_stages={num_stages}",
        f"parallel.num_microbatches={num_microbatches}",
        f"parallel.schedule={schedule}",
    ]


def records(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def losses(run_dir: Path, worker: int) -> list[float]:
    """Worker ``worker``'s training losses in step order."""
    steps = sorted((r for r in records(run_dir, "step") if r["worker"] == worker), key=lambda r: r["step"])
    return [r["loss"] for r in steps]
