"""Checkpoints: bitwise resume after an interruption, and damaged files refused with a fallback."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from farsync.config import ConfigError, RunConfig
from farsync.launch.local import launch
from farsync.train.checkpoint import CheckpointError, find_latest, load_worker_state, prune, save_worker_state

RUN = ["num_workers=2", "train.num_steps=8", "algorithm.num_inner_steps=2", "train.eval_every=100"]
"""2 workers, 4 rounds of H=2, a checkpoint every round, all kept."""


def _flip_byte(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _two_rounds(root: Path) -> None:
    for round_index in (1, 2):
        for rank in (0, 1):
            save_worker_state(root, round_index, rank, {"round": round_index, "w": torch.arange(50.0) * rank})


# -------------------------------------------------------------------------------------- file level


def test_saved_state_loads_back_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    # Prepare
    state = {"step": 4, "weights": torch.randn(3, 3)}
    # Execute
    path = save_worker_state(tmp_path, 4, 1, state)
    loaded = load_worker_state(path.parent, 1)
    # Assert
    assert loaded["step"] == 4 and torch.equal(loaded["weights"], state["weights"])
    assert sorted(p.name for p in path.parent.iterdir()) == ["worker_1.pt", "worker_1.pt.sha256"]
    assert find_latest(tmp_path, 2) is None  # worker 0's file is missing: not a usable checkpoint


@pytest.mark.parametrize("damage", [_flip_byte, _truncate], ids=["corrupted", "truncated"])
def test_find_latest_skips_a_damaged_round_with_a_warning_naming_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: Callable[[Path], None]
) -> None:
    # Prepare
    _two_rounds(tmp_path)
    damaged = tmp_path / "checkpoints" / "round_000002" / "worker_1.pt"
    damage(damaged)
    # Execute
    with caplog.at_level(logging.WARNING, logger="farsync.train.checkpoint"):
        found = find_latest(tmp_path, 2)
    # Assert
    assert found == (1, tmp_path / "checkpoints" / "round_000001")
    assert any(str(damaged) in r.getMessage() and "round 2" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("damage", [_flip_byte, _truncate], ids=["corrupted", "truncated"])
def test_load_worker_state_refuses_a_damaged_file_naming_it(
    tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    # Prepare
    _two_rounds(tmp_path)
    directory = tmp_path / "checkpoints" / "round_000002"
    damage(directory / "worker_0.pt")
    # Execute
    with pytest.raises(CheckpointError) as caught:
        load_worker_state(directory, 0)
    # Assert
    assert str(directory / "worker_0.pt") in str(caught.value)
    assert "checksum mismatch" in str(caught.value)
    assert load_worker_state(directory, 1)["round"] == 2  # the undamaged worker still loads


def test_a_missing_checksum_file_is_refused(tmp_path: Path) -> None:
    # Prepare
    _two_rounds(tmp_path)
    directory = tmp_path / "checkpoints" / "round_000002"
    (directory / "worker_0.pt.sha256").unlink()
    # Execute / Assert
    with pytest.raises(CheckpointError, match="checksum file is missing"):
        load_worker_state(directory, 0)
    assert find_latest(tmp_path, 2) == (1, tmp_path / "checkpoints" / "round_000001")


def test_prune_keeps_the_newest_rounds(tmp_path: Path) -> None:
    # Prepare
    for round_index in range(1, 6):
        save_worker_state(tmp_path, round_index, 0, {"round": round_index})
    # Execute
    prune(tmp_path, keep=2)
    # Assert
    assert sorted(d.name for d in (tmp_path / "checkpoints").iterdir()) == ["round_000004", "round_000005"]


# ---------------------------------------------------------------------------------------- run level


@pytest.fixture(scope="module")
def uninterrupted(
    tmp_path_factory: pytest.TempPathFactory, tiny_config: Callable[..., RunConfig]
) -> tuple[Path, dict[str, object]]:
    """One full run (2 workers, 8 steps, a checkpoint every round) to compare resumed runs with."""
    config = tiny_config(*RUN, "checkpoint.every_rounds=1", "checkpoint.keep=10")
    out = tmp_path_factory.mktemp("full") / "run"
    return out, launch(config, out, mode="threads", progress=False)


def _resume_from(source: Path, target: Path, rounds: list[int], config: RunConfig) -> dict[str, object]:
    for round_index in rounds:
        name = f"round_{round_index:06d}"
        shutil.copytree(source / "checkpoints" / name, target / "checkpoints" / name)
    return launch(config, target, mode="threads", progress=False, resume=True)


def _resume_records(run_dir: Path) -> list[dict[str, object]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "resume"]


def test_resume_from_a_middle_round_ends_bitwise_equal_to_the_uninterrupted_run(
    uninterrupted: tuple[Path, dict[str, object]], tmp_path: Path, tiny_config: Callable[..., RunConfig]
) -> None:
    # Prepare: the interrupted run kept only what existed after round 2 of 4
    full_dir, full = uninterrupted
    config = tiny_config(*RUN, "checkpoint.every_rounds=1", "checkpoint.keep=10")
    # Execute
    resumed = _resume_from(full_dir, tmp_path / "run", [1, 2], config)
    # Assert
    assert len(set(full["global_params_sha256"])) == 1  # type: ignore[arg-type]
    assert resumed["global_params_sha256"] == full["global_params_sha256"]
    assert (resumed["num_steps"], resumed["num_rounds"]) == (8, 4)
    assert resumed["bytes_sent_per_worker"] == full["bytes_sent_per_worker"]  # the ledger was restored
    assert {(r["worker"], r["round"], r["step"]) for r in _resume_records(tmp_path / "run")} == {
        (0, 2, 4),
        (1, 2, 4),
    }


def test_resume_falls_back_past_a_corrupted_newest_checkpoint_and_still_matches(
    uninterrupted: tuple[Path, dict[str, object]],
    tmp_path: Path,
    tiny_config: Callable[..., RunConfig],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Prepare: rounds 2 and 3 on disk, round 3 damaged
    full_dir, full = uninterrupted
    config = tiny_config(*RUN, "checkpoint.every_rounds=1", "checkpoint.keep=10")
    target = tmp_path / "run"
    shutil.copytree(full_dir / "checkpoints" / "round_000003", target / "checkpoints" / "round_000003")
    _flip_byte(target / "checkpoints" / "round_000003" / "worker_0.pt", offset=500)
    # Execute
    with caplog.at_level(logging.WARNING, logger="farsync.train.checkpoint"):
        resumed = _resume_from(full_dir, target, [2], config)
    # Assert
    assert resumed["global_params_sha256"] == full["global_params_sha256"]
    assert {r["round"] for r in _resume_records(target)} == {2}
    assert any("round_000003" in r.getMessage() and "worker_0.pt" in r.getMessage() for r in caplog.records)


def test_resume_without_any_checkpoint_is_refused_before_anything_is_written(
    tmp_path: Path, tiny_config: Callable[..., RunConfig]
) -> None:
    # Prepare
    config = tiny_config(*RUN, "checkpoint.every_rounds=0")
    # Execute
    with pytest.raises(ConfigError, match="no usable checkpoint") as refused:
        launch(config, tmp_path / "run", mode="threads", progress=False, resume=True)
    # Assert: a resume that has nothing to resume from is an error, not a silent new run
    assert refused.value.key == "--resume"
    assert not (tmp_path / "run").exists()
