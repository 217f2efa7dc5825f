"""End to end: a tiny RL run with thread workers writes its run directory, trains and resumes; a reward that
raises is scored 0 and the run goes on; an unknown setting is a one-line config error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from farsync.config import ConfigError, ModelConfig, RLConfig, RunConfig
from farsync.rl.proofs import Verdict
from farsync.rl.runner import run_rl


def _config(**rl: object) -> RunConfig:
    settings: dict[str, object] = {
        "num_sft_steps": 30,
        "num_steps": 4,
        "num_groups_per_step": 2,
        "group_size": 4,
        "num_heldout": 16,
        "eval_every": 2,
        "worker_backend": "thread",
        "rollout_timeout_s": 60.0,
        "num_rollout_workers": 2,
    }
    settings.update(rl)
    return RunConfig(
        seed=0,
        model=ModelConfig(num_layers=1, width=32, num_heads=2, context_length=16),
        rl=RLConfig(**settings),
    )


def test_tiny_async_run_writes_its_directory_and_resumes(tmp_path: Path) -> None:
    summary = run_rl(_config(mode="async", max_staleness=1, worker_slowdowns=[1.0, 2.0]), tmp_path)
    assert (tmp_path / "config.toml").is_file()
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "rl_step"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert summary["num_steps"] == 4
    intake = summary["intake"]
    assert intake["groups_used"] + intake["tied_groups"] == 4 * 2
    assert intake["rejected"] == {}
    assert set(summary["workers"]) == {"w0", "w1"}
    assert summary["sft"]["num_steps"] == 30
    assert {"before_sft", "after_sft", "rl_start", "step_2", "step_4"} <= set(summary["pass_at_1"])
    trained = [r for r in steps if not r.get("skipped")]
    assert all(0 <= r["mean_staleness"] <= 1 for r in trained)
    resumed = run_rl(_config(mode="async", max_staleness=1, num_steps=6), tmp_path, resume=True)
    assert resumed["num_steps"] == 6
    assert resumed["sft"]["num_steps"] == 30  # the warm-start is not repeated
    again = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in again if r["kind"] == "rl_step"] == [1, 2, 3, 4, 5, 6]


def _raising_reward(prompt: str, completion: str) -> float:
    if len(completion) % 2:
        raise RuntimeError("user bug")
    return float(len(completion) == 2)


def test_sync_run_with_a_reward_that_raises_goes_on(tmp_path: Path) -> None:
    summary = run_rl(_config(mode="sync", num_sft_steps=0, num_steps=2), tmp_path, reward=_raising_reward)
    assert summary["num_steps"] == 2
    assert summary["max_staleness"] == 0
    assert summary["intake"]["reward_errors"] > 0


def test_unknown_user_reward_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"rl.reward = 'nowhere_xyz:f': cannot import"):
        run_rl(_config(reward="nowhere_xyz:f"), tmp_path)


def test_model_too_short_for_the_task_is_a_config_error(tmp_path: Path) -> None:
    config = _config()
    config.model.context_length = 8
    with pytest.raises(ConfigError, match="model.context_length"):
        run_rl(config, tmp_path)


class LengthProver:
    """Test prover: the fingerprint is the completion's length (module-level, so it pickles)."""

    def prove(self, model: object, prompt_ids: tuple[int, ...], completion_ids: tuple[int, ...]) -> bytes:
        return bytes([len(completion_ids)])


class LengthVerifier:
    def __init__(self) -> None:
        self.checked = 0

    def verify(self, rollout: object, model: object) -> Verdict:
        from farsync.rl.messages import Rollout

        assert isinstance(rollout, Rollout)
        self.checked += 1
        return Verdict(rollout.fingerprint == bytes([len(rollout.completion_ids)]), "length proof")


def test_process_worker_gets_the_prover_and_the_trainer_verifies(tmp_path: Path) -> None:
    verifier = LengthVerifier()
    config = _config(
        mode="sync", num_sft_steps=0, num_steps=1, num_rollout_workers=1, worker_backend="process"
    )
    summary = run_rl(config, tmp_path, prover=LengthProver(), verifier=verifier)
    assert summary["num_steps"] == 1
    assert (
        verifier.checked == 2 * 4
    )  # every rollout of the step's 2 groups, each proven in the worker process
    assert summary["intake"]["rejected"] == {}
    assert (tmp_path / "workers" / "w0.json").is_file()


def test_a_closure_reward_cannot_go_to_process_workers(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must pickle"):
        run_rl(_config(num_sft_steps=0, worker_backend="process"), tmp_path, reward=lambda p, c: 0.0)


def _even_length(prompt: str, completion: str) -> float:
    return float(len(completion) % 2 == 0)


def test_offline_difficulty_filtering_keeps_problems_solved_sometimes(tmp_path: Path) -> None:
    config = _config(mode="sync", num_sft_steps=0, num_steps=1, num_difficulty_problems=6)
    summary = run_rl(config, tmp_path, reward=_even_length)
    difficulty = summary["difficulty"]
    assert difficulty["num_candidates"] == 6
    assert difficulty["num_kept"] + difficulty["num_always_solved"] + difficulty["num_never_solved"] == 6
    assert difficulty["num_kept"] >= 1
    assert summary["num_steps"] == 1


def test_a_hugging_face_policy_trains_too(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    config = _config(mode="sync", num_sft_steps=5, num_steps=1)
    config.model.kind = "hf"
    config.model.architecture = "llama"
    summary = run_rl(config, tmp_path)
    assert summary["num_steps"] == 1 and summary["intake"]["rejected"] == {}


def test_a_checkpoint_directory_is_refused_for_rl(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    config = _config()
    config.model.kind, config.model.hf_path = "hf", str(tmp_path / "ckpt")
    with pytest.raises(ConfigError, match="model.hf_path"):
        run_rl(config, tmp_path / "run")
