"""Checkpoints per stage: each rank saves its own stage, and a resumed pipelined run ends bitwise where an
uninterrupted one does."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from parallel_helpers import TINY, losses, pipelined

from farsync.config import load_config
from farsync.launch.local import launch
from farsync.train.checkpoint import find_latest, load_worker_state

CHECKPOINTED = [*TINY, *pipelined(), "checkpoint.every_rounds=1", "checkpoint.keep=5"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """An uninterrupted run writing a checkpoint after each of its 2 rounds."""
    out = tmp_path_factory.mktemp("full")
    config = load_config(None, CHECKPOINTED)
    return out, launch(config, out, progress=False, mode="threads")


def test_resume_from_a_stage_checkpoint_is_bitwise(
    full_run: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    # Prepare: a copy of the finished run without its last checkpoint (as if it crashed during round 2).
    full, reference = full_run
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(full, resumed_dir)
    shutil.rmtree(resumed_dir / "checkpoints" / "round_000002")
    (resumed_dir / "metrics.jsonl").unlink()

    # Execute: resume from round 1.
    resumed = launch(
        load_config(None, CHECKPOINTED), resumed_dir, progress=False, mode="threads", resume=True
    )

    # Assert: every stage of every replica ends on the same bits, after the same losses.
    assert resumed["global_params_sha256"] == reference["global_params_sha256"]
    assert resumed["final_eval_loss"] == reference["final_eval_loss"]
    for rank in range(4):
        assert losses(resumed_dir, rank) == losses(full, rank)[3:]


def test_each_rank_checkpoints_only_its_stage(full_run: tuple[Path, dict[str, Any]]) -> None:
    found = find_latest(full_run[0], 4)
    assert found is not None and found[0] == 2
    states = [load_worker_state(found[1], rank) for rank in range(4)]
    for rank, state in enumerate(states):
        names = set(state["model"])
        outer = set(state["algorithm"]["outer"]["params"])
        assert names == outer  # the outer (Nesterov) state covers exactly the stage's own layers
        if rank % 2 == 0:
            assert any(n.startswith("embed.") for n in names) and not any(
                n.startswith("head.") for n in names
            )
        else:
            assert any(n.startswith("head.") for n in names) and not any(
                n.startswith("embed.") for n in names
            )
        inner = state["optimizer"]["state"]
        assert len(inner) == len(names)  # AdamW moments for this stage's parameters only
    # The two replicas' copies of a stage agree on the global weights after the round.
    for stage in range(2):
        a, b = (
            states[stage]["algorithm"]["outer"]["params"],
            states[2 + stage]["algorithm"]["outer"]["params"],
        )
        assert all(torch.equal(a[name], b[name]) for name in a)
