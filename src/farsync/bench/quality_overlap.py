"""The ``overlap`` section of ``farsync bench quality``: every one-round overlap rule with its outer recipe
tuned on its own, and eager against delayed as each worker's batch grows.

Rows, all at M = 4 in bench quality's regime (137k-parameter GPT, inner lr 8e-3, 2.46M tokens):

* every rule of :mod:`farsync.algorithms.overlap` (``naive`` and ``eager``, Kale et al. 2025, arXiv
  2502.12996; farsync's ``delayed`` and ``lookahead``) at the outer (lr, momentum) pairs of
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
    "SYNC_RECIPE",
    "overlap_jobs",
    "overlap_targets",
    "overlap_text",
]

Job = tuple[str, list[str], dict[str, Any]]

SYNC_RECIPE = (1.0, 0.7)
"""Synchronous DiLoCo's recipe at M = 4, H = 30 (bench quality's best and the rule's)."""
OVERLAP_RECIPES: dict[str, list[tuple[float, float]]] = {
    "naive": [(1.0, 0.7), (0.5, 0.7), (0.5, 0.5)],
    "eager": [(1.0, 0.7), (0.7, 0.7), (1.0, 0.5)],
    "delayed": [(1.0, 0.7), (0.7, 0.7)],
    "lookahead": [(1.0, 0.7), (0.7, 0.7)],
}
"""Rule -> (outer lr, Nesterov momentum) pairs swept at 8 sequences per worker step, H = 30."""
OVERLAP_BATCHES: dict[int, tuple[int, int]] = {16: (600, 15), 32: (300, 10)}
"""Sequences per worker step -> (steps, H) at the same 2.46M tokens: 40 rounds at 16, 30 at 32 (H = 7.5
would keep 40 but is not a whole number of steps)."""
BATCH_RULES = ("eager", "delayed")
"""The rules run at every batch of :data:`OVERLAP_BATCHES` (at their best recipe at 8 sequences)."""


def _name(rule: str, lr: float, momentum: float, batch: int) -> str:
    suffix = "" if batch == 8 else f"_b{batch}"
    if rule == "sync":
        return "diloco_m4_h30_olr1_mom0.7" if batch == 8 else f"diloco_m4_olr{lr:g}_mom{momentum:g}{suffix}"
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


def _job(rule: str, lr: float, momentum: float, batch: int, base: list[str], diloco: list[str]) -> Job:
    overlap = [] if rule == "sync" else ["algorithm.delay=1", f"algorithm.overlap={rule}"]
    meta = {"rule": rule, "outer_lr": lr, "outer_momentum": momentum, "batch": batch}
    return _name(rule, lr, momentum, batch), [*base, *diloco, *overlap, *_batch(batch)], meta


def overlap_jobs(
    base: list[str], diloco: Callable[[float, float], list[str]], best: dict[str, tuple[float, float]]
) -> list[Job]:
    """(name, overrides, meta) of every run of the section.

    ``base``: bench quality's M = 4 base overrides with the inner lr; ``diloco(lr, momentum)``: its DiLoCo
    overrides at H = 30; ``best``: rule -> its best recipe at 8 sequences (known once those rows ran).
    """
    jobs = [_job("sync", *SYNC_RECIPE, 8, base, diloco(*SYNC_RECIPE))]
    for rule, pairs in OVERLAP_RECIPES.items():
        jobs += [_job(rule, lr, momentum, 8, base, diloco(lr, momentum)) for lr, momentum in pairs]
    for batch in OVERLAP_BATCHES:
        jobs.append(_job("sync", *SYNC_RECIPE, batch, base, diloco(*SYNC_RECIPE)))
        for rule in BATCH_RULES:
            if rule in best:
                jobs.append(_job(rule, *best[rule], batch, base, diloco(*best[rule])))
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
        (r for r in rows if r["batch"] == 8), key=lambda r: (r["rule"], -r["outer_lr"], -r["outer_momentum"])
    )
    batches = sorted(
        (r for r in rows if r["batch"] != 8 or r["rule"] in ("sync", *BATCH_RULES)),
        key=lambda r: (r["batch"], r["rule"]),
    )
    return "\n".join(
        [
            "## Overlap rules, M = 4 (each rule's outer recipe tuned on its own)",
            "",
            markdown_table(sweep, COLUMNS),
            "",
            "### Eager against delayed as the worker's batch grows (same tokens)",
            "",
            markdown_table(batches, COLUMNS),
        ]
    )
