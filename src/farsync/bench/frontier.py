"""``farsync bench frontier``: which method reaches a good model soonest on a slow link.

The low-communication methods exist to win on wall-clock, not on tokens: on a link where one data-parallel
all-reduce costs many inner steps, a method that sends less finishes its tokens sooner, and the question a
user asks is which loss each method reaches in the time they have. This benchmark answers it side by side in
one run, on three links where one DDP all-reduce takes 1x, 10x and 100x an inner step.

Regime: ``bench quality``'s (a 137k-parameter byte-level GPT, M = 4 workers, global batch 32 sequences of 64
bytes, 1,200 steps, inner AdamW at DDP's tuned learning rate 8e-3). Time is the virtual clock with
**modelled compute** (``network.step_time_s``, :mod:`farsync.comm.clock`): every inner step costs
:data:`STEP_S` seconds and every collective its link-model time, so the figures do not depend on how busy
this machine was (they are what a worker whose step takes 0.1 s would see); the links are set from the
model's size so that the ratios are exact. Only inner steps cost compute in this mode (evaluation, outer
steps and compression encode/decode are free), which favours no method: all of them pay the same steps.

Methods, each with its own knobs (recipes pinned, not the default rule, so a rule change cannot silently
change a cached row): DDP; synchronous DiLoCo at H = 30, 100, 300 (outer recipe of the rule at that M and H);
Streaming DiLoCo with 4-bit fragments; DiLoCoX as shipped; SparseLoCo; DiLoCo with the eager and the naive
one-step-delay overlap (Kale et al. 2025). Every method trains the same 1,200 steps (equal tokens) on every
link; what differs is the time they take.

Methods whose every collective blocks the training thread (DDP, synchronous DiLoCo, SparseLoCo) train the
same trajectory on every link and differ only in time, and with modelled compute and no latency their time
is exactly ``steps x STEP_S + (comm on the reference link) x (ratio / reference ratio)`` (every collective's
link time is proportional to 1 / bandwidth). They run once, on the fastest link, and are *retimed* for the
others (:func:`retime`; a test checks the retimed DDP against a run on the slow link). Overlapped and
adaptive methods (Streaming, DiLoCoX, eager, naive) run on every link: how much of their communication hides
behind compute depends on the link.

Reported per link: final loss and the time to finish; the loss each method holds at **equal wall-clock**
(``T_eq``, the compute of the 1,200 steps plus 10%: what a method that hides its communication needs; a
slower method is read off its evaluation curve, and DDP is also run with as many steps as fit in ``T_eq``, its schedule complete, so DDP is not judged
half-way through its cosine); the wall-clock to reach synchronous DiLoCo's (H = 30) final loss; bytes per
worker; compute utilisation including the final drain. One plot per link (loss against wall-clock).

``--quick``: the 32-wide GPT of ``bench quality --quick``, 150 steps, H in {15, 50}, two links (1x, 100x).
``FARSYNC_FRONTIER_METHODS`` (comma-separated) restricts the methods run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from farsync.bench.common import markdown_table, run_cached, smoke, write_results
from farsync.config import outer_recipe

__all__ = ["METHODS", "run"]

STEP_S = 0.1
"""Modelled seconds of one inner step (a small GPU step); links are derived from it."""
RATIOS = (1.0, 10.0, 100.0)
"""Links: seconds of one DDP fp32 ring all-reduce / seconds of one inner step."""
M = 4
GLOBAL_BATCH = 32
EVAL_WINDOWS = 128
T_EQ_FACTOR = 1.1
"""The equal wall-clock budget: the modelled compute of all the steps plus 10% (a method that hides its
communication finishes inside it); fixed, so a row does not depend on which other methods ran."""
DDP_LR = 8e-3
"""DDP's best of 2e-3..1.6e-2 in ``bench quality``; the inner learning rate of every method here."""


def _recipe(m: int, h: int, lr: float | None = None, momentum: float | None = None) -> list[str]:
    """DiLoCo at H = ``h`` with the given outer recipe (default: the synchronous rule's for M and H)."""
    if lr is None or momentum is None:
        lr, momentum = outer_recipe(m, h)
    return [
        "algorithm.name=diloco",
        f"algorithm.num_inner_steps={h}",
        f"algorithm.outer_lr={lr}",
        f"algorithm.outer_momentum={momentum}",
    ]


