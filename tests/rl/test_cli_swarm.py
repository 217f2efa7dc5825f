"""``farsync rl FILE`` with a ``[swarm]`` table: a tiny swarm end to end into its run directory, its progress
and result line, and the CLI's refusals (one line, exit 2, nothing written)."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from farsync.cli import main
from farsync.rl import swarm_run
from farsync.rl.swarm import SwarmSettings
from farsync.rl.swarm_run import _RoundLog

# 3 nodes, the last one malicious with a garbage payload; 1 local / 1 shared group per step; a node bans a
# sender after 2 rejected messages. Fresh weights of a tiny GPT, two supervised warm-start steps.
TINY_SWARM = """
[swarm]
num_nodes = 3
num_rounds = 2
num_local_groups = 1
num_shared_groups = 1
group_size = 2
max_new_tokens = 4
num_heldout = 8
malicious_fraction = 0.34
attack = "malformed"
attack_params = { kind = "garbage" }
max_strikes = 2
model_shape = { num_layers = 1, width = 16, num_heads = 2, context_length = 16 }

[warm_start]
num_steps = 2
batch_size = 4
"""


@pytest.fixture
def swarm_file(tmp_path: Path) -> Path:
    path = tmp_path / "swarm.toml"
    path.write_text(TINY_SWARM)
    return path


def test_tiny_swarm_writes_its_run_directory(
    tmp_path: Path, swarm_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["rl", str(swarm_file), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "2/2" in captured.err  # the progress bar went through both rounds
    summary = json.loads((out / "summary.json").read_text())
    # node2 shares its whole batch (I + J = 2 groups, SAPO's equal compute) as garbage: each honest node
    # rejects 2 messages in round 0 and bans node2 (max_strikes 2); round 1's are ignored unread.
    assert (summary["num_honest"], summary["num_malicious"]) == (2, 1)
    assert (summary["rejected_total"], summary["banned_total"]) == (4, 2)
    assert [row["banned"] for row in summary["nodes"][:2]] == [["node2"], ["node2"]]
    assert summary["warm_start"]["sft_steps"] == 2
    assert summary["bytes_total"] > 0
    lines = captured.out.strip().splitlines()
    assert lines[0].startswith("swarm of 3 nodes (1 malicious) on arithmetic, 2 rounds: per honest node ")
    assert "; 4 messages rejected, 2 bans, 0 groups dropped by defences, " in lines[0]
    assert lines[1] == f"outputs in {out}/ (summary.json, metrics.jsonl)"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == ["warm_start", "round", "round"]
    assert [(r["round"], r["num_trained"], r["rejected"], r["banned"]) for r in records[1:]] == [
        (0, 2, 4, 2),
        (1, 2, 4, 2),
    ]
    assert "[swarm.loss]" in (out / "config.toml").read_text()
    # The directory now holds a run: refused without --overwrite, cleared with it, never resumed.
    assert main(["rl", str(swarm_file), "--out", str(out), "--no-progress"]) == 2
    assert "directory is not empty" in capsys.readouterr().err
    (out / "swarm").mkdir()
    assert main(["rl", str(swarm_file), "--out", str(out), "--overwrite", "--no-progress"]) == 0
    assert not (out / "swarm").exists()  # an earlier run's files are gone
    capsys.readouterr()
    assert main(["rl", "--resume", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("a swarm run keeps no checkpoint; start a new run") and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("swarm.num_nodes=0", "farsync: config error: swarm.num_nodes = 0: must be >= 1"),
        ("swarm.defences=['wall']", "farsync: config error: swarm.defences = ['wall']: allowed items: "),
        (
            "model.width=8",
            "farsync: config error: model = {'width': 8}: a config with a [swarm] table runs a",
        ),
    ],
)
def test_bad_swarm_setting_is_one_line_and_exit_2(
    tmp_path: Path, swarm_file: Path, capsys: pytest.CaptureFixture[str], override: str, message: str
) -> None:
    assert main(["rl", str(swarm_file), "--set", override, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_set_alone_selects_the_swarm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # No file: --set swarm.* makes it a swarm run, whose missing model shape is refused by name.
    assert main(["rl", "--set", "swarm.num_nodes=2", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("farsync: config error: swarm.model_shape = {}: build_policy() missing")


def test_round_log_counts_only_honest_nodes_that_trained_this_round() -> None:
    def node(node_id: str, rewards: list[float], malicious: bool = False) -> SimpleNamespace:
        counters = SimpleNamespace(local_rewards=rewards, rejected=Counter(bad_json=1), banned={"x"})
        log = SimpleNamespace(dropped=Counter(logprob_filter=2))
        return SimpleNamespace(
            node_id=node_id, counters=counters, defence_log=log, attack=object() if malicious else None
        )

    metrics, bar = io.StringIO(), SimpleNamespace(update=lambda n: None, set_postfix=lambda **kw: None)
    log = _RoundLog(metrics, bar)
    a, b, late = node("a", [0.5]), node("b", [0.25]), node("late", [])
    log(0, [a, b, late, node("evil", [1.0], malicious=True)])  # type: ignore[list-item]
    a.counters.local_rewards.append(1.0)  # b did not train in round 1 (it left); late joined and trained
    late.counters.local_rewards.append(0.75)
    log(1, [a, b, late])  # type: ignore[list-item]
    first, second = (json.loads(line) for line in metrics.getvalue().splitlines())
    assert first == {
        "kind": "round",
        "round": 0,
        "num_trained": 2,
        "mean_local_reward": 0.375,
        "rejected": 4,
        "banned": 4,
        "dropped_by_defences": 8,
    }
    assert (second["num_trained"], second["mean_local_reward"], second["rejected"]) == (2, 0.875, 3)


@pytest.mark.parametrize(
    ("num_steps", "stop_at_pass", "validation_pass", "steps_taken", "num_checks"),
    [
        (60, 0.0, 0.0, 60, 1),  # no stop rule: every step in one go, checked once at the end
        (30, 1.0, 0.0, 30, 2),  # 25 then the last 5, the target never met
        (100, 0.5, 0.5, 25, 1),  # the target met at the first check
    ],
)
def test_warm_start_steps_and_early_stop(
    monkeypatch: pytest.MonkeyPatch,
    num_steps: int,
    stop_at_pass: float,
    validation_pass: float,
    steps_taken: int,
    num_checks: int,
) -> None:
    checks: list[int] = []
    monkeypatch.setattr(swarm_run, "pass_at_1", lambda *args, **kwargs: checks.append(1) or validation_pass)
    shape = {"num_layers": 1, "width": 8, "num_heads": 2, "context_length": 16}
    config = swarm_run.SwarmRunConfig(
        swarm=SwarmSettings(model_shape=shape),
        warm_start=swarm_run.WarmStartSettings(num_steps=num_steps, batch_size=2, stop_at_pass=stop_at_pass),
    )
    state, info = swarm_run._warm_start(config)
    assert state is not None and (info["sft_steps"], len(checks)) == (steps_taken, num_checks)
    assert info["validation_pass"] == validation_pass
    config.warm_start.num_steps = 0
    assert swarm_run._warm_start(config) == (None, {"sft_steps": 0})
