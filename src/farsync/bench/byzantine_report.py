"""The breakdown curves of ``farsync bench byzantine`` from its rows: worst cases, areas, the choice of the
recommended defence, the Markdown summary and the plot.

A defence's curve in a regime is its worst-case accuracy (lowest over the attack suite) at each number of
Byzantine workers ``f``, plotted against ``f / n``, and starts at its clean accuracy at ``f = 0``. Its
**area** is the mean height of that curve over ``[0, f_max / n]`` (trapezoids): 1 for a defence that
nothing moves from perfect accuracy, the chance level for one at chance everywhere.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

__all__ = ["area", "choose", "curves", "markdown", "plot"]

logger = logging.getLogger(__name__)


def _accuracy(rows: list[dict[str, Any]], defence: str, attack: str, f: int) -> float:
    values = [r["final_eval_accuracy"] for r in rows
              if (r["defence"], r["attack"], r["f"]) == (defence, attack, f)]  # fmt: skip
    return sum(values) / len(values) if values else float("nan")


def area(points: list[tuple[float, float]]) -> float:
    """Mean height of the piecewise-linear curve through ``points`` (``(x, y)``, sorted by ``x``) over its
    ``x`` range; the single ``y`` for one point."""
    if len(points) == 1:
        return points[0][1]
    total = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False))
    return total / (points[-1][0] - points[0][0])


def curves(
    rows: list[dict[str, Any]], defences: list[str], attacks: list[str], fractions: list[int], n: int = 16
) -> dict[str, dict[str, Any]]:
    """Per defence: clean accuracy, the plain mean's clean accuracy (``clean_reference``), and per ``f``
    (as a string, for JSON) the accuracy under every attack, the worst and its attack; then the area."""
    reference = _accuracy(rows, "mean", "none", 0)
    table: dict[str, dict[str, Any]] = {}
    for defence in defences:
        clean = _accuracy(rows, defence, "none", 0)
        entry: dict[str, Any] = {"defence": defence, "clean": clean, "clean_reference": reference,
                                 "worst": {}, "worst_attack": {}, "by_attack": {}}  # fmt: skip
        points = [(0.0, clean)]
        for f in sorted(fractions):
            by_attack = {attack: _accuracy(rows, defence, attack, f) for attack in attacks}
            worst_attack = min(by_attack, key=lambda a: by_attack[a])
            entry["by_attack"][str(f)] = by_attack
            entry["worst"][str(f)] = by_attack[worst_attack]
            entry["worst_attack"][str(f)] = worst_attack
            points.append((f / n, by_attack[worst_attack]))
        entry["area"] = area(points)
        table[defence] = entry
    return table


def choose(tables: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The defence with the largest mean area over the regimes (among those run in every regime)."""
    regimes = list(tables)
    common = [d for d in tables[regimes[0]] if all(d in tables[r] for r in regimes)]
    return max(common, key=lambda d: sum(tables[r][d]["area"] for r in regimes) / len(regimes))


_TITLES = {
    "sync": "Synchronous SGD, worker momentum {momentum}: batch 32, lr {lr} ({schedule}), {steps} steps",
    "diloco": "DiLoCo: H = 10 AdamW inner steps, outer Nesterov lr 0.7 momentum 0.9, batch 32, {steps} steps",
}


