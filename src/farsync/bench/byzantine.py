"""``farsync bench byzantine``: every aggregation rule, with and without pre-aggregation, judged by its worst
case over an attack suite, in two regimes.

Setting (issue 13): an MLP on scikit-learn's digits, 16 workers as threads of which 7 (the highest ranks)
are Byzantine, all through the real reducers over gloo (the butterfly for robust rules, the ring all-reduce
for the mean) with the attack simulation of :mod:`farsync.sim`.

- **sync** (DDP): every step, the gradients are aggregated and every worker applies the aggregate with SGD
  (lr 0.1, momentum 0.9), batch 16, 300 steps (:mod:`farsync.bench.byzantine_sync`).
- **diloco**: DiLoCo with H = 10 AdamW inner steps (lr 0.01), outer Nesterov SGD (lr 0.7, momentum 0.9),
  60 steps (6 rounds), batch 32: the setting of this benchmark before issue 13.

Attack suite (:data:`ATTACKS`): sign flip x1000 and x1, Gaussian and constant vectors (1000), ALIE with the
z of Baruch et al. for 16 / 7, inner-product manipulation with eps 0.5 and 0.1, mimic, min-max and min-sum
(std perturbation), label flipping and stale updates. Defences (:data:`DEFENCES`): the mean, and the
median, trimmed mean (beta = 0.44: drops 7 of 16 at each end), Krum (``f`` as large as allowed) and
CenteredClip, each alone, after nearest-neighbour mixing (NNM, ``f`` = 7) and after bucketing (``s`` = 2);
CenteredClip with four radii: ``tau = 1`` times the median distance to the coordinate-wise median (the
default), ``tau = 1`` and ``tau = 0.5`` times the (n - f)-th-neighbour distance, an absolute ``tau = 1``
(the synchronous regime runs a subset, :data:`SYNC_DEFENCES`). A defence's **worst case** is its lowest
final accuracy over the suite; its **gap** is that minus the plain mean's clean accuracy. The
recommended defence (what ``aggregation.rule = "robust"`` selects, :data:`farsync.config.ROBUST_PRESET`) is
the one with the highest mean over the two regimes of its worst case (:func:`_choose`). The JSON also has
the bytes of verifying a quarter of the shard owners per round on that defence (channel ``verify``).

Cost: one seed (0) for the whole grid, because one synchronous run (300 steps x 3 collectives of 16
threads) takes about a minute on two cores; the DiLoCo regime's :data:`NUM_FINALISTS` best defences are
run again with :data:`CONFIRM_SEEDS`. The seconds of every run are in the JSON. Finished runs are
cached by their varying settings (``FARSYNC_BENCH_CACHE``, default a ``farsync-byzantine`` folder in the
temporary directory) so an interrupted sweep resumes where it stopped; use a fresh folder after changing
the code or a default the runs rely on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from farsync.bench.byzantine_sync import SYNC_LR, SYNC_MOMENTUM, run_sync
from farsync.bench.common import smoke
from farsync.comm.groups import open_store
from farsync.config import RunConfig, load_config
from farsync.launch.local import run_threads
from farsync.report.summary import build_summary
from farsync.train import read_results

__all__ = [
    "ATTACKS",
    "CACHE_ENV",
    "CONFIRM_SEEDS",
    "DEFENCES",
    "NUM_BYZANTINE",
    "NUM_FINALISTS",
    "NUM_WORKERS",
    "REGIMES",
    "SYNC_DEFENCES",
    "VERIFY_FRACTION",
    "run",
]

logger = logging.getLogger(__name__)

NUM_WORKERS = 16
NUM_BYZANTINE = 7
CACHE_ENV = "FARSYNC_BENCH_CACHE"

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
_RULES: dict[str, list[str]] = {
    "median": ["aggregation.rule=median"],
    "trimmed_mean": ["aggregation.rule=trimmed_mean", "aggregation.beta=0.44"],
    "krum": ["aggregation.rule=krum"],
    "centered_clip": [_CC, "aggregation.tau_scale=median"],
    "centered_clip (neighbors radius)": [_CC, "aggregation.tau_scale=neighbors"],
    "centered_clip (tau 0.5)": [_CC, "aggregation.tau_scale=neighbors", "aggregation.tau=0.5"],
    "centered_clip (fixed radius 1)": [_CC, "aggregation.adaptive_tau=false"],
}
_PREAGGREGATIONS: dict[str, list[str]] = {
    "": [],
    " + nnm": ["aggregation.preaggregation=nnm"],
    " + bucketing": ["aggregation.preaggregation=bucketing", "aggregation.bucket_size=2"],
}
DEFENCES: dict[str, list[str]] = {
    "mean": ["aggregation.rule=mean"],
    **{rule + pre: [*rule_sets, *pre_sets] for rule, rule_sets in _RULES.items() for pre, pre_sets in _PREAGGREGATIONS.items()},
}  # fmt: skip
"""Every defence: label -> ``aggregation.*`` settings."""

SYNC_DEFENCES = (
    "mean",
    "median",
    "median + nnm",
    "krum + nnm",
    "centered_clip (neighbors radius)",
    "centered_clip (neighbors radius) + nnm",
    "centered_clip",
    "centered_clip (tau 0.5)",
    "centered_clip (fixed radius 1)",
)
"""The synchronous regime's defences (a run costs most of a minute, the DiLoCo regime's a few seconds, so
this regime runs a subset). Left out, with the reason: the trimmed mean (with beta = 0.44 it keeps the two
middle values of 16, the median, and of 8 buckets, the median again); bucketing (buckets of 2 with 7 of 16
Byzantine leave up to 7 of 8 buckets holding an attacker, beyond the half that Karimireddy et al. 2022,
arXiv 2006.09365, need for it to help); Krum alone (it needs n >= 2f + 3 = 17 workers for f = 7; after NNM
it is kept). The DiLoCo regime runs all of :data:`DEFENCES`."""

CONFIRM_SEEDS = (1, 2)
"""Seeds added to the DiLoCo regime's best defences (:data:`NUM_FINALISTS`), to confirm their worst case."""
NUM_FINALISTS = 6

