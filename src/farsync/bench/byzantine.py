"""``farsync bench byzantine``: final accuracy of every aggregation rule under every built-in attack.

An MLP on scikit-learn's digits, 16 workers (threads), DiLoCo with short rounds (H = 10 inner steps, 6
rounds of 60 steps), with 0, 3 or 7 Byzantine workers (the highest ranks) running each built-in attack, for each rule:
mean, median, trimmed mean, Krum and CenteredClip (BTARD's rule, Gorbunov et al. 2021, arXiv 2106.11257),
all over the butterfly shard exchange except the plain mean (a ring all-reduce).

Why DiLoCo and not DDP: a robust rule's error grows with the honest updates' spread relative to their mean
(with 7 of 16 attacking, CenteredClip's fixed point sits about ``7/9 tau`` from the honest mean). A DDP
gradient on a 32-example batch is mostly noise at this size (measured on one shard with 7 sign-flip
attackers: honest spread about equal to the honest mean's norm, cosine between CenteredClip's result and
the honest mean ~0.35), while a pseudo-gradient over 10 AdamW steps has a spread of ~0.65 of its mean's
norm (cosine ~0.84). DiLoCo also keeps the benchmark within minutes: with 16 threads on a shared 2-core
machine one synchronisation costs ~0.3-0.5 s, so DDP's one per step would dominate.

Rule parameters: trimmed mean ``beta = 0.25`` (drops 4 values at each end: enough for 3 attackers, not for
7; ``beta >= 0.44`` would make it the median), Krum ``f = 6`` (the largest ``n > 2f + 2`` allows with 16),
CenteredClip with ``tau = 1`` in adaptive mode (radius = the median distance of a shard's updates to their
median, recomputed every round).

A second table adds validation (3 strikes, then exclusion) with 7 attackers: ``aggregation.max_norm``
on the mean and on CenteredClip, and CenteredClip with ``aggregation.outlier_ratio`` (owners strike a
sender whose shard lies over ``OUTLIER_RATIO`` median distances from the result; no bound to choose).
The norm bound is ``MAX_NORM``, about 5x the largest honest pseudo-gradient norm
seen in this setting (2.0, in the second round), so the large-norm attacks are excluded after three rounds and only the subtle ones
(ALIE, label flip, stale) reach the rule. Attack strength: ``byzantine.scale = 1000`` (sign flip x1000,
Gaussian std 1000, constant 1000); ALIE's z from the number of workers and attackers; stale replays the
update from :data:`~farsync.sim.attacking.STALE_ROUNDS` rounds ago.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from farsync.bench.common import smoke
from farsync.comm.groups import open_store
from farsync.config import RunConfig, load_config
from farsync.launch.local import run_threads
from farsync.report.summary import build_summary
from farsync.train import read_results

__all__ = ["ATTACKS", "COUNTS", "DEFENCES", "MAX_NORM", "OUTLIER_RATIO", "RULES", "run"]

logger = logging.getLogger(__name__)

RULES = ("mean", "median", "trimmed_mean", "krum", "centered_clip")
ATTACKS = ("sign_flip", "gaussian", "constant", "alie", "label_flip", "stale")
COUNTS = (0, 3, 7)
NUM_WORKERS = 16
MAX_NORM = 10.0
OUTLIER_RATIO = 10.0
DEFENCES: dict[str, tuple[str, list[str]]] = {
    "mean + max_norm": ("mean", [f"aggregation.max_norm={MAX_NORM}"]),
    "centered_clip + max_norm": ("centered_clip", [f"aggregation.max_norm={MAX_NORM}"]),
    "centered_clip + outlier bans": ("centered_clip", [f"aggregation.outlier_ratio={OUTLIER_RATIO}"]),
}
"""Validation added to a rule (second table): label -> (rule, config overrides)."""
_RULE_SETTINGS = {"trimmed_mean": ["aggregation.beta=0.25"], "krum": ["aggregation.f=6"]}


def _base(num_steps: int) -> list[str]:
    return [
        f"num_workers={NUM_WORKERS}",
        "model.kind=mlp",
        "model.width=64",
        "data.kind=digits",
        "algorithm.name=diloco",
        "algorithm.num_inner_steps=10",
        f"train.num_steps={num_steps}",
        "train.batch_size=32",
        "train.lr=0.01",
        "train.warmup_steps=10",
        "train.eval_every=100000",
        "network.emulation=off",
        "checkpoint.every_rounds=0",
        "byzantine.scale=1000.0",
    ]


def _config(rule: str, attack: str, count: int, num_steps: int, extra: list[str]) -> RunConfig:
    workers = list(range(NUM_WORKERS - count, NUM_WORKERS))
    overrides = [
        *_base(num_steps),
        f"aggregation.rule={rule}",
        *_RULE_SETTINGS.get(rule, []),
        *extra,
        f"byzantine.workers={workers}",
        f"byzantine.attack={attack}",
    ]
    return load_config(None, overrides)


def _train(config: RunConfig) -> dict[str, Any]:
    """One run as threads; the summary without the run directory (no plots: 80 runs add up)."""
    store = open_store("127.0.0.1", 0, config.num_workers + 1, is_master=True)
    prefix = f"byz{time.time_ns()}"
    run_threads(config, config.num_workers, store, None, prefix, False)
    return build_summary(config, read_results(store, prefix, config.num_workers))


def _one(rule: str, attack: str, count: int, num_steps: int, defence: str = "none") -> dict[str, Any]:
    begin = time.perf_counter()
    if defence != "none":
        rule, extra = DEFENCES[defence]
    else:
        extra = []
    summary = _train(_config(rule, attack, count, num_steps, extra))
    row = {
        "rule": rule if defence == "none" else defence,
        "attack": attack if count else "none",
        "num_byzantine": count,
        "defence": defence,
        "final_eval_accuracy": summary["final_eval_accuracy"],
        "final_eval_loss": summary["final_eval_loss"],
        "bytes_sent_per_worker": summary["bytes_sent_per_worker"],
        "num_params": summary["num_params"],
        "num_rounds": summary["num_rounds"],
        "seconds": time.perf_counter() - begin,
    }
    logger.warning(
        "%-28s %-10s byzantine=%d: accuracy %.3f (%.1fs)",
        row["rule"], row["attack"], count, row["final_eval_accuracy"], row["seconds"],
    )  # fmt: skip
    return row


def _accuracy(rows: list[dict[str, Any]], rule: str, attack: str, count: int) -> float:
    """Final accuracy of ``rule`` (a rule name or a :data:`DEFENCES` label) under ``attack`` x ``count``."""
    for row in rows:
        if (row["rule"], row["num_byzantine"]) == (rule, count) and (count == 0 or row["attack"] == attack):
            return float(row["final_eval_accuracy"])
    return float("nan")


def _targets(rows: list[dict[str, Any]], rules: tuple[str, ...], attacks: tuple[str, ...]) -> dict[str, Any]:
    clean = {rule: _accuracy(rows, rule, "none", 0) for rule in rules}
    targets: dict[str, Any] = {"clean": clean}
    if "centered_clip" in rules and "mean" in rules:
        strong = [a for a in ("sign_flip", "alie", "gaussian") if a in attacks]
        targets["centered_clip_7_within_3_points"] = {
            a: 100 * (clean["centered_clip"] - _accuracy(rows, "centered_clip", a, 7)) <= 3 for a in strong
        }
        targets["mean_7_below_30_percent"] = {a: _accuracy(rows, "mean", a, 7) < 0.30 for a in strong}
        targets["clean_robust_within_1_point_of_mean"] = {
            rule: abs(100 * (clean[rule] - clean["mean"])) <= 1 for rule in rules if rule != "mean"
        }
        for label in (d for d in DEFENCES if d.startswith("centered_clip")):
            reference = _accuracy(rows, label, "none", 0)
            targets[f"{label}_7_within_3_points"] = {
                a: 100 * (reference - _accuracy(rows, label, a, 7)) <= 3 for a in strong
            }
    return targets


def _bytes_line(rows: list[dict[str, Any]]) -> str:
    """Bytes per worker per round: the mean's ring all-reduce against the robust rules' butterfly."""
    clean = {row["rule"]: row for row in rows if row["num_byzantine"] == 0 and row["defence"] == "none"}
    model_bytes = 4 * int(next(iter(clean.values()))["num_params"])
    parts = []
    for rule in ("mean", "centered_clip"):
        if rule in clean:
            per_round = clean[rule]["bytes_sent_per_worker"] / max(int(clean[rule]["num_rounds"]), 1)
            how = "ring all-reduce" if rule == "mean" else "butterfly"
            parts.append(f"{rule} ({how}) {per_round:.0f} B = {per_round / model_bytes:.2f}x the fp32 model")
    return "Bytes sent per worker per round (ledger): " + "; ".join(parts) + "."


def _markdown(rows: list[dict[str, Any]], rules: tuple[str, ...], attacks: tuple[str, ...], counts: tuple[int, ...],
              meta: dict[str, Any]) -> str:  # fmt: skip
    lines = [
        "# Byzantine robustness: final accuracy (MLP on digits, 16 workers, DiLoCo H=10)",
        "",
        f"{meta['num_steps']} inner steps, {meta['num_rounds']} rounds; rows: attack and number of Byzantine "
        "workers out of 16; columns: aggregation rule (no validation). Command: "
        f"`farsync bench byzantine{' --quick' if meta['quick'] else ''}`; {meta['seconds']:.0f} s in all.",
        "",
        "| attack | byzantine | " + " | ".join(rules) + " |",
        "|---|---|" + "---|" * len(rules),
    ]
    if 0 in counts:
        cells = [f"{_accuracy(rows, rule, 'none', 0):.3f}" for rule in rules]
        lines.append("| none | 0 | " + " | ".join(cells) + " |")
    for attack in attacks:
        for count in (c for c in counts if c):
            cells = [f"{_accuracy(rows, rule, attack, count):.3f}" for rule in rules]
            lines.append(f"| {attack} | {count} | " + " | ".join(cells) + " |")
    lines += ["", _bytes_line(rows)]
    validated = [row for row in rows if row["defence"] != "none"]
    if validated:
        labels = tuple(dict.fromkeys(row["rule"] for row in validated))
        lines += [
            "",
            f"With validation (3 strikes, then excluded): `aggregation.max_norm = {MAX_NORM}`, or "
            f"`aggregation.outlier_ratio = {OUTLIER_RATIO}` (no norm bound).",
            "",
            "| attack | byzantine | " + " | ".join(labels) + " |",
            "|---|---|" + "---|" * len(labels),
        ]
        for attack, count in dict.fromkeys((row["attack"], row["num_byzantine"]) for row in validated):
            cells = [f"{_accuracy(validated, label, attack, count):.3f}" for label in labels]
            lines.append(f"| {attack} | {count} | " + " | ".join(cells) + " |")
    lines += ["", "Targets:", "", "```", json.dumps(meta["targets"], indent=1), "```", ""]
    return "\n".join(lines)


def run(out_dir: Path, quick: bool) -> dict[str, Any]:
    """Runs the grid (``quick``: mean and CenteredClip, sign flip only, 20 steps) and writes the tables."""
    quick = quick or smoke()
    rules = ("mean", "centered_clip") if quick else RULES
    attacks = ("sign_flip",) if quick else ATTACKS
    counts = (0, 7) if quick else COUNTS
    num_steps = 10 if smoke() else 20 if quick else 60  # smoke (tests): one round of H = 10
    begin = time.perf_counter()
    rows = [_one(rule, "sign_flip", 0, num_steps) for rule in rules] if 0 in counts else []
    for attack in attacks:
        for count in (c for c in counts if c):
            rows += [_one(rule, attack, count, num_steps) for rule in rules]
    defences = ("centered_clip + outlier bans",) if quick else tuple(DEFENCES)
    rows += [_one("", "sign_flip", 0, num_steps, defence) for defence in defences]
    for attack in attacks:
        rows += [_one("", attack, 7, num_steps, defence) for defence in defences]
    meta: dict[str, Any] = {
        "quick": quick,
        "num_workers": NUM_WORKERS,
        "num_steps": num_steps,
        "num_rounds": num_steps // 10,
        "seconds": time.perf_counter() - begin,
        "targets": _targets(rows, rules, attacks),
    }
    result = {"meta": meta, "rows": rows}
    (out_dir / "byzantine.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / "byzantine.md").write_text(_markdown(rows, rules, attacks, counts, meta))
    return result