def methods(quick: bool) -> dict[str, list[str]]:
    """Name -> overrides of every method (module docstring); H values shrink with ``--quick``."""
    h_short, h_values = (15, (15, 50)) if quick else (30, (30, 100, 300))
    short = _recipe(M, h_short)
    named: dict[str, list[str]] = {"ddp": ["algorithm.name=ddp"]}
    for h in h_values:
        named[f"diloco_h{h}"] = _recipe(M, h)
    named["streaming_int4"] = [
        *short,
        "algorithm.name=streaming",
        "compression.kind=int4",
        "algorithm.num_fragments=2",
    ]
    named["dilocox"] = [*short, "algorithm.name=dilocox"]
    # SparseLoCo's best of bench quality's sweep (density 1/64 per chunk, decay 0.95, outer lr 2, no momentum).
    named["sparseloco"] = [
        *[o for o in short if not o.startswith(("algorithm.outer_lr", "algorithm.outer_momentum"))],
        "algorithm.outer_lr=2.0",
        "algorithm.outer_momentum=0.0",
        "compression.kind=sparseloco",
        "compression.topk_fraction=0.015625",
        "compression.error_decay=0.95",
    ]
    # The overlap rules at their own tuned recipes (bench quality's overlap section, M = 4, H = 30).
    named["eager"] = [*_recipe(M, h_short, 0.7, 0.3), "algorithm.delay=1", "algorithm.overlap=eager"]
    named["naive"] = [*_recipe(M, h_short, 0.5, 0.5), "algorithm.delay=1", "algorithm.overlap=naive"]
    asked = [m for m in os.environ.get("FARSYNC_FRONTIER_METHODS", "").split(",") if m]
    return {name: o for name, o in named.items() if not asked or name in asked or name == "ddp"}


METHODS = tuple(methods(False))


def _model(quick: bool) -> list[str]:
    if smoke():
        return ["model.num_layers=2", "model.width=16", "model.num_heads=2", "model.context_length=16"]
    if quick:
        return ["model.num_layers=2", "model.width=32", "model.num_heads=2", "model.context_length=32"]
    return ["model.num_layers=2", "model.width=64", "model.num_heads=4", "model.context_length=64"]


def _steps(quick: bool) -> int:
    return 60 if smoke() else 150 if quick else 1200


def _base(quick: bool, bandwidth_bps: float, steps: int) -> list[str]:
    batch = GLOBAL_BATCH // M
    full = _steps(quick)
    return [
        *_model(quick),
        f"num_workers={M}",
        "seed=0",
        f"train.num_steps={steps}",
        f"train.batch_size={batch}",
        f"train.lr={DDP_LR}",
        f"train.warmup_steps={max(1, steps // 20)}",
        f"train.eval_every={max(1, full // 20)}",
        f"train.num_eval_batches={EVAL_WINDOWS // batch}",
        f"network.bandwidth={bandwidth_bps:.1f}",
        "network.emulation='virtual'",
        f"network.step_time_s={STEP_S}",
        "checkpoint.every_rounds=0",
        f"data.max_bytes={300_000 if smoke() else 4_000_000}",
    ]


def link_bandwidth_bps(num_params: int, ratio: float, num_workers: int = M) -> float:
    """Bits/s at which one DDP step's fp32 ring all-reduce (+ its 4-byte weight) takes ``ratio x STEP_S``."""
    payload = 4 * (num_params + 1)
    return 8 * 2 * (num_workers - 1) * payload / (num_workers * ratio * STEP_S)


def _num_params(quick: bool, runs_dir: Path) -> int:
    """Parameters of the benchmark's model, from a 2-step run (cached like every run)."""
    probe = run_cached("probe", [*_base(quick, 1e9, 2), "algorithm.name=ddp"], runs_dir, mode="threads")
    return int(probe["num_params"])


