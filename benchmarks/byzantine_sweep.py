"""Sweep of the synchronous (and DiLoCo) regimes' levers for issue 19, with the one-process simulation.

Each variant is a regime's settings (batch, worker momentum beta, learning rate, steps, schedule) and a
defence; it is judged by its clean accuracy and its worst case over the hardest attacks (ALIE, min-sum,
IPM 0.1 / 0.5, min-max) at f = 5 and 7 of 16. Attacks are the benchmark's, unchanged (ALIE's z from n and
f as Baruch et al. 2019 derive it). Rows go to a JSON-lines file (resumable); ``--summary`` writes a
markdown table of every variant.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/byzantine_sweep.py --out /tmp/sweep.jsonl --stage 1
    PYTHONPATH=src python benchmarks/byzantine_sweep.py --out /tmp/sweep.jsonl --summary \
        benchmarks/results/byzantine_sweep.md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from farsync.bench.byzantine import ATTACKS, DATASET, DEFENCES, NUM_WORKERS
from farsync.bench.byzantine_sim import run_simulated
from farsync.config import load_config

HARD = ["alie", "min_sum", "ipm_0.1", "ipm_0.5", "min_max"]


def config(regime: list[str], defence: list[str], attack: str, f: int, steps: int) -> Any:
    attackers = list(range(NUM_WORKERS - f, NUM_WORKERS)) if attack != "none" else []
    overrides = [
        f"num_workers={NUM_WORKERS}", "seed=0", "model.kind=mlp", "model.width=64", "data.kind=npz",
        f"data.path={DATASET}", f"train.num_steps={steps}", "train.eval_every=100000",
        "network.emulation=off", "checkpoint.every_rounds=0", *regime, *defence,
        *(ATTACKS[attack] if attack != "none" else []), f"byzantine.workers={attackers}",
    ]  # fmt: skip
    return load_config(None, overrides)


def variants(stage: int) -> list[dict[str, Any]]:
    """(label, regime kind, regime settings, lr, steps, defence) per stage."""
    cc = DEFENCES["centered_clip (neighbors radius) + nnm"]
    out: list[dict[str, Any]] = []

    def sync(
        batch: int,
        beta: float,
        lr: float,
        steps: int,
        defence: str,
        extra: list[str] | None = None,
        sched: str = "constant",
    ) -> None:
        settings = ["algorithm.name=ddp", f"aggregation.worker_momentum={beta}", f"train.batch_size={batch}"]
        label = f"sync b={batch} beta={beta} lr={lr} steps={steps} sched={sched} | {defence}"
        if extra:
            label += " " + " ".join(e.split(".", 1)[1] for e in extra)
        out.append({"label": label, "regime": "sync", "settings": settings, "lr": lr, "steps": steps,
                    "sched": sched, "defence": [*DEFENCES[defence], *(extra or [])]})  # fmt: skip

    if stage == 1:  # batch x beta (effective lr lr / (1 - beta) = 1 held), 100 steps, the preset defence
        for batch in (32, 64, 128):
            for beta, lr in ((0.9, 0.1), (0.95, 0.05), (0.99, 0.01)):
                sync(batch, beta, lr, 100, "centered_clip (neighbors radius) + nnm")
    if stage == 2:  # steps and lr
        for batch in (64, 128):
            for beta, lr in ((0.9, 0.1), (0.9, 0.05), (0.95, 0.05)):
                sync(batch, beta, lr, 200, "centered_clip (neighbors radius) + nnm")
    if stage == 3:  # defences on a good regime
        for defence in DEFENCES:
            if defence != "mean":
                sync(128, 0.9, 0.1, 200, defence)
        sync(128, 0.9, 0.1, 200, "centered_clip (neighbors radius) + nnm", ["aggregation.tau=0.5"])
        sync(128, 0.9, 0.1, 200, "centered_clip (neighbors radius) + nnm", ["aggregation.tau=2.0"])
        sync(128, 0.9, 0.1, 200, "centered_clip (history) + nnm", ["aggregation.num_iters=1"])
    if stage == 4:  # lr schedule: warm-up then cosine decay (train.min_lr_ratio 0.1)
        for batch in (32, 64):
            sync(batch, 0.9, 0.1, 200, "centered_clip (neighbors radius) + nnm", sched="cosine")
            sync(batch, 0.9, 0.2, 200, "centered_clip (neighbors radius) + nnm", sched="cosine")
    if stage == 5:  # CenteredClip from the previous aggregate (no NNM): radius and iterations
        history = "centered_clip (history)"
        sync(32, 0.9, 0.1, 200, history, sched="cosine")
        for tau in ("0.5", "0.25"):
            sync(32, 0.9, 0.1, 200, history, [f"aggregation.tau={tau}"], sched="cosine")
        sync(32, 0.9, 0.1, 200, history, ["aggregation.num_iters=10"], sched="cosine")
    del cc
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stage", type=int, default=0)
    parser.add_argument("--fractions", default="5,7")
    parser.add_argument("--attacks", default=",".join(HARD))
    parser.add_argument("--summary", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    done: dict[str, dict[str, Any]] = {}
    if args.out.is_file():
        for line in args.out.read_text().splitlines():
            row = json.loads(line)
            done[row["key"]] = row
    if args.stage:
        fractions = [int(f) for f in args.fractions.split(",")]
        for v in variants(args.stage):
            for attack, f in [("none", 0)] + [(a, f) for f in fractions for a in args.attacks.split(",")]:
                key = f"{v['label']} || {attack} f={f}"
                if key in done:
                    continue
                cfg = config(v["settings"], v["defence"], attack, f, v["steps"])
                begin = time.process_time()
                result = run_simulated(cfg, v["regime"], lr=v["lr"], schedule=v["sched"])
                row = {"key": key, "label": v["label"], "attack": attack, "f": f,
                       "accuracy": result["final_eval_accuracy"], "nsr": result["noise_to_signal_sent"],
                       "cpu": time.process_time() - begin}  # fmt: skip
                done[key] = row
                with args.out.open("a") as file:
                    file.write(json.dumps(row) + "\n")
                print(f"{row['accuracy']:.3f} {row['cpu']:.1f}s {key}", flush=True)
    if args.summary:
        summarize(list(done.values()), args.summary)


def summarize(rows: list[dict[str, Any]], path: Path) -> None:
    by: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = by.setdefault(row["label"], {"clean": None, "worst": {}, "nsr": None, "cpu": 0.0})
        entry["cpu"] += row["cpu"]
        if row["attack"] == "none":
            entry["clean"], entry["nsr"] = row["accuracy"], row["nsr"]
        else:
            worst = entry["worst"].get(row["f"])
            if worst is None or row["accuracy"] < worst[0]:
                entry["worst"][row["f"]] = (row["accuracy"], row["attack"])
    lines = [
        "| variant | clean | worst f=5 | worst f=7 | NSR start/end | cpu s |",
        "|---|---|---|---|---|---|",
    ]
    for label, e in by.items():
        cells = []
        for f in (5, 7):
            w = e["worst"].get(f)
            cells.append(f"{w[0]:.3f} ({w[1]})" if w else "-")
        nsr = f"{e['nsr']['start']:.2f}/{e['nsr']['end']:.2f}" if e["nsr"] else "-"
        clean = f"{e['clean']:.3f}" if e["clean"] is not None else "-"
        lines.append(
            f"| {label.replace(' | ', '; ')} | {clean} | {cells[0]} | {cells[1]} | {nsr} | {e['cpu']:.0f} |"
        )
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