VERIFY_FRACTION = 0.25
"""Share of the owners verified per round in the verification-cost rows."""

REGIMES = ("sync", "diloco")

_REGIME_SETTINGS = {
    "sync": ["algorithm.name=ddp", "train.batch_size=16"],
    "diloco": [
        "algorithm.name=diloco",
        "algorithm.num_inner_steps=10",
        "algorithm.outer_lr=0.7",
        "algorithm.outer_momentum=0.9",
        "train.batch_size=32",
        "train.lr=0.01",
        "train.warmup_steps=10",
    ],
}
_STEPS = {"sync": 300, "diloco": 60}


def _config(regime: str, defence: list[str], attack: str, num_steps: int, seed: int) -> RunConfig:
    attackers = list(range(NUM_WORKERS - NUM_BYZANTINE, NUM_WORKERS)) if attack != "none" else []
    overrides = [
        f"num_workers={NUM_WORKERS}",
        f"seed={seed}",
        "model.kind=mlp",
        "model.width=64",
        "data.kind=digits",
        f"train.num_steps={num_steps}",
        "train.eval_every=100000",
        "network.emulation=off",
        "checkpoint.every_rounds=0",
        *_REGIME_SETTINGS[regime],
        *defence,
        *(ATTACKS[attack] if attack != "none" else []),
        f"byzantine.workers={attackers}",
    ]
    return load_config(None, overrides)


def _run_diloco(config: RunConfig) -> dict[str, Any]:
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


class _Cache:
    """Finished rows by a digest of the regime and the resolved configuration (JSON lines)."""

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