def eval_points(run_dir: Path) -> list[tuple[int, float, float]]:
    """(step, worker 0's emulated wall seconds, global eval loss) at every evaluation; the last at the end."""
    walls: dict[int, float] = {0: 0.0}
    points: list[tuple[int, float]] = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("worker", 0) != 0:
            continue
        if record.get("kind") == "step":
            walls[int(record["step"])] = float(record["wall_s"])
        elif record.get("kind") == "eval":
            points.append((int(record["step"]), float(record["eval_loss"])))
    summary = json.loads((run_dir / "summary.json").read_text())
    out = [(step, walls.get(step, 0.0), loss) for step, loss in points]
    if out:  # the final evaluation follows the final drain: place it at the run's end
        step, wall, loss = out[-1]
        out[-1] = (step, max(wall, float(summary["wall_s"])), loss)
    return out


def retime(points: list[tuple[int, float, float]], factor: float) -> list[tuple[int, float, float]]:
    """A blocking-only run's evaluation points on a link ``factor`` times slower (module docstring): the
    modelled compute ``step x STEP_S`` stays, the communication time before each point scales."""
    return [(step, step * STEP_S + factor * (wall - step * STEP_S), loss) for step, wall, loss in points]


def time_to(curve: list[tuple[float, float]], target: float) -> float | None:
    """First wall time at which the curve is at or below ``target`` (None if never)."""
    return next((wall for wall, loss in curve if loss <= target), None)


def loss_at(curve: list[tuple[float, float]], wall: float) -> float | None:
    """The last evaluated loss at or before ``wall`` (None before the first evaluation)."""
    seen = [loss for at, loss in curve if at <= wall + 1e-9]
    return seen[-1] if seen else None


