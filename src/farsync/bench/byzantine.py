"""``farsync bench byzantine``: the breakdown curve of every defence, judged by its worst case over an
attack suite, in two regimes, for 1, 3, 5 and 7 Byzantine workers of 16.

Setting (issue 19): an MLP (one hidden layer of 64) on a 5,000-image MNIST sample (500 per class,
2 x 2 average-pooled to 14 x 14; ``benchmarks/data/mnist_5k_14x14.npz``, see its README), 16 workers with
about 234 training images each, the Byzantine ones the highest ranks. Runs are simulated in one process
(:mod:`farsync.bench.byzantine_sim`: the same shards, batches, model, shard-wise rules, worker momentum
and attacks as the threaded runs, without the network): a synchronous run of 200 steps costs a few CPU
seconds instead of the threaded run's minute, which is what makes hundreds of runs affordable.

- **sync**: every step each worker computes a gradient on a batch of 32 and sends its momentum
  (``aggregation.worker_momentum = 0.9``, Karimireddy et al. 2021, arXiv 2012.10333); the aggregate is
  applied by plain SGD (peak lr 0.1, warm-up 20 steps then cosine decay to a tenth, :data:`SYNC_SCHEDULE`;
  no momentum: the workers' momentum is the only one).
- **diloco**: DiLoCo with H = 10 AdamW inner steps (lr 0.01, warm-up 10), outer Nesterov SGD (lr 0.7,
  momentum 0.9), batch 32; the workers send their pseudo-gradients.

Two comparisons answer whether worker momentum matters (:data:`COMPARISONS`): the synchronous regime
without it (raw gradients, momentum 0.9 applied after aggregation, as before issue 19), and DiLoCo with it
(momentum of the pseudo-gradients, outer SGD without momentum), for the best defences at 7 of 16.

Attack suite (:data:`ATTACKS`) and defences (:data:`DEFENCES`): see docs/robust.md. A defence's **worst
case** at ``f`` is its lowest final accuracy over the suite; its **curve** is the worst case against
``f / n``, starting at its clean accuracy at ``f = 0``; its **area** is the mean height of that curve
between 0 and 7/16 (trapezoids). The recommended defence (``aggregation.rule = "robust"``,
:data:`farsync.config.ROBUST_PRESET`) is the one with the largest mean area over the two regimes
(:func:`farsync.bench.byzantine_report.choose`). The JSON also has the bytes of verifying a quarter of
the shard owners per round, measured on threaded runs through the real reducers.

Cost: a synchronous run of :data:`STEPS` steps is a few CPU seconds, a DiLoCo run two or three; the full
grid is 9 defences x (1 + 12 attacks x 4 fractions) = 441 runs per regime plus the comparisons (52 runs)
and two threaded verification runs, about an hour of CPU on one core (0.97 h estimated from the committed runs' CPU per run); ``--quick`` is 30 runs of 30
steps and two short threaded runs, a minute or two.
``grid`` (see :class:`Grid`) runs part of it. Finished runs are cached by their settings
(``FARSYNC_BENCH_CACHE``, default a ``farsync-byzantine`` folder in the temporary directory), so an
interrupted sweep resumes; use a fresh folder after changing the code or a default the runs rely on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from farsync.bench.byzantine_report import MAX_CPU_HOURS, choose, curves, markdown, plot, targets
from farsync.bench.byzantine_sim import run_simulated
from farsync.bench.byzantine_sync import SYNC_LR, run_sync
from farsync.bench.common import smoke
from farsync.comm.groups import open_store
from farsync.config import RunConfig, load_config
from farsync.launch.local import run_threads
from farsync.report.summary import build_summary
from farsync.train import read_results

__all__ = [
    "ATTACKS",
    "CACHE_ENV",
    "COMPARED",
    "COMPARISONS",
    "DATASET",
    "DEFENCES",
    "FRACTIONS",
    "NUM_WORKERS",
    "REGIMES",
    "STEPS",
    "SYNC_SCHEDULE",
    "VERIFY_FRACTION",
    "WORKER_MOMENTUM",
    "Grid",
    "committed_grid",
    "quick_grid",
    "run",
]

logger = logging.getLogger(__name__)

NUM_WORKERS = 16
FRACTIONS = (1, 3, 5, 7)
"""Byzantine workers of :data:`NUM_WORKERS` on the breakdown curve."""
CACHE_ENV = "FARSYNC_BENCH_CACHE"
WORKER_MOMENTUM = 0.9
"""``aggregation.worker_momentum`` of the synchronous regime."""
SYNC_SCHEDULE = "cosine"
"""Learning-rate schedule of the synchronous regime: warm-up over ``train.warmup_steps`` (20), then cosine
decay of :data:`~farsync.bench.byzantine_sync.SYNC_LR` to ``train.min_lr_ratio`` (0.1) of it
(benchmarks/results/byzantine_sweep.md: against a constant rate it lifts the worst case at 5 and 7 of 16)."""
DATASET = Path(__file__).resolve().parents[3] / "benchmarks" / "data" / "mnist_5k_14x14.npz"

ATTACKS: dict[str, list[str]] = {
    "sign_flip": ["byzantine.attack=sign_flip", "byzantine.scale=1000.0"],
    "sign_flip_x1": ["byzantine.attack=sign_flip", "byzantine.scale=1.0"],
    "gaussian": ["byzantine.attack=gaussian", "byzantine.scale=1000.0"],
    "constant": ["byzantine.attack=constant", "byzantine.scale=1000.0"],
    "alie": ["byzantine.attack=alie"],
    "ipm_0.5": ["byzantine.attack=ipm", "byzantine.params={eps = 0.5}"],
    "ipm_0.1": ["byzantine.attack=ipm", "byzantine.params={eps = 0.1}"],
    "mimic": ["byzantine.attack=mimic"],
    "min_max": ["byzantine.attack=min_max"],
    "min_sum": ["byzantine.attack=min_sum"],
    "label_flip": ["byzantine.attack=label_flip"],
    "stale": ["byzantine.attack=stale"],
}
"""The attack suite: label -> ``byzantine.*`` settings."""

_CC = "aggregation.rule=centered_clip"
_NEIGHBORS = "aggregation.tau_scale=neighbors"
_HISTORY = [_CC, _NEIGHBORS, "aggregation.clip_start=previous", "aggregation.num_iters=3"]
_NNM = "aggregation.preaggregation=nnm"
DEFENCES: dict[str, list[str]] = {
    "mean": ["aggregation.rule=mean"],
    "median": ["aggregation.rule=median"],
    "median + nnm": ["aggregation.rule=median", _NNM],
    "krum + nnm": ["aggregation.rule=krum", _NNM],
    "centered_clip (neighbors radius) + nnm": [_CC, _NEIGHBORS, _NNM],
    "centered_clip (history)": _HISTORY,
    "centered_clip (history, tau 0.5)": [*_HISTORY, "aggregation.tau=0.5"],
    "centered_clip (history) + nnm": [*_HISTORY, _NNM],
    "centered_clip (history) + bucketing": [
        *_HISTORY, "aggregation.preaggregation=bucketing", "aggregation.bucket_size=2"
    ],
}  # fmt: skip
"""Every defence: label -> ``aggregation.*`` settings. ``(history)``: CenteredClip started from the
previous aggregate with 3 iterations (Karimireddy et al. 2021), the radius tau = 1 (or 0.5, the better
radius of the sweep in benchmarks/results/byzantine_sweep.md) times the distance to the (n - f)-th nearest
update; ``f`` is left at -1 (as many as the rule allows) whatever the attackers'
number, as a user who does not know it would."""

REGIMES = ("sync", "diloco")
_REGIME_SETTINGS = {
    "sync": ["algorithm.name=ddp", f"aggregation.worker_momentum={WORKER_MOMENTUM}"],
    "diloco": [
        "algorithm.name=diloco",
        "algorithm.num_inner_steps=10",
        "algorithm.outer_lr=0.7",
        "algorithm.outer_momentum=0.9",
        "train.lr=0.01",
        "train.warmup_steps=10",
    ],
}
STEPS = {"sync": 200, "diloco": 100}

COMPARISONS: dict[str, tuple[str, list[str], float]] = {
    "sync without worker momentum": ("sync", ["aggregation.worker_momentum=0.0"], 0.9),
    "diloco with worker momentum": (
        "diloco", [f"aggregation.worker_momentum={WORKER_MOMENTUM}", "algorithm.outer_momentum=0.0"], 0.0
    ),
}  # fmt: skip
"""Label -> (regime, settings added to it, momentum of the synchronous step on the aggregate)."""
COMPARED = ("centered_clip (neighbors radius) + nnm", "centered_clip (history, tau 0.5)")
"""The defences the comparisons run: the preset before issue 19 and CenteredClip with history (the
radius of the sweep, benchmarks/results/byzantine_sweep.md)."""

VERIFY_FRACTION = 0.25
"""Share of the owners verified per round in the verification-cost rows."""
_VERIFY_STEPS = {"sync": 30, "diloco": 20}  # bytes per round do not depend on the round: few rounds


@dataclass(kw_only=True)
class Grid:
    """Which part of the full grid to run (default: all of it)."""

    defences: dict[str, list[str]] = field(default_factory=lambda: {r: list(DEFENCES) for r in REGIMES})
    """Per regime, the defences to run (the recommended one is chosen among those run in both)."""
    attacks: list[str] = field(default_factory=lambda: list(ATTACKS))
    fractions: list[int] = field(default_factory=lambda: list(FRACTIONS))
    steps: dict[str, int] = field(default_factory=lambda: dict(STEPS))
    comparisons: bool = True
    comparison_attacks: list[str] | None = None
    """The attacks of the comparisons (default: :attr:`attacks`)."""


def quick_grid() -> Grid:
    """``--quick``: three defences, two attacks, f = 3 and 7, few steps."""
    defences = ["mean", "centered_clip (neighbors radius) + nnm", "centered_clip (history) + nnm"]
    return Grid(
        defences={regime: defences for regime in REGIMES},
        attacks=["sign_flip", "alie"],
        fractions=[3, 7],
        steps={"sync": 3 if smoke() else 30, "diloco": 10 if smoke() else 30},
        comparisons=False,
    )


COMMITTED_DEFENCES = [
    "mean",
    "centered_clip (neighbors radius) + nnm",
    "centered_clip (history)",
    "centered_clip (history, tau 0.5)",
    "median + nnm",
    "centered_clip (history) + nnm",
    "median",
    "krum + nnm",
    "centered_clip (history) + bucketing",
]
"""The defences of the committed results (every defence of :data:`DEFENCES`), in the order they were run."""
COMMITTED_COMPARISON_ATTACKS = ["alie", "min_sum", "ipm_0.5", "ipm_0.1"]


def committed_grid() -> Grid:
    """The grid of the committed results (benchmarks/results/byzantine.md): :data:`COMMITTED_DEFENCES`
    against every attack at every fraction, the full grid's steps, the comparisons on
    :data:`COMMITTED_COMPARISON_ATTACKS`. ``run(out_dir, False, committed_grid())`` reproduces it."""
    return Grid(
        defences={regime: list(COMMITTED_DEFENCES) for regime in REGIMES},
        comparison_attacks=list(COMMITTED_COMPARISON_ATTACKS),
    )


def _config(regime: str, settings: list[str], attack: str, f: int, num_steps: int) -> RunConfig:
    attackers = list(range(NUM_WORKERS - f, NUM_WORKERS)) if attack != "none" else []
    overrides = [
        f"num_workers={NUM_WORKERS}",
        "seed=0",
        "model.kind=mlp",
        "model.width=64",
        "data.kind=npz",
        f"data.path={DATASET}",
        "train.batch_size=32",
        f"train.num_steps={num_steps}",
        "train.eval_every=100000",
        "network.emulation=off",
        "checkpoint.every_rounds=0",
        *_REGIME_SETTINGS[regime],
        *settings,
        *(ATTACKS[attack] if attack != "none" else []),
        f"byzantine.workers={attackers}",
    ]
    return load_config(None, overrides)


class _Cache:
    """Finished rows by a digest of their settings (JSON lines)."""

    def __init__(self) -> None:
        folder = Path(os.environ.get(CACHE_ENV, Path(tempfile.gettempdir()) / "farsync-byzantine"))
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "rows.jsonl"
        self.rows: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    record = json.loads(line)
                    self.rows[record["digest"]] = record["row"]

    def get(self, digest: str) -> dict[str, Any] | None:
        return self.rows.get(digest)

    def put(self, digest: str, row: dict[str, Any]) -> None:
        self.rows[digest] = row
        with self.path.open("a") as file:
            file.write(json.dumps({"digest": digest, "row": row}) + "\n")


@dataclass(kw_only=True)
class _Run:
    regime: str
    defence: str
    attack: str
    f: int
    num_steps: int
    extra: list[str] = field(default_factory=list)
    server_momentum: float = 0.0
    label: str = ""
    threaded: bool = False

    def settings(self) -> list[str]:
        return [*DEFENCES.get(self.defence, []), *self.extra]


def _one(cache: _Cache, run: _Run) -> dict[str, Any]:
    """One run (from the cache when it is there)."""
    # Keyed by the settings that vary, not the resolved config: a new config field elsewhere must not void
    # hours of runs. A change of a default these runs rely on needs a fresh cache (FARSYNC_BENCH_CACHE).
    key = [run.regime, *_REGIME_SETTINGS[run.regime], *run.settings(), *ATTACKS.get(run.attack, []),
           f"f={run.f}", f"steps={run.num_steps}", f"server_momentum={run.server_momentum}",
           f"threaded={run.threaded}", DATASET.name]  # fmt: skip
    if run.regime == "sync":
        key += [f"lr={SYNC_LR}", f"schedule={SYNC_SCHEDULE}"]
    digest = hashlib.sha256("\n".join(key).encode()).hexdigest()[:20]
    found = cache.get(digest)
    base = {"regime": run.regime, "defence": run.defence, "attack": run.attack, "f": run.f,
            "label": run.label}  # fmt: skip
    if found is not None:
        return {**found, **base}
    config = _config(run.regime, run.settings(), run.attack, run.f, run.num_steps)
    if run.threaded:
        outcome = run_sync(config, SYNC_SCHEDULE) if run.regime == "sync" else _run_diloco_threads(config)
    else:
        outcome = run_simulated(config, run.regime, lr=SYNC_LR, server_momentum=run.server_momentum,
                                schedule=SYNC_SCHEDULE)  # fmt: skip
    row = {**base, **outcome}
    cache.put(digest, row)
    logger.warning(
        "%-6s %-40s %-12s f=%d accuracy %.3f (%.1f cpu s)",
        run.regime, run.label or run.defence, run.attack, run.f, row["final_eval_accuracy"],
        row.get("cpu_seconds", row["seconds"]),
    )  # fmt: skip
    return row


def _run_diloco_threads(config: RunConfig) -> dict[str, Any]:
    begin = time.perf_counter()
    store = open_store("127.0.0.1", 0, config.num_workers + 1, is_master=True)
    prefix = f"byz{time.time_ns()}"
    run_threads(config, config.num_workers, store, None, prefix, False)
    results = read_results(store, prefix, config.num_workers)
    summary = build_summary(config, results)
    verify = [
        sum(e["bytes_sent"] for key, e in r["ledger"]["entries"].items() if key.startswith("verify/"))
        for r in results
    ]
    return {
        "final_eval_accuracy": float(summary["final_eval_accuracy"]),
        "final_eval_loss": float(summary["final_eval_loss"]),
        "bytes_sent_per_worker": float(summary["bytes_sent_per_worker"]),
        "verify_bytes_per_worker": sum(verify) / len(verify),
        "num_rounds": int(summary["num_rounds"]),
        "seconds": time.perf_counter() - begin,
    }


def _sweep(cache: _Cache, regime: str, grid: Grid) -> list[dict[str, Any]]:
    """Every defence clean and against every attack at every fraction, the largest fraction first."""
    steps = grid.steps[regime]
    rows = [_one(cache, _Run(regime=regime, defence=d, attack="none", f=0, num_steps=steps))
            for d in grid.defences[regime]]  # fmt: skip
    for f in sorted(grid.fractions, reverse=True):
        for defence in grid.defences[regime]:
            for attack in grid.attacks:
                rows.append(
                    _one(cache, _Run(regime=regime, defence=defence, attack=attack, f=f, num_steps=steps))
                )
    return rows


def _compare(cache: _Cache, grid: Grid) -> list[dict[str, Any]]:
    """The comparisons of :data:`COMPARISONS` for :data:`COMPARED` at the largest fraction."""
    rows = []
    f = max(grid.fractions)
    for label, (regime, extra, server_momentum) in COMPARISONS.items():
        for defence in COMPARED:
            attacks = grid.attacks if grid.comparison_attacks is None else grid.comparison_attacks
            for attack in ["none", *attacks]:
                run = _Run(regime=regime, defence=defence, attack=attack, f=0 if attack == "none" else f,
                           num_steps=grid.steps[regime], extra=extra, server_momentum=server_momentum,
                           label=label)  # fmt: skip
                rows.append(_one(cache, run))
    return rows


def _verification_cost(cache: _Cache, chosen: str, quick: bool) -> dict[str, Any]:
    """The chosen defence with a quarter of the owners verified each round, without attackers, on threaded
    runs through the real reducers: bytes on the ``verify`` channel against the rest, and the accuracy."""
    settings = [*DEFENCES[chosen], f"aggregation.verify_fraction={VERIFY_FRACTION}"]
    if (
        "aggregation.clip_start=previous" in settings
    ):  # not verifiable yet: measure the same rule from the median
        settings = [s for s in settings if s != "aggregation.clip_start=previous"]
    cost = {}
    for regime, num_steps in _VERIFY_STEPS.items():
        steps = min(num_steps, 20) if quick else num_steps
        run = _Run(regime=regime, defence="", attack="none", f=0, num_steps=steps, extra=settings,
                   threaded=True, label=f"{chosen} + verification")  # fmt: skip
        row = _one(cache, run)
        verify = float(row.get("verify_bytes_per_worker", 0.0))
        cost[regime] = {
            "settings": settings,
            "num_steps": steps,
            "final_eval_accuracy": row["final_eval_accuracy"],
            "verify_bytes_per_worker": verify,
            "other_bytes_per_worker": row["bytes_sent_per_worker"] - verify,
            "extra_fraction": verify / max(row["bytes_sent_per_worker"] - verify, 1.0),
        }
    return cost


def _full_grid_cpu_hours(rows: list[dict[str, Any]]) -> float:
    """The full grid's CPU hours at the measured mean CPU seconds per run of each regime (its comparisons
    at the synchronous mean)."""
    cells = len(DEFENCES) * (1 + len(ATTACKS) * len(FRACTIONS))
    per_run: dict[str, float] = {}
    for regime in REGIMES:
        seconds = [float(r.get("cpu_seconds", 0.0)) for r in rows if r["regime"] == regime]
        per_run[regime] = sum(seconds) / max(len(seconds), 1)
    comparisons = len(COMPARISONS) * len(COMPARED) * (1 + len(ATTACKS))
    return (sum(cells * s for s in per_run.values()) + comparisons * per_run["sync"]) / 3600


def run(out_dir: Path, quick: bool, grid: Grid | None = None) -> dict[str, Any]:
    """Runs ``grid`` (``quick``: :func:`quick_grid`; default the full grid) and writes the tables and plot."""
    quick = quick or smoke()
    torch.set_num_threads(1)  # hundreds of small runs in one process: no intra-op threads to contend
    grid = grid if grid is not None else (quick_grid() if quick else Grid())
    cache = _Cache()
    begin = time.perf_counter()
    rows: list[dict[str, Any]] = []
    tables = {}
    for regime in REGIMES:
        regime_rows = _sweep(cache, regime, grid)
        rows += regime_rows
        tables[regime] = curves(regime_rows, grid.defences[regime], grid.attacks, grid.fractions)
    comparison_rows = _compare(cache, grid) if grid.comparisons else []
    chosen = choose(tables)
    meta: dict[str, Any] = {
        "quick": quick,
        "full_grid": grid == Grid(),
        "defences": grid.defences,
        "num_workers": NUM_WORKERS,
        "fractions": grid.fractions,
        "attacks": grid.attacks,
        "steps": grid.steps,
        "dataset": DATASET.name,
        "worker_momentum": WORKER_MOMENTUM,
        "sync_lr": SYNC_LR,
        "sync_schedule": SYNC_SCHEDULE,
        "seeds": [0],
        "chosen": {"defence": chosen, "settings": DEFENCES[chosen],
                   "area": {regime: tables[regime][chosen]["area"] for regime in REGIMES}},
        "num_runs": len(rows) + len(comparison_rows),
        "cpu_seconds": sum(r.get("cpu_seconds", 0.0) for r in rows + comparison_rows),
        "wall_seconds_this_call": time.perf_counter() - begin,
    }  # fmt: skip
    meta["verification"] = _verification_cost(cache, chosen, quick)
    meta["targets"] = targets(tables, meta["verification"], rows, meta["cpu_seconds"])
    if not meta["full_grid"]:  # judge the run-time target on the full grid, estimated from these runs
        hours = _full_grid_cpu_hours(rows + comparison_rows)
        entry = meta["targets"]["whole benchmark <= 2.5 h of runs"]
        entry["value"]["full_grid_estimate_cpu_hours"] = round(hours, 3)
        entry["met"] = hours <= MAX_CPU_HOURS
    result = {"meta": meta, "tables": tables, "comparisons": comparison_rows, "rows": rows}
    (out_dir / "byzantine.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / "byzantine.md").write_text(markdown(result))
    plot(tables, out_dir / "byzantine_curve.png", NUM_WORKERS)
    return result
