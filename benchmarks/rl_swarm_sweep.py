"""Sweep of SAPO's sharing gain (8 local / 0 shared against 4 / 4) over the regime: warm-start strength (reward
sparsity), learning rate, rounds, group size, task, and how the compute is matched.

Every cell runs both legs with the same settings on seeds 0, 1, 2 (one warm-start per seed and cell, shared by
the two legs) and reports the gain of the median cumulative reward, as ``farsync bench rl`` does. Legs follow
the paper's equal compute (:mod:`farsync.rl.swarm_node`): each node samples and shares 8 groups a round and
trains on 8 (all its own; or 4 of its own drawn at random and 4 untied shared ones); the cell ``ours_split``
is the split this project used first (a 4 / 4 node samples only 4 groups).

Usage (from the repository root, one process at a time on a shared machine)::

    PYTHONPATH=src python benchmarks/rl_swarm_sweep.py CELL [CELL ...]   # runs cells not yet in the JSON
    PYTHONPATH=src python benchmarks/rl_swarm_sweep.py --summary         # writes the markdown summary

Results accumulate in ``benchmarks/results/rl_swarm_sweep.json``; the summary is
``benchmarks/results/rl_swarm_sweep.md``.
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from farsync.rl.grpo import LossConfig
from farsync.rl.policy import build_policy, pass_at_1
from farsync.rl.sft import SupervisedTrainer
from farsync.rl.swarm import SwarmSettings, run_swarm, task_vocab_size
from farsync.rl.tasks import CharTokenizer, make_task

RESULTS = Path(__file__).parent / "results"
JSON_PATH = RESULTS / "rl_swarm_sweep.json"
MD_PATH = RESULTS / "rl_swarm_sweep.md"
CACHE = Path("/tmp/farsync_rl_swarm_sweep_warm")

BASE: dict[str, Any] = {
    "task": "arithmetic",
    "seeds": [0, 1, 2],
    "num_nodes": 8,
    "num_rounds": 60,
    "group_size": 8,
    "lr": 3e-4,
    "warm_pass": 0.25,
    "max_sft_steps": 2000,
    "num_heldout": 100,
    "num_validation": 100,
    "temperature": 1.0,
    "generated": 0,
    "strong_nodes": 0,
    "strong_pass": 0.25,
    "model": {"num_layers": 2, "width": 64, "num_heads": 4, "context_length": 16},
}
"""The quick plan of ``farsync bench rl`` (the setting of the -1.4% measurement), with SAPO's equal compute."""

CELLS: dict[str, dict[str, Any]] = {
    "base": {},
    "ours_split": {"generated": "split"},
    "warm10": {"warm_pass": 0.10},
    "warm05": {"warm_pass": 0.05},
    "warm02": {"warm_pass": 0.02},
    "warm10_lr1e3": {"warm_pass": 0.10, "lr": 1e-3},
    "warm05_lr1e3": {"warm_pass": 0.05, "lr": 1e-3},
    "warm05_lr1e3_r100": {"warm_pass": 0.05, "lr": 1e-3, "num_rounds": 100},
    "warm05_g4": {"warm_pass": 0.05, "group_size": 4},
    "warm05_lr1e3_g4": {"warm_pass": 0.05, "lr": 1e-3, "group_size": 4},
    "warm25_lr1e3": {"lr": 1e-3},
    "warm05_lr6e4": {"warm_pass": 0.05, "lr": 6e-4},
    "warm05_lr6e4_r100": {"warm_pass": 0.05, "lr": 6e-4, "num_rounds": 100},
    "warm05_t07": {"warm_pass": 0.05, "temperature": 0.7},
    "reversal_warm05": {"task": "reversal", "warm_pass": 0.05},
    "reversal_warm05_lr1e3": {"task": "reversal", "warm_pass": 0.05, "lr": 1e-3},
    "warm05_r120": {"warm_pass": 0.05, "num_rounds": 120},
    "warm02_g4": {"warm_pass": 0.02, "group_size": 4},
    "warm05_g16": {"warm_pass": 0.05, "group_size": 16},
    "r150": {"num_rounds": 150},
    "mixed2_warm05": {"warm_pass": 0.05, "strong_nodes": 2},
    "mixed1_warm05": {"warm_pass": 0.05, "strong_nodes": 1},
    "mixed2_warm02": {"warm_pass": 0.02, "strong_nodes": 2},
}
"""Each cell's changes to ``BASE`` (the same for both legs). ``strong_nodes > 0``: a swarm of unequal nodes, the
first ``strong_nodes`` warm-started to ``strong_pass``, the others to ``warm_pass``."""


