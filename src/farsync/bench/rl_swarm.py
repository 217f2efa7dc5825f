"""The swarm and attack sections of ``farsync bench rl``: SAPO's sharing gain, poisoning, and its defence.

For every seed: one supervised warm-start of a ~100k-parameter character GPT on 2-digit addition until greedy
pass@1 on a validation set (training-stream problems, never the held-out ones) reaches ``warm_pass``; every
node of every leg starts from those weights. The two sharing legs run on the plan's ``sharing`` settings
(their own warm-start, learning rate and rounds, chosen by the sweep in ``benchmarks/rl_swarm_sweep.py``, see
``benchmarks/results/rl_swarm_sweep.md``); the attack legs on the plan's own. Legs (8 nodes, one GRPO step
per honest node per round, 8 groups of 8 completions sampled, shared and trained on per node and step in
every leg):

* ``local``: 8 local / 0 shared groups (no exchange);
* ``swarm``: 4 local / 4 shared (SAPO), at equal compute as the paper defines it (Gensyn 2025, "Sharing is
  Caring", arXiv 2509.08721, controlled experiment: every configuration "I local / J external" generates
  the same rollouts per agent and trains on I + J; the J are drawn uniformly from the swarm's rollouts with
  non-zero advantage): each node samples and shares its 8 groups, and trains on 4 of them drawn at random
  plus 4 untied groups drawn from its peers' (:mod:`farsync.rl.swarm_node`);
* ``poisoned``: ``swarm`` with 2 of the 8 nodes malicious (out-of-context attack: the trigger " zz" after
  correct answers), no defence;
* ``defended``: ``poisoned`` with the reward check and the token log-probability filter;
* ``clean_defended``: ``swarm`` with those defences and no attack (the defence's cost in clean reward);
* full version only: ``judged`` (``poisoned`` with the reward check and the rule-based judge, the defence for
  swarms of different models), ``in_context`` (2 nodes share wrong answers claimed with reward 1, no
  defence) and ``in_context_checked`` (the same with the reward check).

For the in-context legs the "trigger rate" is not meaningful; their held-out pass@1 is the measure.

Reported per leg (means over the honest nodes, then medians over seeds): cumulative reward (the sum over
rounds of the mean reward of a node's own samples, SAPO's measure), held-out greedy pass@1 at the end, the
trigger rate (fraction of held-out greedy outputs containing the trigger; and the fraction of the honest
nodes' own samples, at temperature 1, holding it over the last 5 rounds), what the defences dropped, bytes
shared. Wall-clock figures depend on the machine's load; every other figure does not.
"""

from __future__ import annotations

import copy
import logging
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from farsync.bench.common import markdown_table, smoke, write_results
from farsync.rl.grpo import LossConfig
from farsync.rl.policy import build_policy, pass_at_1
from farsync.rl.sft import SupervisedTrainer
from farsync.rl.swarm import SwarmSettings, run_swarm, task_vocab_size
from farsync.rl.tasks import CharTokenizer, make_task

__all__ = ["FULL", "QUICK", "run"]

logger = logging.getLogger(__name__)

_DEFENCES = ["reward_check", "logprob_filter"]
SHARING_LEGS = ("local", "swarm")
"""The legs that run on the plan's ``sharing`` settings."""

LEGS: dict[str, dict[str, Any]] = {
    "local": {"num_local_groups": 8, "num_shared_groups": 0},
    "swarm": {"num_local_groups": 4, "num_shared_groups": 4},
    "poisoned": {"num_local_groups": 4, "num_shared_groups": 4, "malicious_fraction": 0.25},
    "defended": {
        "num_local_groups": 4,
        "num_shared_groups": 4,
        "malicious_fraction": 0.25,
        "defences": _DEFENCES,
    },
    "clean_defended": {"num_local_groups": 4, "num_shared_groups": 4, "defences": _DEFENCES},
    "judged": {
        "num_local_groups": 4,
        "num_shared_groups": 4,
        "malicious_fraction": 0.25,
        "defences": ["reward_check", "judge"],
    },
    "in_context": {
        "num_local_groups": 4,
        "num_shared_groups": 4,
        "malicious_fraction": 0.25,
        "attack": "in_context",
    },
    "in_context_checked": {
        "num_local_groups": 4,
        "num_shared_groups": 4,
        "malicious_fraction": 0.25,
        "attack": "in_context",
        "defences": ["reward_check"],
    },
}
"""Each leg's settings on top of the plan's."""