def _regime_lines(regime: str, table: dict[str, dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    fractions = [str(f) for f in meta["fractions"]]
    n = meta["num_workers"]
    schedule = meta.get("sync_schedule", "constant")
    if schedule == "cosine":
        schedule = "warm-up 20 steps, then cosine decay to a tenth"
    title = _TITLES[regime].format(momentum=meta["worker_momentum"], steps=meta["steps"][regime],
                                   lr=meta.get("sync_lr", 0.1), schedule=schedule)  # fmt: skip
    ordered = sorted(table.values(), key=lambda e: -e["area"])
    reference = ordered[0]["clean_reference"]
    lines = [f"## {title}", "", f"Worst case over the attacks at f of {n} Byzantine; `area`: mean height of the "
             f"curve from f = 0 (clean) to {fractions[-1]}/{n}; the plain mean's clean accuracy is "
             f"{reference:.3f}.", "",
             "| defence | clean | " + " | ".join(f"f={f}" for f in fractions) + " | area | worst attack at f="
             + fractions[-1] + " |", "|---|---|" + "---|" * len(fractions) + "---|---|"]  # fmt: skip
    for e in ordered:
        cells = " | ".join(f"{e['worst'][f]:.3f}" for f in fractions)
        lines.append(f"| {e['defence']} | {e['clean']:.3f} | {cells} | **{e['area']:.3f}** | "
                     f"{e['worst_attack'][fractions[-1]]} |")  # fmt: skip
    for f in fractions:
        attacks = meta["attacks"]
        lines += ["", f"Every attack at f = {f}:", "", "| defence | " + " | ".join(attacks) + " |",
                  "|---|" + "---|" * len(attacks)]  # fmt: skip
        for e in ordered:
            lines.append(
                f"| {e['defence']} | " + " | ".join(f"{e['by_attack'][f][a]:.3f}" for a in attacks) + " |"
            )
    return [*lines, ""]


def _noise_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["## Honest noise-to-signal ratio (clean run of the plain mean)", "",
             "RMS distance of the honest workers' vectors to their mean over the norm of the mean, averaged "
             "over the first and the last tenth of the rounds.", "",
             "| regime | sent, start | sent, end | raw update, start | raw update, end |", "|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        if row["defence"] == "mean" and row["attack"] == "none" and not row.get("label"):
            sent, raw = row["noise_to_signal_sent"], row["noise_to_signal_raw"]
            lines.append(f"| {row['regime']} | {sent['start']:.2f} | {sent['end']:.2f} | {raw['start']:.2f} | "
                         f"{raw['end']:.2f} |")  # fmt: skip
    return [*lines, ""]


def _comparison_lines(result: dict[str, Any]) -> list[str]:
    comparisons = result["comparisons"]
    if not comparisons:
        return []
    f = max(result["meta"]["fractions"])
    lines = [f"## Does worker momentum matter? (f = {f})", "",
             "| variant | defence | clean | worst | worst attack | same defence and attacks in the main regime |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    labels = sorted({r["label"] for r in comparisons})
    for label in labels:
        subset = [r for r in comparisons if r["label"] == label]
        regime = subset[0]["regime"]
        for defence in sorted({r["defence"] for r in subset}):
            mine = [r for r in subset if r["defence"] == defence]
            clean = next(r["final_eval_accuracy"] for r in mine if r["attack"] == "none")
            attacked = [r for r in mine if r["attack"] != "none"]
            worst = min(attacked, key=lambda r: r["final_eval_accuracy"])
            attacks = {r["attack"] for r in attacked}
            same = [r["final_eval_accuracy"] for r in result["rows"]
                    if (r["regime"], r["defence"], r["f"]) == (regime, defence, f) and r["attack"] in attacks]  # fmt: skip
            main = f"{min(same):.3f}" if same else "not run"
            lines.append(f"| {label} | {defence} | {clean:.3f} | **{worst['final_eval_accuracy']:.3f}** | "
                         f"{worst['attack']} | {main} |")  # fmt: skip
    return [*lines, ""]


def markdown(result: dict[str, Any]) -> str:
    """The summary page (benchmarks/results/byzantine.md)."""
    meta, tables = result["meta"], result["tables"]
    chosen = meta["chosen"]
    lines = [
        f"# Byzantine robustness: breakdown curves (MLP on MNIST 5k, {meta['num_workers']} workers)",
        "",
        "Command: `farsync bench byzantine" + (" --quick" if meta["quick"] else "") + "`"
        + ("" if meta.get("full_grid", True) else " on part of the full grid (`farsync.bench.byzantine.run(out, False, "
           "committed_grid())`: the defences, attacks, fractions and steps below; the full grid has 9 defences, 12 attacks, "
           "f = 1, 3, 5, 7 and 200 / 100 steps, and its comparisons every attack)")
        + f" (simulated in one process, see `farsync.bench.byzantine_sim`); seed 0; "
        f"{meta['num_runs']} runs, {meta['cpu_seconds']:.0f} CPU seconds. Attacks: "
        + ", ".join(f"`{a}`" for a in meta["attacks"]) + ".",
        "",
        f"Largest mean area over both regimes: **{chosen['defence']}** (`" + " ".join(chosen["settings"]) + "`), "
        "what `aggregation.rule = \"robust\"` selects.",
        "",
        "![worst-case accuracy against the Byzantine fraction](byzantine_curve.png)",
        "",
        *_target_lines(meta["targets"]),
    ]  # fmt: skip
    for regime, table in tables.items():
        lines += _regime_lines(regime, table, meta)
    lines += _comparison_lines(result)
    lines += _noise_lines(result["rows"])
    lines += ["Verification of the shard owners (`aggregation.verify_fraction = 0.25`) on the chosen defence, "
              "threaded runs through the real reducers, no attacker:", "",
              "| regime | steps | accuracy | verify bytes per worker | other bytes per worker | extra |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for regime, cost in meta["verification"].items():
        lines.append(f"| {regime} | {cost['num_steps']} | {cost['final_eval_accuracy']:.3f} | "
                     f"{cost['verify_bytes_per_worker']:.0f} | {cost['other_bytes_per_worker']:.0f} | "
                     f"{100 * cost['extra_fraction']:.1f}% |")  # fmt: skip
    return "\n".join([*lines, ""])


MAX_CPU_HOURS = 2.5
"""Issue 19: the whole benchmark in at most this many hours of runs (CPU time of the runs)."""


def targets(
    tables: dict[str, dict[str, dict[str, Any]]],
    verification: dict[str, dict[str, Any]],
    rows: list[dict[str, Any]],
    cpu_seconds: float,
) -> dict[str, dict[str, Any]]:
    """Issue 19's targets, each ``{"value", "target", "met"}``, computed from the tables and rows.

    The accuracy targets read, per regime, the defence with the largest area (its worst case against the
    plain mean's clean accuracy, ``clean_reference``); a fraction missing from the tables misses its
    target. The noise-to-signal target reads the synchronous regime's clean run of the plain mean (the
    momenta sent), at the start and at the end of training."""

    def best(regime: str) -> dict[str, Any]:
        return max(tables[regime].values(), key=lambda t: t["area"])

    def gap(regime: str, f: int) -> float:
        entry = best(regime)
        worst = entry["worst"].get(str(f))
        return float("-inf") if worst is None else float(worst) - float(entry["clean_reference"])

    out: dict[str, dict[str, Any]] = {}
    sync_gaps = {f: round(gap("sync", f), 4) for f in (1, 3, 5)}
    out["sync: worst case within 3 points of clean at f <= 5 of 16"] = {
        "value": {"defence": best("sync")["defence"], "gap_by_f": sync_gaps},
        "target": ">= -0.03 at f = 1, 3, 5",
        "met": all(g >= -0.03 for g in sync_gaps.values()),
    }
    at_seven = float(best("sync")["worst"].get("7", 0.0))
    out["sync: worst case >= 0.80 at 7 of 16"] = {
        "value": {"defence": best("sync")["defence"], "worst": round(at_seven, 4)},
        "target": ">= 0.80",
        "met": at_seven >= 0.80,
    }
    diloco_gap = round(gap("diloco", 7), 4)
    out["diloco: worst case within 3 points of clean at 7 of 16"] = {
        "value": {"defence": best("diloco")["defence"], "gap": diloco_gap},
        "target": ">= -0.03",
        "met": diloco_gap >= -0.03,
    }
    extra = {regime: round(c["extra_fraction"], 4) for regime, c in verification.items()}
    out["verification bytes <= +25%"] = {"value": extra, "target": "<= 0.25",
                                         "met": all(v <= 0.25 for v in extra.values())}  # fmt: skip
    hours = cpu_seconds / 3600
    out["whole benchmark <= 2.5 h of runs"] = {"value": {"cpu_hours": round(hours, 3)},
                                               "target": f"<= {MAX_CPU_HOURS}", "met": hours <= MAX_CPU_HOURS}  # fmt: skip
    clean = [r for r in rows if (r["regime"], r["defence"], r["attack"]) == ("sync", "mean", "none")]
    ratio = clean[0].get("noise_to_signal_sent") if clean else None
    out["sync: honest noise-to-signal < 2 with worker momentum"] = {
        "value": ratio, "target": "< 2 at start and end",
        "met": ratio is not None and ratio["start"] < 2 and ratio["end"] < 2,
    }  # fmt: skip
    return out


def _target_lines(found: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "## Targets (computed from the rows above)",
        "",
        "| target | figure | verdict |",
        "|---|---|---|",
    ]
    for name, entry in sorted(found.items(), key=lambda item: item[1]["met"]):  # shortfalls first
        figure = json.dumps(entry["value"]).replace("|", "/")
        lines.append(
            f"| {name} ({entry['target']}) | `{figure}` | {'met' if entry['met'] else '**MISSED**'} |"
        )
    return [*lines, ""]


def plot(tables: dict[str, dict[str, dict[str, Any]]], path: Path, n: int) -> None:
    """Worst-case accuracy against ``f / n``, one panel per regime, with the plain mean's clean accuracy."""
    import matplotlib  # imported here: slow, and only the report needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 4.5), squeeze=False)
    for axis, (regime, table) in zip(axes[0], tables.items(), strict=True):
        reference = 0.0
        for entry in sorted(table.values(), key=lambda e: -e["area"]):
            fractions = sorted(int(f) for f in entry["worst"])
            xs = [0.0] + [f / n for f in fractions]
            ys = [entry["clean"]] + [entry["worst"][str(f)] for f in fractions]
            axis.plot(xs, ys, marker="o", label=f"{entry['defence']} ({entry['area']:.3f})")
            reference = entry["clean_reference"]
        axis.axhline(reference, color="black", linestyle="--", label="clean (plain mean)")
        axis.axhline(0.1, color="grey", linestyle=":", label="chance")
        axis.set_title(regime)
        axis.set_xlabel("Byzantine fraction f / n")
        axis.set_ylabel("worst-case accuracy")
        axis.set_ylim(0, 1)
        axis.legend(fontsize=6, loc="lower left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