def _warm_start(cell: dict[str, Any], seed: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The bench's supervised warm-start, for any shipped task, cached on disk by its settings."""
    key = f"{cell['task']}-s{seed}-p{cell['warm_pass']}-m{cell['max_sft_steps']}-h{cell['num_heldout']}"
    key += "-" + "-".join(f"{k}{v}" for k, v in sorted(cell["model"].items()))
    path = CACHE / f"{key}.pt"
    if path.exists():
        saved = torch.load(path)
        return saved["state"], saved["info"]
    torch.manual_seed(seed)
    model = build_policy(**cell["model"], vocab_size=task_vocab_size())
    task = make_task(cell["task"], seed=seed, num_heldout=cell["num_heldout"])
    trainer = SupervisedTrainer(model, task, lr=3e-3, batch_size=32)
    validation, reached = task.validation(cell["num_validation"]), 0.0
    while trainer.num_steps < cell["max_sft_steps"] and reached < cell["warm_pass"]:
        trainer.run(25)
        reached = pass_at_1(model, validation, task.reward, CharTokenizer(), max_new_tokens=8)
    heldout = pass_at_1(model, task.heldout, task.reward, CharTokenizer(), max_new_tokens=8)
    info = {"sft_steps": trainer.num_steps, "validation_pass": reached, "heldout_pass": heldout}
    state = copy.deepcopy(model.state_dict())
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save({"state": state, "info": info}, path)
    return state, info


def _leg(
    cell: dict[str, Any],
    leg: str,
    seed: int,
    state: dict[str, torch.Tensor],
    node_states: list[dict[str, torch.Tensor] | None],
) -> dict[str, Any]:
    local, shared = (8, 0) if leg == "local" else (4, 4)
    generated = local if cell["generated"] == "split" else cell["generated"]
    settings = SwarmSettings(
        task=cell["task"],
        task_seed=seed,
        seed=seed,
        num_heldout=cell["num_heldout"],
        num_nodes=cell["num_nodes"],
        num_rounds=cell["num_rounds"],
        group_size=cell["group_size"],
        temperature=cell["temperature"],
        lr=cell["lr"],
        loss=LossConfig(loss="two_sided"),
        model_shape=cell["model"],
        num_local_groups=local,
        num_shared_groups=shared,
        num_generated_groups=generated,
    )
    begin = time.process_time()
    summary = run_swarm(settings, initial_state=state, node_states=node_states)
    honest = [n for n in summary["nodes"] if not n["malicious"]]
    curve = [statistics.mean(n["reward_by_round"][i] for n in honest) for i in range(cell["num_rounds"])]
    tenth = max(cell["num_rounds"] // 10, 1)
    return {
        "leg": leg,
        "seed": seed,
        "cumulative_reward": summary["mean_cumulative_local_reward"],
        "pass_at_1": summary["mean_pass_at_1"],
        "tied_local": summary["mean_tied_local"],
        "local_used": summary["mean_local_used"],
        "shared_used": summary["mean_shared_used"],
        "tied_shared": summary["mean_tied_shared"],
        "reward_first_tenth": statistics.mean(curve[:tenth]),
        "reward_last_tenth": statistics.mean(curve[-tenth:]),
        "cpu_s": time.process_time() - begin,
    }


def _gain(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def median(leg: str, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["leg"] == leg)

    local, swarm = median("local", "cumulative_reward"), median("swarm", "cumulative_reward")
    per_seed = {}
    for seed in sorted({r["seed"] for r in rows}):
        pair = {r["leg"]: r["cumulative_reward"] for r in rows if r["seed"] == seed}
        if "local" in pair and "swarm" in pair and pair["local"] > 0:
            per_seed[seed] = 100 * (pair["swarm"] / pair["local"] - 1)
    return {
        "local_median": local,
        "swarm_median": swarm,
        "gain_percent": 100 * (swarm / local - 1) if local > 0 else float("nan"),
        "per_seed_gain_percent": per_seed,
        "pass_local_median": median("local", "pass_at_1"),
        "pass_swarm_median": median("swarm", "pass_at_1"),
    }


def run_cell(name: str, results: dict[str, Any]) -> None:
    cell = {**BASE, **CELLS[name]}
    rows, warm = [], []
    for seed in cell["seeds"]:
        state, info = _warm_start(cell, seed)
        warm.append({"seed": seed, **info})
        node_states: list[dict[str, torch.Tensor] | None] = []
        if cell["strong_nodes"]:
            strong, _ = _warm_start({**cell, "warm_pass": cell["strong_pass"]}, seed)
            node_states = [strong] * cell["strong_nodes"] + [None] * (
                cell["num_nodes"] - cell["strong_nodes"]
            )
        for leg in ("local", "swarm"):
            row = _leg(cell, leg, seed, state, node_states)
            rows.append(row)
            print(f"[sweep] {name} seed {seed} {leg}: {row}", flush=True)
    results[name] = {"changes": CELLS[name], "warm_starts": warm, "rows": rows, **_gain(rows)}
    print(f"[sweep] {name}: gain {results[name]['gain_percent']:+.1f}%", flush=True)


def _load() -> dict[str, Any]:
    return json.loads(JSON_PATH.read_text()) if JSON_PATH.exists() else {}


READING = """
## Reading

- **Target (>= +10% at 4 / 4 against 8 / 0, medians of 3 seeds): not reached in any cell.** The best gain of
  the medians is `warm05` (+7.1%), but its per-seed gains are +7 / -0 / -7% (median -0.2%): within the seeds'
  spread. No cell has all three seeds above +10%.
- **Where GRPO itself learns, sharing costs reward.** From the warm-start at pass@1 0.25 (`base`, `r150`) the
  8 / 0 nodes' batch reward climbs (0.16 -> 0.24 over 150 rounds, seed 0) and 4 / 4 climbs less (0.16 ->
  0.22): -6.2% at 60 rounds, -8.3% at 150, with lower held-out pass@1. Every node starts from the same
  weights and solves the same task, so a peer's group says nothing a node's own would not, while it replaces
  half of the node's on-policy groups with groups another policy sampled (trained at importance ratio 1,
  biased). The split of ours (`ours_split`, a 4 / 4 node samples only 4 groups) is no better (-4.5%). At lr
  1e-3 (`warm25_lr1e3`) GRPO degrades in both legs (batch reward 0.14 -> 0.13 at 8 / 0, 0.14 -> 0.10 at
  4 / 4, seed 0) and sharing costs more (-7.3%; -10 / -16 / -7% per seed).
- **Where most own groups tie (sparse reward), GRPO barely learns at all**, with or without sharing. From a
  warm-start at pass@1 0.02-0.10, 75-90% of a node's own groups tie at reward 0; 4 / 4 trains on about 4.6
  informative groups a step against 8 / 0's 1.2, yet the batch reward stays flat over 60-120 rounds in both
  legs (first to last tenth of the rounds within about 0.01 at `warm05_g4`, `warm05_t07`, `warm05_r120`,
  `warm05_lr6e4_r100`; the first cells predate that column), so the extra signal has nothing to compound:
  gains of the medians +0.3% to +7.1%, median per-seed gains -0.2% to +4.1% (`warm02`, `warm05`,
  `warm05_g4`, `warm05_t07`, `warm05_r120`, `warm10`). A higher learning rate (6e-4, 1e-3) makes GRPO
  unstable here and sharing worse (-9.5%, -17.9%).
- **Unequal nodes** (`mixed2_warm05`: 2 nodes warm-started to 0.25, 6 to 0.05) give +1.7%: the weak nodes
  see the strong ones' correct answers but, at this learning rate and length, hardly move.
- SAPO's reported +94% came from 0.5B-parameter models on a mix of nine ReasoningGym task families, where
  nodes' policies differ and a correct answer found by one ("Aha moment") is news to the others. A swarm of
  ~100k-parameter copies of one warm-start on one arithmetic task lacks that diversity; that is our reading,
  not a measured cause.
"""


def write_summary(results: dict[str, Any]) -> None:
    lines = [
        "# SAPO sharing gain: sweep (8 local / 0 shared vs 4 / 4, equal compute)",
        "",
        "Generated by `benchmarks/rl_swarm_sweep.py` (`PYTHONPATH=src python benchmarks/rl_swarm_sweep.py CELL`,"
        " then `--summary`). Base (the quick plan of `farsync bench rl`): "
        + ", ".join(f"{k} {v}" for k, v in BASE.items() if k != "seeds")
        + ". Both legs of a cell use the same settings and the same warm-start per seed; every node samples"
        " and shares 8 groups a round and trains on 8 (SAPO's equal compute), except `ours_split` (a 4 / 4"
        " node samples only its 4). Gain: median over seeds 0, 1, 2 of the 4 / 4 cumulative reward over the"
        " median of 8 / 0's (cumulative reward: the sum over rounds of the mean reward of a node's own batch,"
        " mean over nodes). CPU seconds are per leg (the machine is shared; they depend little on load).",
        "",
        "| cell | changes | warm held-out pass@1 (seeds) | 8/0 cum. reward (seeds) | 4/4 cum. reward (seeds) "
        "| gain of medians | per-seed gains (median) | held-out pass@1 8/0 -> 4/4 | own groups tied (4/4) | shared used |"
        " batch reward first -> last tenth of rounds, 8/0 and 4/4 (median) | CPU s/leg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        rows = r["rows"]

        def values(leg: str, key: str, rows: list[dict[str, Any]] = rows) -> str:
            return " / ".join(f"{x[key]:.2f}" for x in rows if x["leg"] == leg)

        swarm = [x for x in rows if x["leg"] == "swarm"]
        tied = statistics.mean(x["tied_local"] for x in swarm)
        used = statistics.mean(x["shared_used"] for x in swarm)
        cpu = statistics.mean(x["cpu_s"] for x in rows)
        changes = ", ".join(f"{k}={v}" for k, v in r["changes"].items()) or "-"
        warm = " / ".join(f"{w['heldout_pass']:.2f}" for w in r["warm_starts"])
        seeds = " / ".join(f"{g:+.0f}%" for g in r["per_seed_gain_percent"].values())
        seeds += f" ({statistics.median(r['per_seed_gain_percent'].values()):+.1f}%)"
        curves = "-"
        if all("reward_first_tenth" in x for x in rows):
            curves = "; ".join(
                f"{statistics.median(x['reward_first_tenth'] for x in rows if x['leg'] == leg):.3f} -> "
                f"{statistics.median(x['reward_last_tenth'] for x in rows if x['leg'] == leg):.3f}"
                for leg in ("local", "swarm")
            )
        lines.append(
            f"| {name} | {changes} | {warm} | {values('local', 'cumulative_reward')} | "
            f"{values('swarm', 'cumulative_reward')} | **{r['gain_percent']:+.1f}%** | {seeds} | "
            f"{r['pass_local_median']:.3f} -> {r['pass_swarm_median']:.3f} | {tied:.0f} | {used:.0f} | {curves} | {cpu:.0f} |"
        )
    not_run = [name for name in CELLS if name not in results]
    lines += [
        "",
        "Cells defined in the script and not run (time): "
        + (", ".join(f"`{n}`" for n in not_run) or "none")
        + ".",
    ]
    MD_PATH.write_text("\n".join(lines) + "\n" + READING)


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    results = _load()
    if argv == ["--summary"]:
        write_summary(results)
        return
    for name in argv:
        if name not in CELLS:
            raise SystemExit(f"unknown cell {name!r}; allowed: {', '.join(CELLS)}")
        if name in results:
            print(f"[sweep] {name}: already measured", flush=True)
            continue
        run_cell(name, results)
        JSON_PATH.write_text(json.dumps(results, indent=1, sort_keys=True))
        write_summary(results)


if __name__ == "__main__":
    main(sys.argv[1:])