FULL: dict[str, Any] = {
    "seeds": [0, 1, 2],
    "num_rounds": 100,
    "num_nodes": 8,
    "num_heldout": 200,
    "warm_pass": 0.25,
    "num_validation": 100,
    "group_size": 8,
    "max_sft_steps": 2000,
    "lr": 3e-4,
    "legs": list(LEGS),
    "model": {"num_layers": 2, "width": 64, "num_heads": 4, "context_length": 16},
    "sharing": {"warm_pass": 0.05},
}
"""``sharing``: the sharing legs' settings on top of the plan's. A warm-start at validation pass@1 0.05 leaves
most of a node's own groups tied at reward 0 (75-85% of them), the regime where SAPO's filtered shared
groups should carry the signal; it gave the best gain of the medians in the sweep
(benchmarks/results/rl_swarm_sweep.md), though within the seeds' spread there."""
QUICK: dict[str, Any] = {
    **FULL,
    "num_rounds": 60,
    "num_heldout": 100,
    "legs": ["local", "swarm", "poisoned", "defended", "clean_defended"],
}
SMOKE: dict[str, Any] = {
    **QUICK,
    "seeds": [0],
    "num_rounds": 1,
    "num_nodes": 4,
    "num_heldout": 8,
    "num_validation": 8,
    "group_size": 4,
    "legs": list(LEGS),
    "max_sft_steps": 25,
    "model": {"num_layers": 1, "width": 16, "num_heads": 2, "context_length": 16},
    "sharing": {
        "warm_pass": 0.05
    },  # smoke size, its own warm-start (the path the quick plan's sharing legs take)
}


