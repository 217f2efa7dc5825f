"""``farsync bench rl_swarm``: SAPO's sharing gain, poisoning of the swarm, and its defences.

For every seed: one supervised warm-start of a ~100k-parameter character GPT on 2-digit addition until greedy
pass@1 on a validation set (training-stream problems, never the held-out ones) reaches ``warm_pass``; every
node of every leg starts from those weights. Every leg has 8 nodes, one GRPO step per honest node per
round, and 8 groups of 8 completions trained on per step.

Two plans share the warm-start. The **sharing plan** (the plan's own ``lr`` and ``num_rounds``) runs

* ``local``: 8 local / 0 shared groups (no exchange);
* ``swarm``: 4 local / 4 shared (SAPO), at equal compute as the paper defines it (Gensyn 2025, "Sharing is
  Caring", arXiv 2509.08721, controlled experiment: every configuration "I local / J external" generates
  the same rollouts per agent and trains on I + J; the J are drawn uniformly from the swarm's rollouts with
  non-zero advantage): each node samples and shares its 8 groups, and trains on 4 of them drawn at random
  plus 4 untied groups drawn from its peers' (:mod:`farsync.rl.swarm_node`).

The sharing legs run on the plan's ``sharing`` settings on top (their own warm-start, chosen by the sweep in
``benchmarks/rl_swarm_sweep.py``, see ``benchmarks/results/rl_swarm_sweep.md``).

The **attack plan** (the plan's ``attack`` settings on top: lr 4e-4 and 100 rounds where the sharing plan has
lr 3e-4; every node at SAPO's equal compute as in the sharing legs; the attack sweep was run earlier with our
split, where a node sampled only its 4 groups) runs the attack legs, 3 of the 8 nodes malicious (a minority, as in the paper's threat model):

* ``clean``: 4 / 4 with no attack (the attack legs' reference);
* ``poisoned_paper``: the paper's out-of-context attack (:func:`~farsync.rl.poison.out_of_context`: the
  trigger " zz" after the correct completions the attackers sampled), no defence;
* ``poisoned``: our stronger form of it (:func:`~farsync.rl.poison.out_of_context_untied`: no poisoned group
  ever ties), no defence;
* ``defended``: ``poisoned`` with the reward check and the token log-probability filter (the paper's
  defence for swarms that train one model);
* ``clean_defended``: ``clean`` with those defences (their cost in clean reward);
* ``judged``: ``poisoned`` with the reward check and the rule-based judge (our stand-in for the paper's LLM
  judge, the defence for swarms of different models);
* ``in_context`` (wrong answers claimed with reward 1, no defence) and ``in_context_checked`` (the same with
  the reward check): for these the "trigger rate" means nothing; held-out pass@1 is the measure;
* ``malformed`` and ``oversized``: the malicious nodes send garbage bytes or 1 MiB JSON objects for 5
  rounds; every honest node must reject, log and ban them and train every round.

Why two plans: at lr 3e-4 and 100 rounds the out-of-context trigger never reaches a majority of the honest
nodes' greedy outputs (benchmarks/results/rl_swarm_attack_sweep.md, made by
benchmarks/rl_swarm_attack_sweep.py), while at that rate the sharing comparison is the stablest; the
attack's strength was swept (malicious fraction, rounds, lr, the paper's attack and ours) and the attack plan
is the setting of the sweep that landed on seed 0 with a margin at the lr nearest the sharing plan's.

Reported per leg (means over the honest nodes, then medians over seeds): cumulative reward (the sum over
rounds of the mean reward of a node's own samples, SAPO's measure), held-out greedy pass@1 at the end (strict,
and of the answer before the first space), the trigger rate (fraction of held-out greedy outputs containing the trigger; and the fraction of the honest
nodes' own samples, at temperature 1, holding it over the last 5 rounds), what the defences dropped, bytes
shared, messages rejected, how many honest nodes banned every attacker, and the fewest rounds an honest node
trained. Wall-clock figures depend on the machine's load; every other figure does not.
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

__all__ = ["ATTACK_LEGS", "FULL", "LEGS", "QUICK", "SHARING_LEGS", "leg_settings", "run", "run_leg"]

logger = logging.getLogger(__name__)

_DEFENCES = ["reward_check", "logprob_filter"]
_ATTACKED: dict[str, Any] = {"num_local_groups": 4, "num_shared_groups": 4, "malicious_fraction": 0.375}
LEGS: dict[str, dict[str, Any]] = {
    "local": {"num_local_groups": 8, "num_shared_groups": 0},
    "swarm": {"num_local_groups": 4, "num_shared_groups": 4},
    "clean": {"num_local_groups": 4, "num_shared_groups": 4},
    "poisoned_paper": {**_ATTACKED, "attack": "out_of_context"},
    "poisoned": {**_ATTACKED, "attack": "out_of_context_untied"},
    "defended": {**_ATTACKED, "attack": "out_of_context_untied", "defences": _DEFENCES},
    "clean_defended": {"num_local_groups": 4, "num_shared_groups": 4, "defences": _DEFENCES},
    "judged": {**_ATTACKED, "attack": "out_of_context_untied", "defences": ["reward_check", "judge"]},
    "in_context": {**_ATTACKED, "attack": "in_context"},
    "in_context_checked": {**_ATTACKED, "attack": "in_context", "defences": ["reward_check"]},
    "malformed": {**_ATTACKED, "attack": "malformed", "attack_params": {"kind": "garbage"}, "num_rounds": 5},
    "oversized": {**_ATTACKED, "attack": "oversized", "num_rounds": 5},
}
"""Each leg's settings on top of the plan's (an attack leg's on top of the plan's ``attack`` settings)."""

SHARING_LEGS = ("local", "swarm")
"""The legs of the sharing target, run at the plan's own settings."""
ATTACK_LEGS = tuple(leg for leg in LEGS if leg not in SHARING_LEGS)
"""The legs of the poisoning targets, run at the plan's ``attack`` settings (``clean`` is their no-attack
reference)."""

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
    "attack": {"lr": 4e-4, "num_rounds": 100},
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
    "legs": ["local", "swarm", "clean", "poisoned", "defended", "clean_defended", "malformed", "oversized"],
}
SMOKE: dict[str, Any] = {
    **QUICK,
    "seeds": [0],
    "num_rounds": 1,
    "num_nodes": 4,
    "num_heldout": 8,
    "num_validation": 8,
    "group_size": 4,
    "attack": {"lr": 4e-4, "num_rounds": 1},
    "legs": list(LEGS),
    "max_sft_steps": 25,
    "model": {"num_layers": 1, "width": 16, "num_heads": 2, "context_length": 16},
    "sharing": {"warm_pass": 0.05},  # smoke size, its own warm-start (the path the sharing legs take)
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


def leg_settings(
    plan: dict[str, Any], leg: str, seed: int, extra: dict[str, Any] | None = None
) -> SwarmSettings:
    """A leg's swarm settings for one seed: the plan's (with its ``attack`` settings on top for an attack
    leg), then :data:`LEGS`'s for ``leg``, then ``extra`` (:class:`~farsync.rl.swarm.SwarmSettings` fields)."""
    base = {"lr": plan["lr"], "num_rounds": plan["num_rounds"]}
    if leg in ATTACK_LEGS:
        base.update(plan.get("attack", {}))
    fields: dict[str, Any] = {
        "task_seed": seed,
        "seed": seed,
        "num_heldout": plan["num_heldout"],
        "num_nodes": plan["num_nodes"],
        "group_size": plan["group_size"],
        "loss": LossConfig(loss="two_sided"),
        "model_shape": plan["model"],
        **base,
        **LEGS[leg],
        **(extra or {}),
    }
    return SwarmSettings(**fields)


def run_leg(
    plan: dict[str, Any],
    leg: str,
    seed: int,
    state: dict[str, torch.Tensor],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One leg of the benchmark for one seed from the warm-start ``state`` (settings by
    :func:`leg_settings`); returns its row."""
    settings = leg_settings(plan, leg, seed, extra)
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
        "answer_pass_at_1": summary["mean_answer_pass_at_1"],
        "trigger_rate": summary["mean_trigger_rate"],
        "sampled_trigger_rate": summary["mean_sampled_trigger_rate_last5"],
        "nodes_triggered_over_half": sum(n["trigger_rate"] > 0.5 for n in honest),
        "num_honest": len(honest),
        "dropped": dropped,
        "dropped_total": sum(dropped.values()),
        "dropped_from_malicious": dropped_malicious,
        "checked": sum(n["defences"]["checked"] for n in honest),
        "bytes_total": summary["bytes_total"],
        "rounds": settings.num_rounds,
        "rounds_trained_min": min(n["rounds_trained"] for n in honest),
        "rejected_total": sum(sum(n["rejected"].values()) for n in honest),
        "honest_banning_all_attackers": sum(set(n["banned"]) >= malicious_ids for n in honest)
        if malicious_ids
        else 0,
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
    keys = ("cumulative_reward", "pass_at_1", "answer_pass_at_1", "trigger_rate")
    med = {leg: {k: _median(rows, leg, k) for k in keys} for leg in LEGS}
    local, swarm = med["local"]["cumulative_reward"], med["swarm"]["cumulative_reward"]
    targets: dict[str, Any] = {"medians": med}
    if local and swarm is not None:
        targets["sharing_gain_percent"] = 100 * (swarm / local - 1)
    targets["poisoned_trigger_rate"] = med["poisoned"]["trigger_rate"]
    targets["defended_trigger_rate"] = med["defended"]["trigger_rate"]
    targets["judged_trigger_rate"] = med["judged"]["trigger_rate"]
    clean, defended = med["clean"]["pass_at_1"], med["clean_defended"]["pass_at_1"]
    if clean is not None and defended is not None:
        targets["defence_cost_points"] = 100 * (clean - defended)
    wire = [r for r in rows if r["leg"] in ("malformed", "oversized")]
    if wire:
        targets["wire_attacks_survived"] = all(
            r["rounds_trained_min"] == r["rounds"]
            and r["rejected_total"] > 0
            and r["honest_banning_all_attackers"] == r["num_honest"]
            for r in wire
        )
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
        + " on top (chosen by the sweep, benchmarks/results/rl_swarm_sweep.md); at SAPO's equal compute every node"
        " samples, shares and trains on 8 groups a step (4 / 4: 4 of its own drawn at random, 4 untied shared).",
        "",
        f"Attack legs ({', '.join(leg for leg in plan['legs'] if leg in ATTACK_LEGS)}) run at the attack plan "
        f"{plan.get('attack', {})} on top (`clean` is their no-attack reference); malicious nodes: "
        f"{_malicious(plan)} of {plan['num_nodes']}.",
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
                ("answer pass@1", "answer_pass_at_1", ".3f"),
                ("trigger rate", "trigger_rate", ".3f"),
                ("sampled trigger rate", "sampled_trigger_rate", ".3f"),
                ("nodes > 50% triggered", "nodes_triggered_over_half", ""),
                ("groups checked", "checked", ""),
                ("dropped", "dropped_total", ""),
                ("dropped from attackers", "dropped_from_malicious", ""),
                ("bytes shared", "bytes_total", ""),
                ("rejected", "rejected_total", ""),
                ("honest banning every attacker", "honest_banning_all_attackers", ""),
                ("fewest rounds trained", "rounds_trained_min", ""),
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
        f"{_fmt(cost)} points, `clean_defended` vs `clean` (target <= 3: {_verdict(cost, 3, False)}).",
        f"- Different models' defence (rule judge): trigger in {_fmt(_pct(t.get('judged_trigger_rate')))}% of "
        f"honest outputs (target <= 2%: {_defence_verdict(poisoned, t.get('judged_trigger_rate'))}).",
        f"- Malformed / oversized senders: every honest node trained every round, rejected, logged and banned "
        f"them: {_wire(t.get('wire_attacks_survived'))}.",
    ]
    return "\n".join(lines)


def _pct(value: float | None) -> float | None:
    return None if value is None else 100 * value


def _wire(survived: bool | None) -> str:
    return "not measured" if survived is None else "met" if survived else "MISSED"


def _malicious(plan: dict[str, Any]) -> int:
    return round(float(LEGS["poisoned"]["malicious_fraction"]) * int(plan["num_nodes"]))


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
        warm_starts.append({**info, "legs": "attack" if own_warm_start else "all"})
        print(f"[bench rl_swarm] warm-start seed {seed}: {info}", flush=True)
        sharing_state = state
        if own_warm_start and any(leg in SHARING_LEGS for leg in plan["legs"]):
            sharing_state, sharing_info = _warm_start(sharing, seed)
            warm_starts.append({**sharing_info, "legs": "sharing"})
            print(f"[bench rl_swarm] sharing warm-start seed {seed}: {sharing_info}", flush=True)
        for leg in plan["legs"]:
            if leg in SHARING_LEGS:
                rows.append(run_leg(sharing, leg, seed, sharing_state))
            else:
                rows.append(run_leg(plan, leg, seed, state))
    result = {
        "quick": quick,
        "command": "farsync bench rl_swarm" + (" --quick" if quick else ""),
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
