"""A run directory is written only by its own run: refused --out, --overwrite, failed --resume untouched."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from safety_runs_helpers import TINY, make_run, run_cli, sets, snapshot

from farsync.config import load_config
from farsync.launch.local import launch


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-worker run with checkpoints after rounds 1 and 2 (copied by tests that change it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    make_run(out)
    return out


def test_out_onto_an_earlier_run_is_refused_naming_resume_and_overwrite(
    finished: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    before = snapshot(finished)
    # Execute
    code, err = run_cli(capsys, "train", "--no-progress", "--out", str(finished), *sets(TINY))
    # Assert
    assert code == 2
    assert len(err) == 1 and "--out" in err[0] and "--resume" in err[0] and "--overwrite" in err[0]
    assert snapshot(finished) == before


def test_out_into_a_project_folder_is_refused_even_with_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a folder holding the user's own config.toml, used as "--out ."
    (tmp_path / "config.toml").write_text("num_workers = 2\n")
    (tmp_path / "notes.md").write_text("mine\n")
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    # Execute
    refused = run_cli(capsys, "train", "--no-progress", "--out", ".", *sets(TINY))
    overwrite = run_cli(capsys, "train", "--no-progress", "--out", ".", "--overwrite", *sets(TINY))
    other = tmp_path.parent / f"{tmp_path.name}-other"
    other.mkdir()
    (other / "config.toml").write_text("num_workers = 2\n")
    not_a_run = run_cli(capsys, "train", "--no-progress", "--out", str(other), "--overwrite", *sets(TINY))
    # Assert
    for code, err in (refused, overwrite, not_a_run):
        assert code == 2 and len(err) == 1, err
    assert "--overwrite" in overwrite[1][0] and "current directory" in overwrite[1][0]
    assert "not a farsync run directory" in not_a_run[1][0]
    assert snapshot(tmp_path) == before
    assert sorted(p.name for p in other.iterdir()) == ["config.toml"]


def test_overwrite_clears_an_earlier_run_before_the_new_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a finished 20-step run with a checkpoint after round 4
    out = tmp_path / "run"
    make_run(out, "train.num_steps=20")
    assert (out / "checkpoints" / "round_000004").is_dir()
    # Execute: a 4-step run with one worker process over it
    overrides = [*TINY, "num_workers=1", "train.num_steps=4", "algorithm.num_inner_steps=2"]
    code, err = run_cli(capsys, "train", "--no-progress", "--out", str(out), "--overwrite", *sets(overrides))
    # Assert: nothing of the earlier run is left
    assert code == 0, err
    assert not (out / "checkpoints" / "round_000004").exists()
    assert tomllib.loads((out / "config.toml").read_text())["train"]["num_steps"] == 4
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["round_000002"]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["model.width=64"], "model.width"),
        (["algorithm.name=ddp"], "algorithm.name"),
        (["aggregation.rule=median"], "aggregation.rule"),
    ],
)
def test_a_resume_the_checkpoint_cannot_take_leaves_the_run_untouched(
    finished: Path, capsys: pytest.CaptureFixture[str], overrides: list[str], key: str
) -> None:
    # Prepare
    before = snapshot(finished)
    # Execute: the failing resume, then a plain one
    code, err = run_cli(capsys, "train", "--no-progress", "--resume", str(finished), *sets(overrides))
    # Assert
    assert code == 2 and len(err) == 1 and key in err[0] and "--resume" in err[0], err
    assert snapshot(finished) == before  # config.toml, metrics and checkpoints byte for byte


def test_resume_keeps_the_previous_config_beside_the_new_one(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "run"
    make_run(out)
    previous = (out / "config.toml").read_text()
    # Execute: continue for 5 more steps (workers as threads: the launcher's files are the point)
    config = load_config(out / "config.toml", ["train.num_steps=15"])
    summary = launch(config, out, resume=True, mode="threads", progress=False)
    # Assert
    assert summary["num_steps"] == 15
    assert (out / "config.previous.toml").read_text() == previous
    assert tomllib.loads((out / "config.toml").read_text())["train"]["num_steps"] == 15


def test_resume_without_a_checkpoint_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: a finished run that wrote no checkpoint
    out = tmp_path / "run"
    make_run(out, "checkpoint.every_rounds=0")
    before = snapshot(out)
    # Execute
    code, err = run_cli(capsys, "train", "--no-progress", "--resume", str(out))
    # Assert
    assert code == 2 and len(err) == 1 and "no usable checkpoint" in err[0], err
    assert snapshot(out) == before


def test_resume_refuses_out_and_overwrite(finished: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for extra in (["--out", "elsewhere"], ["--overwrite"]):
        code, err = run_cli(capsys, "train", "--resume", str(finished), *extra)
        assert code == 2 and len(err) == 1 and extra[0] in err[0], err
