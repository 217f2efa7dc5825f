"""The ``overlap`` section of ``farsync bench quality``: every one-round overlap rule with its outer recipe
tuned on its own, and eager against delayed as each worker's batch grows.

Rows, all at M = 4 in bench quality's regime (137k-parameter GPT, inner lr 8e-3, 2.46M tokens):

* every rule of :mod:`farsync.algorithms.overlap` (``naive`` and ``eager``, Kale et al. 2025, arXiv
  2502.12996; farsync's ``delayed``) at the outer (lr, momentum) pairs of
  :data:`OVERLAP_RECIPES`, 8 sequences per worker step, H = 30 (40 rounds); lowering the outer lr is the
  paper's lever for the naive delay;
* synchronous DiLoCo, ``eager`` and ``delayed`` (each at its best recipe at 8 sequences) with 16 and 32
  sequences per worker step at the same tokens (:data:`OVERLAP_BATCHES`: fewer steps, shorter H).

Each row is compared with synchronous DiLoCo at the same batch (outer lr 1.0, momentum 0.7, the rule's
recipe at M = 4, H = 30 and bench quality's best).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from farsync.bench.common import markdown_table

__all__ = [
    "OVERLAP_BATCHES",
    "OVERLAP_RECIPES",
    "best_recipes",
    "overlap_jobs",
    "overlap_targets",
    "overlap_text",
]

Job = tuple[str, list[str], dict[str, Any]]

OVERLAP_RECIPES: dict[str, list[tuple[float, float]]] = {
    "naive": [(1.0, 0.7), (0.5, 0.7), (0.5, 0.5), (0.7, 0.3)],
    "eager": [(1.0, 0.7), (0.5, 0.5), (0.7, 0.3), (0.85, 0.3)],
    "delayed": [(1.0, 0.7), (0.7, 0.3)],
}
"""Rule -> (outer lr, Nesterov momentum) pairs swept at 8 sequences per worker step, H = 30."""
OVERLAP_BATCHES: dict[int, tuple[int, int]] = {16: (600, 15), 32: (300, 10)}
"""Sequences per worker step -> (steps, H) at the same 2.46M tokens: 40 rounds at 16, 30 at 32 (H = 7.5
would keep 40 but is not a whole number of steps)."""
RULE_ORDER = ("sync", "naive", "eager", "delayed")
BATCH_RULES = ("eager", "delayed")
"""The rules run at every batch of :data:`OVERLAP_BATCHES` (at their best recipe at 8 sequences)."""


def _name(rule: str, lr: float, momentum: float, batch: int, h: int) -> str:
    suffix = "" if batch == 8 else f"_b{batch}"
    if rule == "sync":  # at 8 sequences, the name bench quality's recipe grid gives the same run
        return (
            f"diloco_m4_h{h}_olr{lr:g}_mom{momentum:g}"
            if batch == 8
            else f"diloco_m4_olr{lr:g}_mom{momentum:g}{suffix}"
        )
    return f"overlap_{rule}_olr{lr:g}_mom{momentum:g}{suffix}"


def _batch(batch: int) -> list[str]:
    """Overrides that set ``batch`` sequences per worker step at the same tokens ([] for the base's 8)."""
    if batch == 8:
        return []
    steps, h = OVERLAP_BATCHES[batch]
    return [
        f"train.num_steps={steps}",
        f"train.batch_size={batch}",
        f"train.warmup_steps={steps // 20}",
        f"train.eval_every={steps // 10}",
        f"train.num_eval_batches={128 // batch}",
        f"algorithm.num_inner_steps={h}",
    ]


def overlap_jobs(
    base: list[str],
    diloco: Callable[[float, float], list[str]],
    best: dict[str, tuple[float, float]],
    *,
    recipe: tuple[float, float],
    h: int,
    quick: bool = False,
    batches: bool = False,
) -> list[Job]:
    """(name, overrides, meta) of the section's runs: the recipe sweep, or with ``batches`` the batch sweep.

    ``base``: bench quality's M = 4 base overrides with the inner lr; ``diloco(lr, momentum)``: its DiLoCo
    overrides at its H (``h``); ``recipe``: synchronous DiLoCo's (lr, momentum); ``best``: rule -> its best
    recipe at 8 sequences (:func:`best_recipes` of the sweep's rows). ``quick``: naive and eager at
    ``recipe`` only.
    """

    def job(rule: str, lr: float, momentum: float, batch: int) -> Job:
        overlap = [] if rule == "sync" else ["algorithm.delay=1", f"algorithm.overlap={rule}"]
        meta = {"rule": rule, "outer_lr": lr, "outer_momentum": momentum, "batch": batch}
        overrides = [*base, *diloco(lr, momentum), *overlap, *_batch(batch)]
        return _name(rule, lr, momentum, batch, h), overrides, meta

    if quick:
        return [] if batches else [job(rule, *recipe, 8) for rule in ("sync", "naive", "eager")]
    if not batches:
        sweep = [
            job(rule, lr, momentum, 8) for rule, pairs in OVERLAP_RECIPES.items() for lr, momentum in pairs
        ]
        return [job("sync", *recipe, 8), *sweep]
    jobs = []
    for batch in OVERLAP_BATCHES:
        jobs.append(job("sync", *recipe, batch))
        jobs += [job(rule, *best[rule], batch) for rule in BATCH_RULES if rule in best]
    return jobs


def best_recipes(rows: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Rule -> the (outer lr, momentum) with the lowest final eval loss at 8 sequences."""
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["batch"] == 8 and (
            row["rule"] not in best or row["final_eval_loss"] < best[row["rule"]]["final_eval_loss"]
        ):
            best[row["rule"]] = row
    return {rule: (row["outer_lr"], row["outer_momentum"]) for rule, row in best.items()}


def _compare(rows: list[dict[str, Any]]) -> None:
    sync = {r["batch"]: r for r in rows if r["rule"] == "sync"}
    for row in rows:
        ref = sync.get(row["batch"])
        row["loss_vs_sync"] = None if ref is None else row["final_eval_loss"] / ref["final_eval_loss"] - 1.0


COLUMNS = [
    ("rule", "rule", ""),
    ("outer lr", "outer_lr", "g"),
    ("momentum", "outer_momentum", "g"),
    ("seqs/worker step", "batch", ""),
    ("rounds", "num_rounds", ""),
    ("global eval loss", "final_eval_loss", ".4f"),
    ("mean local eval loss", "final_local_eval_loss", ".4f"),
    ("vs synchronous", "loss_vs_sync", "+.2%"),
    ("run", "name", ""),
]


def overlap_targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 17's targets: eager (published) <= naive and within +5% of synchronous; naive within +3%."""
    _compare(rows)
    best = {
        rule: min(
            (r for r in rows if r["rule"] == rule and r["batch"] == 8), key=lambda r: r["final_eval_loss"]
        )
        for rule in OVERLAP_RECIPES
        if any(r["rule"] == rule and r["batch"] == 8 for r in rows)
    }
    targets: dict[str, Any] = {}
    if "eager" in best:
        gap = best["eager"]["loss_vs_sync"]
        targets["eager_within_5%_of_synchronous"] = [round(gap, 4), gap <= 0.05]
    if "naive" in best:
        gap = best["naive"]["loss_vs_sync"]
        targets["naive_tuned_within_3%_of_synchronous"] = [round(gap, 4), gap <= 0.03]
    if "eager" in best and "naive" in best:
        diff = best["eager"]["final_eval_loss"] - best["naive"]["final_eval_loss"]
        targets["eager_at_least_as_good_as_naive"] = [round(diff, 4), diff <= 0]
    return targets


def overlap_text(rows: list[dict[str, Any]]) -> str:
    """The section's markdown: the recipe sweep at 8 sequences, then the batch sweep."""
    _compare(rows)
    sweep = sorted(
        (r for r in rows if r["batch"] == 8),
        key=lambda r: (RULE_ORDER.index(r["rule"]), -r["outer_lr"], -r["outer_momentum"]),
    )
    best = best_recipes(rows)
    chosen = [
        r for r in rows if r["batch"] == 8 and best.get(r["rule"]) == (r["outer_lr"], r["outer_momentum"])
    ]
    batches = sorted(
        (r for r in [*chosen, *(r for r in rows if r["batch"] != 8)] if r["rule"] in ("sync", *BATCH_RULES)),
        key=lambda r: (r["batch"], RULE_ORDER.index(r["rule"])),
    )
    lines = [
        "## Overlap rules, M = 4 (each rule's outer recipe tuned on its own)",
        "",
        "8 sequences per worker step, H = 30, 40 rounds; `vs synchronous`: against synchronous DiLoCo at "
        "the same batch. `naive` and `eager` are Kale et al. 2025's Algorithms 2 and 3 (arXiv 2502.12996); "
        "`delayed` is farsync's (`farsync.algorithms.overlap`).",
        "",
        markdown_table(sweep, COLUMNS),
    ]
    if len({r["batch"] for r in batches}) > 1:
        lines += [
            "",
            "### Eager against delayed as the worker's batch grows (same tokens)",
            "",
            "Each rule at its best recipe above; 16 sequences: 600 steps, H = 15 (40 rounds); 32 sequences: "
            "300 steps, H = 10 (30 rounds).",
            "",
            markdown_table(batches, COLUMNS),
        ]
    return "\n".join(lines)
