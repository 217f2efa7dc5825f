"""Safety net (issue 10, item 8h): a run interrupted at a checkpoint and resumed ends bitwise equal to the
uninterrupted run, for the eager one-step overlap, Streaming DiLoCo and int8 with error feedback.

Each keeps state beyond DiLoCo's (the eager offset optimizer and the previous pseudo-gradient; fragment
syncs in flight at the round boundary; per-worker residuals), which a checkpoint must carry.

Broken on purpose to check these fail: the eager offset not restored; Streaming's syncs in flight dropped on
load; the ring reducer's residuals left out of its state.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from safety_helpers import records, run

CHECKPOINTS = ["checkpoint.every_rounds=1", "checkpoint.keep=10"]
CASES = {
    "eager": [
        "train.num_steps=8",
        "algorithm.num_inner_steps=2",
        "algorithm.delay=1",
        "algorithm.overlap=eager",
    ],
    "streaming": [
        "train.num_steps=16",
        "algorithm.num_inner_steps=4",
        "algorithm.name=streaming",
        "model.num_layers=2",
        "algorithm.num_fragments=2",
        "algorithm.streaming_tau=1",
    ],
    "int8_ef": [
        "train.num_steps=8",
        "algorithm.num_inner_steps=2",
        "compression.kind=int8",
        "compression.error_feedback=true",
    ],
}
"""4 rounds each; the interrupted run keeps the checkpoints of rounds 1 and 2."""


@pytest.mark.parametrize("case", list(CASES))
def test_resume_from_round_two_ends_bitwise_equal_to_the_uninterrupted_run(case: str, tmp_path: Path) -> None:
    overrides = [*CASES[case], *CHECKPOINTS]
    full = run(tmp_path / "full", *overrides)
    interrupted = tmp_path / "interrupted"
    for round_index in (1, 2):
        name = f"checkpoints/round_{round_index:06d}"
        shutil.copytree(tmp_path / "full" / name, interrupted / name)
    resumed = run(interrupted, *overrides, resume=True)
    assert [r["round"] for r in records(interrupted, "resume", worker=None)] == [2, 2]  # it did resume
    assert len(set(full["global_params_sha256"])) == 1  # type: ignore[arg-type]
    assert resumed["global_params_sha256"] == full["global_params_sha256"]
    assert resumed["num_rounds"] == full["num_rounds"] == 4
    assert resumed["bytes_sent_per_worker"] == full["bytes_sent_per_worker"]
