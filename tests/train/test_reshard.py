"""Resuming with another number of workers reshards: the global state continues, per-worker state resets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safety_runs_helpers import make_run, records, run_cli, snapshot

from farsync.algorithms.base import params_sha256
from farsync.config import load_config
from farsync.launch.local import launch
from farsync.launch.preflight import check_resume
from farsync.train.checkpoint import find_checkpoint, load_worker_state
from farsync.train.loop import TrainingLoop
from farsync.train.reshard import resume_state
from farsync.train.task import build_model


@pytest.mark.parametrize("algorithm", ["diloco", "ddp"])
def test_two_to_three_workers_continue_from_the_checkpoints_global_weights(
    tmp_path: Path, algorithm: str
) -> None:
    # Prepare: a 2-worker run with checkpoints after rounds 1 and 2
    out = tmp_path / "run"
    make_run(out, f"algorithm.name={algorithm}", *(["train.report_every=5"] if algorithm == "ddp" else []))
    checkpoint = find_checkpoint(out)
    assert checkpoint is not None and (checkpoint.round, checkpoint.num_workers) == (2, 2)
    source = load_worker_state(checkpoint.directory, 0)
    if algorithm == "diloco":
        expected = params_sha256(list(source["algorithm"]["outer"]["params"].values()))
    else:  # DDP's global weights are the model's parameters
        names = [name for name, _ in build_model(load_config(out / "config.toml").model).named_parameters()]
        expected = params_sha256([source["model"][name] for name in names])
    old_files = snapshot(out / "checkpoints")
    # Execute: resume with 3 workers for one more round
    config = load_config(out / "config.toml", ["num_workers=3", "train.num_steps=15"])
    plan = check_resume(config, out)
    summary = launch(config, out, resume=True, mode="threads", progress=False)
    # Assert: every new worker starts its first round from the checkpoint's global weights
    resumes = [r for r in records(out) if r["kind"] == "resume"]
    assert plan.resharded and (plan.round, plan.checkpoint_workers, plan.num_workers) == (2, 2, 3)
    assert sorted(r["worker"] for r in resumes) == [0, 1, 2]
    assert {r["global_sha256"] for r in resumes} == {expected}
    assert all(r["resharded_from"] == 2 and r["step"] == 10 and r["round"] == 2 for r in resumes)
    assert ("inner optimizer moments" in resumes[0]["reset"]) == (algorithm == "diloco")
    assert "data positions and random state" in resumes[0]["reset"]
    # ... and the run goes on with three workers that agree, the old checkpoints still there
    assert summary["num_workers"] == 3 and summary["num_steps"] == 15
    assert len(set(summary["global_params_sha256"])) == 1
    assert {k: v for k, v in snapshot(out / "checkpoints").items() if k in old_files} == old_files
    newest = find_checkpoint(out)
    assert newest is not None and (newest.round, newest.num_workers) == (3, 3)


def test_a_resharded_worker_starts_without_inner_moments(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "run"
    make_run(out)
    config = load_config(out / "config.toml", ["num_workers=3", "train.num_steps=15"])
    # Execute: the state worker 2 loads
    fresh_state = {
        "algorithm": {"reducer": {}},
        "optimizer": {"state": {}, "param_groups": []},
        "batches": "fresh-batches",
        "rng": "fresh-rng",
    }
    resumed = resume_state(out, rank=2, world_size=3, config=config, fresh=lambda: dict(fresh_state))
    source = load_worker_state(out / "checkpoints" / "round_000002", 0)
    # Assert
    state = resumed.state
    assert (
        state["optimizer"]["state"] == {}
        and state["optimizer"]["param_groups"] == source["optimizer"]["param_groups"]
    )
    assert (state["batches"], state["rng"]) == ("fresh-batches", "fresh-rng")
    assert state["step"] == 10 and state["algorithm"]["round"] == 2
    outer, saved = state["algorithm"]["outer"]["params"], source["algorithm"]["outer"]["params"]
    assert all(torch.equal(outer[name], saved[name]) for name in saved)


def test_a_resharded_run_starts_every_worker_without_error_feedback_residuals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a 2-worker int8 run with error feedback, whose checkpoint holds worker 0's residuals
    out = tmp_path / "run"
    make_run(out, "compression.kind=int8", "compression.error_feedback=true")
    checkpoint = find_checkpoint(out)
    assert checkpoint is not None
    saved = load_worker_state(checkpoint.directory, 0)["algorithm"]["reducer"]["residuals"]
    assert saved and any(bool(residual.abs().sum() > 0) for residual in saved.values())
    loaded: dict[int, dict[str, Any]] = {}
    resume = TrainingLoop.maybe_resume

    def resume_and_look(loop: TrainingLoop) -> None:
        resume(loop)
        loaded[loop.ctx.rank] = loop.algorithm.reducer.state_dict()

    monkeypatch.setattr(TrainingLoop, "maybe_resume", resume_and_look)
    # Execute: resume with 3 workers for one more round
    config = load_config(out / "config.toml", ["num_workers=3", "train.num_steps=15"])
    launch(config, out, resume=True, mode="threads", progress=False)
    # Assert: every worker's reducer starts as built (no residuals), and the resume record says so
    assert sorted(loaded) == [0, 1, 2]
    assert all(state == {"residuals": {}} for state in loaded.values()), {
        r: list(s["residuals"]) for r, s in loaded.items()
    }
    resumes = [r for r in records(out) if r["kind"] == "resume"]
    assert len(resumes) == 3
    assert all("error-feedback residuals and low-rank warm starts" in r["reset"] for r in resumes)


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        (["algorithm.name=gossip"], "one model per worker"),
        (["algorithm.delay=1"], "previous pseudo-gradient"),
    ],
)
def test_algorithms_with_per_worker_state_refuse_to_reshard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], overrides: list[str], why: str
) -> None:
    # Prepare
    out = tmp_path / "run"
    make_run(out, *overrides, *(["train.report_every=5"] if "gossip" in overrides[0] else []))
    before = snapshot(out)
    # Execute
    code, err = run_cli(capsys, "train", "--no-progress", "--resume", str(out), "--set", "num_workers=3")
    # Assert
    assert code == 2 and len(err) == 1, err
    assert "num_workers = 3" in err[0] and why in err[0] and "num_workers = 2" in err[0]
    assert snapshot(out) == before