def _one(
    cache: _Cache,
    regime: str,
    defence: str,
    attack: str,
    num_steps: int,
    seed: int,
    settings_of_defence: list[str] | None = None,
) -> dict[str, Any]:
    """One run (from the cache when it is there); ``settings_of_defence`` defaults to ``DEFENCES[defence]``."""
    defence_settings = DEFENCES[defence] if settings_of_defence is None else settings_of_defence
    # Keyed by the settings that vary, not the resolved config: a new config field elsewhere must not void
    # hours of runs. A change of a default these runs rely on needs a fresh cache (FARSYNC_BENCH_CACHE).
    settings = [*_REGIME_SETTINGS[regime], *defence_settings, *ATTACKS.get(attack, []), f"steps={num_steps}"]
    settings.append(f"seed={seed}")
    digest = hashlib.sha256("\n".join(settings).encode()).hexdigest()[:20]
    cached = cache.get(digest)
    if cached is not None:
        return {**cached, "defence": defence, "attack": attack}
    config = _config(regime, defence_settings, attack, num_steps, seed)
    outcome = run_sync(config) if regime == "sync" else _run_diloco(config)
    row = {"regime": regime, "defence": defence, "attack": attack, "seed": seed, **outcome}
    cache.put(digest, row)
    logger.warning(
        "%-6s %-36s %-12s accuracy %.3f (%.0fs)",
        regime, defence, attack, row["final_eval_accuracy"], row["seconds"],
    )  # fmt: skip
    return row


def _accuracy(rows: list[dict[str, Any]], regime: str, defence: str, attack: str) -> float:
    values = [
        r["final_eval_accuracy"]
        for r in rows
        if (r["regime"], r["defence"], r["attack"]) == (regime, defence, attack)
    ]
    return sum(values) / len(values) if values else float("nan")


def _worst(
    rows: list[dict[str, Any]], regime: str, defences: list[str], attacks: list[str]
) -> list[dict[str, Any]]:
    """Per defence: clean accuracy, worst accuracy over ``attacks`` and its attack, gap to the clean mean."""
    reference = _accuracy(rows, regime, "mean", "none")
    table = []
    for defence in defences:
        by_attack = {attack: _accuracy(rows, regime, defence, attack) for attack in attacks}
        worst_attack = min(by_attack, key=lambda a: by_attack[a])
        table.append({
            "defence": defence,
            "clean": _accuracy(rows, regime, defence, "none"),
            "worst": by_attack[worst_attack],
            "worst_attack": worst_attack,
            "gap_to_clean_mean": by_attack[worst_attack] - reference,
            "by_attack": by_attack,
        })  # fmt: skip
    return sorted(table, key=lambda entry: -entry["worst"])


def _markdown_regime(
    regime: str, table: list[dict[str, Any]], attacks: list[str], meta: dict[str, Any]
) -> list[str]:
    info = meta["regimes"][regime]
    title = {
        "sync": f"Synchronous SGD (DDP): lr {SYNC_LR}, momentum {SYNC_MOMENTUM}, batch 16",
        "diloco": "DiLoCo: H = 10 AdamW inner steps, outer lr 0.7 momentum 0.9, batch 32",
    }[regime]
    lines = [
        f"## {title}, {info['num_steps']} steps, {NUM_BYZANTINE} of {NUM_WORKERS} Byzantine",
        "",
        f"{info['num_runs']} runs, {info['seconds']:.0f} s in all ({info['seconds_per_run']:.0f} s per run); "
        "sorted by worst case. `clean`: no attacker; `gap`: worst minus the plain mean's clean accuracy.",
        "",
        "| defence | clean | worst | gap | worst attack | " + " | ".join(attacks) + " |",
        "|---|---|---|---|---|" + "---|" * len(attacks),
    ]
    for entry in table:
        cells = [f"{entry['by_attack'][a]:.3f}" for a in attacks]
        lines.append(
            f"| {entry['defence']} | {entry['clean']:.3f} | **{entry['worst']:.3f}** | "
            f"{100 * entry['gap_to_clean_mean']:+.1f} | {entry['worst_attack']} | " + " | ".join(cells) + " |"
        )
    return [*lines, ""]


