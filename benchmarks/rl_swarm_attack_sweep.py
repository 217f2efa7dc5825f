"""Sweep of the out-of-context attack's strength on the swarm benchmark (issue #21, "attacks").

Every configuration is one ``farsync.bench.rl_swarm`` leg (its FULL plan, with the attack plan for an
attack leg) with some :class:`~farsync.rl.swarm.SwarmSettings` fields changed on top of everything: the
fraction of malicious nodes, the rounds, the learning rate, the attack. Each run appends one JSON line (the leg's
row plus the settings it changed) to ``--out`` (default ``/tmp/rl_swarm_attack_sweep.jsonl``);
``--summary`` turns that file into the markdown table of benchmarks/results/rl_swarm_attack_sweep.md.

The warm-start of each seed is the benchmark's own (``rl_swarm._warm_start`` on its FULL plan), cached in
``/tmp`` between runs. Usage (one process at a time, one torch thread)::

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/rl_swarm_attack_sweep.py \
        --name f3_r100 --seeds 0 1 2 --leg poisoned --set malicious_fraction=0.375 --set num_rounds=100
    python benchmarks/rl_swarm_attack_sweep.py --summary
"""

from __future__ import annotations

import argparse
import ast
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from farsync.bench import rl_swarm


def _warm(seed: int) -> dict[str, torch.Tensor]:
    path = Path(f"/tmp/rl_swarm_warm_{seed}.pt")
    if path.exists():
        state: dict[str, torch.Tensor] = torch.load(path)
        return state
    state, info = rl_swarm._warm_start(rl_swarm.FULL, seed)
    print(f"warm-start {seed}: {info}", flush=True)
    torch.save(state, path)
    return state


def _parse(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, text = pair.partition("=")
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[key] = text
    return out


def run(name: str, seeds: list[int], leg: str, changes: dict[str, Any], out: Path) -> None:
    torch.set_num_threads(1)
    plan, leg_changes = rl_swarm.FULL, changes  # SwarmSettings fields, over the plan's and the leg's
    for seed in seeds:
        state = _warm(seed)
        row = rl_swarm.run_leg(plan, leg, seed, state, extra=leg_changes)
        settings = {**rl_swarm.LEGS[leg], **leg_changes}
        attack = settings.get("attack", "out_of_context") if settings.get("malicious_fraction", 0) else "-"
        row.update({"name": name, "changes": changes, "attack": attack})
        with out.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


def summary(out: Path) -> str:
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    names: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        names.setdefault((row["name"], row["leg"]), []).append(row)
    lines = [
        "| config | leg | attack | changes | seeds | trigger rate per seed | median trigger | median pass@1 | "
        "median cumulative reward | nodes > 50% triggered |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (name, leg), group in names.items():
        trig = [r["trigger_rate"] for r in group]
        lines.append(
            f"| {name} | {leg} | {group[0].get('attack', '?')} | {json.dumps(group[0]['changes'])} | {[r['seed'] for r in group]} | "
            f"{', '.join(f'{t:.3f}' for t in trig)} | {statistics.median(trig):.3f} | "
            f"{statistics.median(r['pass_at_1'] for r in group):.3f} | "
            f"{statistics.median(r['cumulative_reward'] for r in group):.2f} | "
            f"{', '.join(str(r['nodes_triggered_over_half']) + '/' + str(r['num_honest']) for r in group)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", default="")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--leg", default="poisoned")
    parser.add_argument("--set", action="append", default=[], help="key=value (a plan or leg setting)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/rl_swarm_attack_sweep.jsonl"))
    parser.add_argument("--summary", action="store_true")
    args = parser.parse_args()
    if args.summary:
        print(summary(args.out))
        return
    run(args.name or args.leg, args.seeds, args.leg, _parse(args.set), args.out)


if __name__ == "__main__":
    main()
