"""The swarm benchmark end to end at ``FARSYNC_BENCH_SMOKE=1`` size (its numbers mean nothing): every leg
runs, the tables and the targets are written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from farsync.bench import rl_swarm
from farsync.bench.common import SMOKE_ENV


def test_bench_rl_swarm_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SMOKE_ENV, "1")
    result = rl_swarm.run(tmp_path, quick=True)
    assert [row["leg"] for row in result["rows"]] == list(rl_swarm.LEGS)  # smoke size runs every leg
    assert json.loads((tmp_path / "rl_swarm.json").read_text())["targets"] == result["targets"]
    markdown = (tmp_path / "rl_swarm.md").read_text()
    assert "Sharing: 4 local / 4 shared" in markdown and "With the defence" in markdown
    rows = {row["leg"]: row for row in result["rows"]}
    assert rows["local"]["bytes_total"] == 0 < rows["swarm"]["bytes_total"]
    # The sharing legs have their own warm-start when their settings differ from the attack legs'.
    assert [w["legs"] for w in result["warm_starts"]] == ["attack", "sharing"]
    assert rows["local"]["warm_pass"] == rows["swarm"]["warm_pass"] == 0.05 != rows["poisoned"]["warm_pass"]
    assert rows["defended"]["checked"] > 0 and rows["poisoned"]["dropped_total"] == 0


def test_attack_legs_run_at_the_attack_plan_and_sharing_legs_at_their_own() -> None:
    plan = {**rl_swarm.FULL, "lr": 3e-4, "num_rounds": 60, "attack": {"lr": 4e-4, "num_rounds": 100}}
    swarm = rl_swarm.leg_settings(plan, "swarm", seed=2)
    assert (swarm.lr, swarm.num_rounds, swarm.malicious_fraction, swarm.seed) == (3e-4, 60, 0.0, 2)
    clean = rl_swarm.leg_settings(plan, "clean", seed=0)
    assert (clean.lr, clean.num_rounds, clean.malicious_fraction, clean.defences) == (4e-4, 100, 0.0, [])
    poisoned = rl_swarm.leg_settings(plan, "poisoned", seed=0)
    assert (poisoned.lr, poisoned.num_rounds, poisoned.attack) == (4e-4, 100, "out_of_context_untied")
    assert round(poisoned.malicious_fraction * poisoned.num_nodes) == 3
    assert rl_swarm.leg_settings(plan, "poisoned_paper", seed=0).attack == "out_of_context"
    assert rl_swarm.leg_settings(plan, "defended", seed=0).defences == ["reward_check", "logprob_filter"]
    assert rl_swarm.leg_settings(plan, "judged", seed=0).defences == ["reward_check", "judge"]
    assert rl_swarm.leg_settings(plan, "malformed", seed=0).num_rounds == 5  # the leg's own setting wins
    assert rl_swarm.leg_settings(plan, "poisoned", 0, extra={"lr": 1e-3}).lr == 1e-3
    assert rl_swarm.leg_settings(plan, "poisoned", 0, extra={"attack": "in_context"}).attack == "in_context"
    assert set(rl_swarm.SHARING_LEGS) | set(rl_swarm.ATTACK_LEGS) == set(rl_swarm.LEGS)


def _row(leg: str, **values: float) -> dict[str, object]:
    base = {
        "leg": leg,
        "cumulative_reward": 1.0,
        "pass_at_1": 0.3,
        "answer_pass_at_1": 0.3,
        "trigger_rate": 0.0,
    }
    return {**base, **values}


def test_targets_take_the_defence_cost_against_the_attack_plans_clean_leg() -> None:
    rows = [
        _row("local", cumulative_reward=10.0),
        _row("swarm", cumulative_reward=11.0, pass_at_1=0.9),  # other plan: not the reference
        *(_row("clean", pass_at_1=p) for p in (0.30, 0.40, 0.20)),
        *(_row("clean_defended", pass_at_1=p) for p in (0.25, 0.36, 0.10)),
        *(_row("poisoned", trigger_rate=t) for t in (0.9, 0.6, 0.1)),
        *(_row("defended", trigger_rate=t) for t in (0.0, 0.01, 0.5)),
        _row("judged", trigger_rate=0.0),
    ]
    targets = rl_swarm._targets(rows)
    assert targets["sharing_gain_percent"] == pytest.approx(10.0)
    assert targets["defence_cost_points"] == pytest.approx(100 * (0.30 - 0.25))  # median 0.30 vs median 0.25
    assert targets["poisoned_trigger_rate"] == 0.6 and targets["defended_trigger_rate"] == 0.01
    assert targets["judged_trigger_rate"] == 0.0
    assert "wire_attacks_survived" not in targets


def test_targets_judge_the_wire_legs_on_rounds_rejections_and_bans() -> None:
    good = _row("malformed") | {"rounds": 5, "rounds_trained_min": 5, "rejected_total": 12}
    good |= {"honest_banning_all_attackers": 5, "num_honest": 5}
    assert rl_swarm._targets([good])["wire_attacks_survived"] is True
    for key, value in [("rounds_trained_min", 4), ("rejected_total", 0), ("honest_banning_all_attackers", 4)]:
        assert (
            rl_swarm._targets([good, {**good, "leg": "oversized", key: value}])["wire_attacks_survived"]
            is False
        )