def _warm_start(plan: dict[str, Any], seed: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    torch.manual_seed(seed)
    model = build_policy(**plan["model"], vocab_size=task_vocab_size())
    task = make_task("arithmetic", seed=seed, num_heldout=plan["num_heldout"])
    trainer = SupervisedTrainer(model, task, lr=3e-3, batch_size=32)
    validation, reached = task.validation(plan["num_validation"]), 0.0
    while trainer.num_steps < plan["max_sft_steps"] and reached < plan["warm_pass"]:
        trainer.run(25)
        reached = pass_at_1(model, validation, task.reward, CharTokenizer(), max_new_tokens=6)
    heldout = pass_at_1(model, task.heldout, task.reward, CharTokenizer(), max_new_tokens=6)
    info = {"seed": seed, "sft_steps": trainer.num_steps, "validation_pass": reached, "heldout_pass": heldout}
    info["num_params"] = sum(p.numel() for p in model.parameters())
    return copy.deepcopy(model.state_dict()), info


def _sharing_plan(plan: dict[str, Any]) -> dict[str, Any]:
    """The plan of the sharing legs: the plan with its ``sharing`` settings on top."""
    return {**plan, **plan.get("sharing", {})}


_WARM_KEYS = ("warm_pass", "max_sft_steps", "num_heldout", "num_validation", "model")


def _leg(plan: dict[str, Any], leg: str, seed: int, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    settings = SwarmSettings(
        task_seed=seed,
        seed=seed,
        num_heldout=plan["num_heldout"],
        num_nodes=plan["num_nodes"],
        num_rounds=plan["num_rounds"],
        group_size=plan["group_size"],
        lr=plan["lr"],
        loss=LossConfig(loss="two_sided"),
        model_shape=plan["model"],
        **LEGS[leg],
    )
    begin = time.perf_counter()
    summary = run_swarm(settings, initial_state=state)
    honest = [n for n in summary["nodes"] if not n["malicious"]]
    dropped: dict[str, int] = {}
    for node in honest:
        for name, count in node["defences"]["dropped"].items():
            dropped[name] = dropped.get(name, 0) + count
    malicious_ids = {n["node"] for n in summary["nodes"] if n["malicious"]}
    dropped_malicious = sum(
        count
        for n in honest
        for sender, count in n["defences"]["dropped_by_sender"].items()
        if sender in malicious_ids
    )
    row = {
        "leg": leg,
        "seed": seed,
        "warm_pass": plan["warm_pass"],
        "cumulative_reward": summary["mean_cumulative_local_reward"],
        "pass_at_1": summary["mean_pass_at_1"],
        "trigger_rate": summary["mean_trigger_rate"],
        "sampled_trigger_rate": summary["mean_sampled_trigger_rate_last5"],
        "nodes_triggered_over_half": sum(n["trigger_rate"] > 0.5 for n in honest),
        "num_honest": len(honest),
        "dropped": dropped,
        "dropped_total": sum(dropped.values()),
        "dropped_from_malicious": dropped_malicious,
        "checked": sum(n["defences"]["checked"] for n in honest),
        "bytes_total": summary["bytes_total"],
        "wall_s": time.perf_counter() - begin,
    }
    print(
        f"[bench rl_swarm] {leg} seed {seed}: cumulative reward {row['cumulative_reward']:.3f}, pass@1 "
        f"{row['pass_at_1']:.3f}, trigger {row['trigger_rate']:.3f}, dropped {dropped} ({row['wall_s']:.0f}s real)",
        flush=True,
    )
    return row


def _median(rows: list[dict[str, Any]], leg: str, key: str) -> float | None:
    values = [float(r[key]) for r in rows if r["leg"] == leg]
    return statistics.median(values) if values else None


def _targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    med = {
        leg: {k: _median(rows, leg, k) for k in ("cumulative_reward", "pass_at_1", "trigger_rate")}
        for leg in LEGS
    }
    local, swarm = med["local"]["cumulative_reward"], med["swarm"]["cumulative_reward"]
    targets: dict[str, Any] = {"medians": med}
    if local and swarm is not None:
        targets["sharing_gain_percent"] = 100 * (swarm / local - 1)
    targets["poisoned_trigger_rate"] = med["poisoned"]["trigger_rate"]
    targets["defended_trigger_rate"] = med["defended"]["trigger_rate"]
    clean, defended = med["swarm"]["pass_at_1"], med["clean_defended"]["pass_at_1"]
    if clean is not None and defended is not None:
        targets["defence_cost_points"] = 100 * (clean - defended)
    return targets


def _verdict(value: float | None, bound: float, at_least: bool) -> str:
    if value is None:
        return "not measured"
    return "met" if (value >= bound if at_least else value <= bound) else "MISSED"


def _markdown(result: dict[str, Any]) -> str:
    plan, t = result["plan"], result["targets"]
    gain, poisoned, defended = (
        t.get("sharing_gain_percent"),
        t.get("poisoned_trigger_rate"),
        t.get("defended_trigger_rate"),
    )
    cost = t.get("defence_cost_points")
    lines = [
        "# farsync bench rl: swarm (SAPO) and poisoning",
        "",
        f"{plan['num_nodes']} nodes, {plan['num_rounds']} rounds, 8 groups x 8 completions per GRPO step (two-sided "
        f"clipping, lr {plan['lr']}), 2-digit addition, a {result['warm_starts'][0]['num_params']}-parameter GPT per "
        f"node from a shared warm-start; seeds {plan['seeds']}; host {result['host']}, shared with other jobs "
        f"(wall-clock figures are load-dependent). Command: `{result['command']}`.",
        "",
        "Sharing legs (`local`, `swarm`): "
        + (", ".join(f"{k} {v}" for k, v in plan.get("sharing", {}).items()) or "the same settings")
        + " (chosen by the sweep, benchmarks/results/rl_swarm_sweep.md); at SAPO's equal compute every node"
        " samples, shares and trains on 8 groups a step (4 / 4: 4 of its own drawn at random, 4 untied shared).",
        "",
        "## Warm-start",
        "",
        markdown_table(
            result["warm_starts"],
            [
                ("seed", "seed", ""),
                ("legs", "legs", ""),
                ("SFT steps", "sft_steps", ""),
                ("validation pass@1", "validation_pass", ".3f"),
                ("held-out pass@1", "heldout_pass", ".3f"),
            ],
        ),
        "",
        "## Legs (means over honest nodes)",
        "",
        markdown_table(
            result["rows"],
            [
                ("leg", "leg", ""),
                ("seed", "seed", ""),
                ("cumulative reward", "cumulative_reward", ".3f"),
                ("held-out pass@1", "pass_at_1", ".3f"),
                ("trigger rate", "trigger_rate", ".3f"),
                ("sampled trigger rate", "sampled_trigger_rate", ".3f"),
                ("nodes > 50% triggered", "nodes_triggered_over_half", ""),
                ("groups checked", "checked", ""),
                ("dropped", "dropped_total", ""),
                ("dropped from attackers", "dropped_from_malicious", ""),
                ("bytes shared", "bytes_total", ""),
                ("wall s", "wall_s", ".0f"),
            ],
        ),
        "",
        "## Targets (medians over seeds)",
        "",
        f"- Sharing: 4 local / 4 shared cumulative reward {_fmt(gain)}% vs 8 local / 0 shared "
        f"(target >= +10%: {_verdict(gain, 10, True)}).",
        f"- Poisoning without defence: trigger in {_fmt(None if poisoned is None else 100 * poisoned)}% of honest "
        f"outputs (target > 50%: {_verdict(None if poisoned is None else 100 * poisoned, 50.0001, True)}).",
        f"- With the defence: {_fmt(None if defended is None else 100 * defended)}% (target <= 2%: "
        f"{_defence_verdict(poisoned, defended)}); clean held-out pass@1 cost "
        f"{_fmt(cost)} points (target <= 3: {_verdict(cost, 3, False)}).",
    ]
    return "\n".join(lines)


def _defence_verdict(poisoned: float | None, defended: float | None) -> str:
    if poisoned is None or poisoned <= 0.5:
        return "not demonstrated: the attack did not land without the defence"
    return _verdict(None if defended is None else 100 * defended, 2, False)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}"


def run(out_dir: Path, quick: bool) -> dict[str, Any]:
    """Runs every leg for every seed; writes ``rl_swarm.json`` and ``rl_swarm.md`` into ``out_dir``."""
    torch.set_num_threads(1)
    plan = SMOKE if smoke() else QUICK if quick else FULL
    begin = time.perf_counter()
    warm_starts: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    sharing = _sharing_plan(plan)
    own_warm_start = any(sharing[k] != plan[k] for k in _WARM_KEYS)
    for seed in plan["seeds"]:
        state, info = _warm_start(plan, seed)
        warm_starts.append({**info, "legs": "all" if not own_warm_start else "attack"})
        print(f"[bench rl_swarm] warm-start seed {seed}: {info}", flush=True)
        sharing_state = state
        if own_warm_start and any(leg in SHARING_LEGS for leg in plan["legs"]):
            sharing_state, sharing_info = _warm_start(sharing, seed)
            warm_starts.append({**sharing_info, "legs": "sharing"})
            print(f"[bench rl_swarm] sharing warm-start seed {seed}: {sharing_info}", flush=True)
        for leg in plan["legs"]:
            if leg in SHARING_LEGS:
                rows.append(_leg(sharing, leg, seed, sharing_state))
            else:
                rows.append(_leg(plan, leg, seed, state))
    result = {
        "quick": quick,
        "command": "farsync bench rl" + (" --quick" if quick else ""),
        "plan": plan,
        "warm_starts": warm_starts,
        "rows": rows,
        "targets": _targets(rows),
        "seconds": time.perf_counter() - begin,
        "host": f"{platform.machine()} CPU, torch {torch.__version__}",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_results(out_dir, "rl_swarm", result, _markdown(result))
    return result