def _choose(
    tables: dict[str, list[dict[str, Any]]], confirmed: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The defence with the highest mean, over the regimes, of its worst-case accuracy.

    The mean rather than the minimum over regimes: when every defence is at chance in one regime (the
    synchronous one, under ALIE-type attacks), the minimum would pick on noise; the mean lets the other
    regime decide and still rewards any defence that survives both. With ``confirmed`` (the DiLoCo
    finalists over three seeds), only those compete, with their three-seed worst case: one seed's ranking
    moves by a few points from seed to seed.
    """
    worst: dict[str, dict[str, float]] = {}
    for regime, table in tables.items():
        for entry in table:
            worst.setdefault(entry["defence"], {})[regime] = entry["worst"]
    complete = {d: w for d, w in worst.items() if len(w) == len(tables)}
    if confirmed:
        complete = {e["defence"]: {**complete[e["defence"]], "diloco": e["worst"]} for e in confirmed
                    if e["defence"] in complete}  # fmt: skip
    best = max(complete, key=lambda d: sum(complete[d].values()) / len(tables))
    return {"defence": best, "settings": DEFENCES[best], "worst": complete[best]}


def _confirm(
    cache: _Cache, rows: list[dict[str, Any]], table: list[dict[str, Any]], attacks: list[str], num_steps: int
) -> list[dict[str, Any]]:
    """The DiLoCo regime's best defences again with :data:`CONFIRM_SEEDS`: worst cases over three seeds."""
    finalists = [entry["defence"] for entry in table[:NUM_FINALISTS]]
    extra = [
        _one(cache, "diloco", defence, attack, num_steps, seed)
        for seed in CONFIRM_SEEDS
        for defence in finalists
        for attack in ["none", *attacks]
    ]
    extra += [_one(cache, "diloco", "mean", "none", num_steps, seed) for seed in CONFIRM_SEEDS]
    seed_zero = [r for r in rows if r["regime"] == "diloco" and r["defence"] in (*finalists, "mean")]
    return _worst(seed_zero + extra, "diloco", finalists, attacks)


def _sweep(
    cache: _Cache, regime: str, defences: list[str], attacks: list[str], num_steps: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every defence against no attack and every attack in ``regime``; the rows and their timing."""
    begin = time.perf_counter()
    rows = [
        _one(cache, regime, defence, attack, num_steps, seed=0)
        for defence in defences
        for attack in ["none", *attacks]
    ]
    seconds = sum(r["seconds"] for r in rows)
    info = {
        "num_steps": num_steps,
        "num_runs": len(rows),
        "seconds": seconds,
        "seconds_per_run": seconds / len(rows),
        "wall_seconds_this_call": time.perf_counter() - begin,
    }
    return rows, info


def _verification_cost(cache: _Cache, chosen: str, steps: dict[str, int]) -> dict[str, Any]:
    """The chosen defence with a quarter of the owners verified each round, without attackers: its bytes
    on the ``verify`` channel against the rest, and its accuracy."""
    settings = [*DEFENCES[chosen], f"aggregation.verify_fraction={VERIFY_FRACTION}"]
    label = f"{chosen} + verification"
    cost = {}
    for regime, num_steps in steps.items():
        row = _one(cache, regime, label, "none", num_steps, seed=0, settings_of_defence=settings)
        verify = float(row.get("verify_bytes_per_worker", 0.0))
        cost[regime] = {
            "final_eval_accuracy": row["final_eval_accuracy"],
            "verify_bytes_per_worker": verify,
            "other_bytes_per_worker": row["bytes_sent_per_worker"] - verify,
            "extra_fraction": verify / max(row["bytes_sent_per_worker"] - verify, 1.0),
        }
    return cost


def run(out_dir: Path, quick: bool) -> dict[str, Any]:
    """Runs the grid (``quick``: a few defences and attacks, 20 steps) and writes the tables."""
    quick = quick or smoke()
    if quick:
        defences = {regime: ["mean", "centered_clip", "centered_clip + nnm"] for regime in REGIMES}
        attacks = ["sign_flip", "ipm_0.5"]
        steps = {"sync": 3 if smoke() else 20, "diloco": 10 if smoke() else 20}
    else:
        defences = {"sync": list(SYNC_DEFENCES), "diloco": list(DEFENCES)}
        attacks, steps = list(ATTACKS), dict(_STEPS)
    cache = _Cache()
    rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {"quick": quick, "num_workers": NUM_WORKERS, "num_byzantine": NUM_BYZANTINE,
                            "seeds": [0], "regimes": {}}  # fmt: skip
    tables = {}
    for regime in REGIMES:
        regime_rows, meta["regimes"][regime] = _sweep(cache, regime, defences[regime], attacks, steps[regime])
        rows += regime_rows
        tables[regime] = _worst(rows, regime, defences[regime], attacks)
    if not quick:
        meta["confirmed_diloco"] = _confirm(cache, rows, tables["diloco"], attacks, steps["diloco"])
    chosen = _choose(tables, meta.get("confirmed_diloco"))
    meta["chosen"] = chosen
    meta["verification"] = _verification_cost(cache, chosen["defence"], steps)
    meta["targets"] = {
        **{
            f"{regime}_worst_within_3_points_of_clean": tables[regime][0]["gap_to_clean_mean"] >= -0.03
            for regime in REGIMES
        },
        "verification_at_most_25_percent_bytes": all(
            cost["extra_fraction"] <= 0.25 for cost in meta["verification"].values()
        ),
    }
    result = {"meta": meta, "tables": tables, "rows": rows}
    (out_dir / "byzantine.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / "byzantine.md").write_text(_markdown(tables, attacks, meta))
    return result


def _markdown(tables: dict[str, list[dict[str, Any]]], attacks: list[str], meta: dict[str, Any]) -> str:
    chosen = meta["chosen"]
    lines = [
        "# Byzantine robustness judged by the worst case (MLP on digits, 16 workers, 7 Byzantine)",
        "",
        "Command: `farsync bench byzantine"
        + (" --quick" if meta["quick"] else "")
        + "`; one seed (0). Attacks: "
        + ", ".join(f"`{a}`" for a in attacks)
        + ". Best worst case over both regimes (the highest mean of the two worst-case "
        f"accuracies): **{chosen['defence']}** (`" + " ".join(chosen["settings"]) + "`).",
        "",
    ]
    for regime in REGIMES:
        lines += _markdown_regime(regime, tables[regime], attacks, meta)
    if "confirmed_diloco" in meta:
        seeds = ", ".join(str(seed) for seed in (0, *CONFIRM_SEEDS))
        lines += [
            f"DiLoCo's {NUM_FINALISTS} best defences over seeds {seeds} (mean accuracy per attack, then the worst; "
            "the recommended defence is chosen among these):",
            "",
            "| defence | clean | worst | gap | worst attack |",
            "|---|---|---|---|---|",
        ]
        for entry in meta["confirmed_diloco"]:
            lines.append(
                f"| {entry['defence']} | {entry['clean']:.3f} | **{entry['worst']:.3f}** | "
                f"{100 * entry['gap_to_clean_mean']:+.1f} | {entry['worst_attack']} |"
            )
        lines.append("")
    lines += [
        f"Verification of the shard owners (`aggregation.verify_fraction = {VERIFY_FRACTION}`) on "
        f"{chosen['defence']}, no attacker:",
        "",
        "| regime | accuracy | verify bytes per worker | other bytes per worker | extra |",
        "|---|---|---|---|---|",
    ]
    for regime, cost in meta["verification"].items():
        lines.append(
            f"| {regime} | {cost['final_eval_accuracy']:.3f} | {cost['verify_bytes_per_worker']:.0f} | "
            f"{cost['other_bytes_per_worker']:.0f} | {100 * cost['extra_fraction']:.1f}% |"
        )
    lines += ["", "Targets:", "", "```", json.dumps(meta["targets"], indent=1), "```", ""]
    return "\n".join(lines)