def _drain_s(run_dir: Path, summary: dict[str, Any]) -> float:
    """Comm wait after the last round record (an overlapped method's final drain), mean over workers."""
    last: dict[int, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "round":
            last[int(record["worker"])] = float(record.get("comm_wait_s", 0.0))
    if not last:
        return 0.0
    return max(0.0, float(summary["comm_wait_s"]) - sum(last.values()) / len(last))


class _Bench:
    def __init__(self, out_dir: Path, quick: bool) -> None:
        self.quick = quick
        self.runs_dir = out_dir / ("frontier_runs_quick" if quick else "frontier_runs")
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.ratios = (1.0, 100.0) if quick else RATIOS
        self.methods = methods(quick)
        self.num_params = _num_params(quick, self.runs_dir)

    def run(self, name: str, ratio: float, extra: list[str], steps: int | None = None) -> dict[str, Any]:
        bps = link_bandwidth_bps(self.num_params, ratio)
        steps = _steps(self.quick) if steps is None else steps
        row = run_cached(name, [*_base(self.quick, bps, steps), *extra], self.runs_dir, mode="threads")
        run_dir = self.runs_dir / name
        # An overlapped method's last synchronisation drains in finish(), after the summary's wall time:
        # the run is over only when it has landed.
        row["final_drain_s"] = _drain_s(run_dir, row)
        row["wall_s"] = float(row["wall_s"]) + row["final_drain_s"]
        points = eval_points(run_dir)
        if points:
            step, wall, loss = points[-1]
            points[-1] = (step, max(wall, row["wall_s"]), loss)
        row["points"] = points
        row["bandwidth_bps"] = bps
        row["ratio"] = ratio
        return _timed(row)

    def method_row(self, method: str, ratio: float) -> dict[str, Any]:
        """``method`` on the link of ``ratio``: run there, or retimed from the fastest link's run."""
        reference = min(self.ratios)
        if not is_blocking(method) or ratio == reference:
            return self.run(f"{method}_{ratio:g}x", ratio, self.methods[method])
        row = dict(self.method_row(method, reference))
        factor = ratio / reference
        comm = float(row["wall_s"]) - float(row["compute_s"])
        row.update(
            points=retime(row["points"], factor),
            wall_s=float(row["compute_s"]) + factor * comm,
            comm_wait_s=float(row["comm_wait_s"]) * factor,
            bandwidth_bps=link_bandwidth_bps(self.num_params, ratio),
            ratio=ratio,
            retimed_from=f"{reference:g}x",
        )
        return _timed(row)


def is_blocking(method: str) -> bool:
    """True for the methods whose every collective blocks (module docstring: they are retimed)."""
    return method in ("ddp", "sparseloco") or method.startswith("diloco_h")


def _timed(row: dict[str, Any]) -> dict[str, Any]:
    row["curve"] = [(wall, loss) for _, wall, loss in row["points"]]
    row["utilization_with_drain"] = float(row["compute_s"]) / max(float(row["wall_s"]), 1e-12)
    return row


def _link_section(bench: _Bench, ratio: float) -> tuple[dict[str, Any], list[str]]:
    rows: dict[str, dict[str, Any]] = {}
    for method in bench.methods:
        row = bench.method_row(method, ratio)
        row["method"] = method
        rows[method] = row
    t_eq = T_EQ_FACTOR * _steps(bench.quick) * STEP_S
    # DDP with its whole schedule inside T_eq: each DDP step costs a step plus one all-reduce.
    ddp_step_s = float(rows["ddp"]["wall_s"]) / _steps(bench.quick)
    fitted_steps = max(1, int(t_eq / ddp_step_s))
    if fitted_steps < _steps(bench.quick):
        fitted = bench.run(f"ddp_fitted_{ratio:g}x", ratio, ["algorithm.name=ddp"], steps=fitted_steps)
        fitted["method"] = f"ddp ({fitted_steps} steps)"
        rows["ddp_fitted"] = fitted
    short = next((name for name in rows if name.startswith("diloco_h")), None)
    target = float(rows[short]["final_eval_loss"]) if short else float("nan")
    for row in rows.values():
        row["loss_at_t_eq"] = loss_at(row["curve"], t_eq)
        row["time_to_diloco_loss_s"] = time_to(row["curve"], target)
        row["mb_sent"] = float(row["bytes_sent_per_worker"]) / 1e6
        row["bytes_vs_ddp"] = float(rows["ddp"]["bytes_sent_per_worker"]) / max(
            float(row["bytes_sent_per_worker"]), 1.0
        )
    ddp_time = rows["ddp"]["time_to_diloco_loss_s"]
    diloco_best = min(
        (
            r["time_to_diloco_loss_s"]
            for n, r in rows.items()
            if n.startswith("diloco_h") and r["time_to_diloco_loss_s"]
        ),
        default=None,
    )
    for row in rows.values():
        reached = row["time_to_diloco_loss_s"]
        row["sooner_than_ddp"] = ddp_time / reached if ddp_time and reached else None
        row["sooner_than_best_diloco"] = diloco_best / reached if diloco_best and reached else None
    summary = {
        "ratio": ratio,
        "bandwidth_bps": link_bandwidth_bps(bench.num_params, ratio),
        "t_eq_s": t_eq,
        "target": target,
        "target_from": short,
        "quick": bench.quick,
        "rows": {
            name: {k: v for k, v in row.items() if k not in ("overrides", "points")}
            for name, row in rows.items()
        },
    }
    summary["pick"] = _pick(rows, t_eq)
    return summary, _link_text(summary, rows, ratio)


def _pick(rows: dict[str, dict[str, Any]], t_eq: float) -> dict[str, Any]:
    """The method with the lowest loss at T_eq, and the one soonest at DiLoCo's final loss."""
    at_t = [(r["loss_at_t_eq"], n) for n, r in rows.items() if r["loss_at_t_eq"] is not None]
    soon = [
        (r["time_to_diloco_loss_s"], n) for n, r in rows.items() if r["time_to_diloco_loss_s"] is not None
    ]
    return {
        "lowest_loss_at_t_eq": min(at_t)[1] if at_t else None,
        "soonest_to_diloco_loss": min(soon)[1] if soon else None,
    }


COLUMNS = [
    ("method", "method", ""),
    ("final loss", "final_eval_loss", ".4f"),
    ("wall s", "wall_s", ".1f"),
    ("loss at T_eq", "loss_at_t_eq", ".4f"),
    ("s to DiLoCo's loss", "time_to_diloco_loss_s", ".1f"),
    ("sooner than DDP", "sooner_than_ddp", ".1f"),
    ("sooner than best-H DiLoCo", "sooner_than_best_diloco", ".2f"),
    ("MB sent/worker", "mb_sent", ".3f"),
    ("bytes vs DDP", "bytes_vs_ddp", ".0f"),
    ("compute util (with drain)", "utilization_with_drain", ".1%"),
    ("retimed from", "retimed_from", ""),
]


def _link_text(summary: dict[str, Any], rows: dict[str, dict[str, Any]], ratio: float) -> list[str]:
    pick = summary["pick"]
    return [
        "",
        f"## Link where one DDP all-reduce takes {ratio:g}x an inner step "
        f"({summary['bandwidth_bps'] / 1e6:.3f} Mbit/s per worker)",
        "",
        f"T_eq = {summary['t_eq_s']:.1f} s (the modelled compute of all the steps + 10%); target loss "
        f"{summary['target']:.4f} (`{summary['target_from']}`'s final).",
        "",
        markdown_table(list(rows.values()), COLUMNS),
        "",
        f"Lowest loss at T_eq: **{pick['lowest_loss_at_t_eq']}**; soonest at DiLoCo's final loss: "
        f"**{pick['soonest_to_diloco_loss']}**.",
        "",
        f"![loss against wall-clock](frontier_{ratio:g}x{'_quick' if summary.get('quick') else ''}.png)",
    ]


def _plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, row in summary["rows"].items():
        if row["curve"]:
            xs, ys = zip(*row["curve"], strict=True)
            axis.plot(xs, ys, "o-", markersize=2, label=row["method"] if name != "ddp_fitted" else name)
    axis.axvline(summary["t_eq_s"], color="grey", linestyle=":", label="T_eq")
    axis.set_xscale("log")
    axis.set_xlabel("emulated wall-clock s (modelled 0.1 s inner step)")
    axis.set_ylabel("global eval loss")
    axis.set_title(f"DDP all-reduce = {summary['ratio']:g}x an inner step, M = {M}")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _targets(links: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Issue 17's frontier targets, on the slowest link."""
    slow = links.get(f"{max(RATIOS):g}x")
    if slow is None:
        return {}
    rows = slow["rows"]
    low_comm = {
        n: r for n, r in rows.items() if n not in ("ddp", "ddp_fitted") and not n.startswith("diloco_h")
    }
    best = min(
        low_comm.items(),
        key=lambda item: item[1]["time_to_diloco_loss_s"] or float("inf"),
        default=(None, None),
    )
    targets: dict[str, Any] = {}
    if best[0] is not None and best[1] is not None:
        sooner_ddp, sooner_diloco = best[1]["sooner_than_ddp"], best[1]["sooner_than_best_diloco"]
        targets["best_low_comm_method_100x"] = [best[0], best[0] in ("dilocox", "sparseloco")]
        targets["best_50x_sooner_than_ddp_100x"] = [sooner_ddp, sooner_ddp is not None and sooner_ddp >= 50]
        targets["best_2x_sooner_than_best_diloco_100x"] = [
            sooner_diloco,
            sooner_diloco is not None and sooner_diloco >= 2,
        ]
    return targets


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    quick = quick or smoke()
    begin = time.perf_counter()
    bench = _Bench(out_dir, quick)
    lines = ["# farsync bench frontier" + (" (quick)" if quick else ""), "", __doc__.split("\n\n")[1]]
    links: dict[str, dict[str, Any]] = {}
    for ratio in bench.ratios:
        summary, text = _link_section(bench, ratio)
        key = f"{ratio:g}x"
        links[key] = summary
        _plot(summary, out_dir / f"frontier_{key}{'_quick' if quick else ''}.png")
        lines += text
    targets = _targets(links) if not quick else {}
    lines += [
        "",
        "## Which method to pick",
        "",
        *[
            f"- {key} link: lowest loss at equal wall-clock **{s['pick']['lowest_loss_at_t_eq']}**, soonest at "
            f"synchronous DiLoCo's final loss **{s['pick']['soonest_to_diloco_loss']}**."
            for key, s in links.items()
        ],
    ]
    if targets:
        lines += [
            "",
            "Targets: "
            + ", ".join(f"{k}: {v[0]} ({'met' if v[1] else 'MISSED'})" for k, v in targets.items()),
        ]
    lines += [
        "",
        f"Command: `farsync bench frontier{' --quick' if quick else ''}` "
        f"({time.perf_counter() - begin:.0f} s real for what was not cached).",
    ]
    data = {
        "quick": quick,
        "step_s": STEP_S,
        "num_params": bench.num_params,
        "links": links,
        "targets": targets,
    }
    write_results(out_dir, "frontier_quick" if quick else "frontier", data, "\n".join(lines))
    print("\n".join(lines))
    return data
