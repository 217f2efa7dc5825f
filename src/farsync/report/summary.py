"""A finished run's outputs: ``config.toml``, ``metrics.jsonl``, ``summary.json`` and ``report.png``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from farsync.comm.cost import Collective, wire_bytes
from farsync.config import RunConfig, config_to_toml

__all__ = ["build_summary", "local_eval_summary", "write_run_outputs"]

logger = logging.getLogger(__name__)


def build_summary(config: RunConfig, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Combines the workers' results into the run's summary (see the README for every field)."""
    results = sorted(results, key=lambda r: r["rank"])
    n = len(results)
    first = results[0]
    num_params = int(first["num_params"])
    num_steps = int(first["num_steps"])
    bytes_by_worker = [int(r["bytes_sent"]) for r in results]
    wall = max(float(r["wall_s"]) for r in results)
    compute = sum(float(r["compute_s"]) for r in results) / n
    wait = sum(float(r["comm_wait_s"]) for r in results) / n
    ddp_bytes = num_steps * wire_bytes(Collective.ALL_REDUCE, 4 * num_params, n)
    bytes_per_worker = max(bytes_by_worker)
    summary: dict[str, Any] = {
        "algorithm": config.algorithm.name,
        "num_workers": n,
        "num_steps": num_steps,
        "num_rounds": int(first["num_rounds"]),
        "num_params": num_params,
        "tokens": sum(int(r["tokens"]) for r in results),
        "tokens_per_worker": int(first["tokens"]),
        "final_eval_loss": first["final_eval"].get("eval_loss"),
        "bytes_sent_per_worker": bytes_per_worker,
        "bytes_sent_by_worker": bytes_by_worker,
        "ddp_bytes_per_worker": ddp_bytes,
        "bytes_reduction_vs_ddp": (ddp_bytes / bytes_per_worker) if bytes_per_worker else None,
        "peak_sync_bytes": max(int(r["peak_sync_bytes"]) for r in results),
        "wall_s": wall,
        "compute_s": compute,
        "comm_wait_s": wait,
        "compute_utilization": compute / wall if wall > 0 else 1.0,
        "bandwidth_bps": config.network.bandwidth_bps,
        "latency_s": config.network.latency_s,
        "emulation": config.network.emulation,
        "global_params_sha256": [r["global_params_sha256"] for r in results],
    }
    summary.update(local_eval_summary(summary["final_eval_loss"], results))
    if "eval_accuracy" in first["final_eval"]:
        summary["final_eval_accuracy"] = first["final_eval"]["eval_accuracy"]
    for key in ("extra",):
        if key in first:
            summary[key] = first[key]
    if "stage" in first:  # pipelined run: per-stage bytes and memory (farsync.parallel)
        from farsync.report.pipeline import pipeline_summary

        summary.update(pipeline_summary(results))
    return summary


def local_eval_summary(global_loss: float | None, results: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean (and per-worker) eval loss of the workers' own final weights beside the global model's, and a
    warning when the global model is worse than the local ones (e.g. a compressed average that broke it).

    Empty when the workers did not report a local evaluation (runners that do not evaluate local weights).
    """
    local = [r["final_eval"].get("local_eval_loss") for r in results]
    if global_loss is None or any(value is None for value in local):
        return {}
    mean = sum(float(v) for v in local) / len(local)
    worse = float(global_loss) > mean
    if worse:
        logger.warning(
            "the global model's eval loss %.4f is worse than the workers' own weights (mean %.4f, best %.4f): "
            "the outer step or the compression lost what the workers learned",
            global_loss,
            mean,
            min(float(v) for v in local),
        )
    return {
        "final_local_eval_loss": mean,
        "final_local_eval_loss_by_worker": [float(v) for v in local],
        "global_worse_than_local": worse,
    }


def write_run_outputs(
    config: RunConfig, out_dir: Path, results: list[dict[str, Any]], records: list[dict[str, Any]] | None
) -> dict[str, Any]:
    """Writes the run directory's files; ``records`` (if given) replace ``metrics.jsonl``."""
    from farsync.report.plots import plot_run

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.toml").write_text(config_to_toml(config))
    if records is not None:
        with open(out_dir / "metrics.jsonl", "w") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
    summary = build_summary(config, results)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_run(
        out_dir / "metrics.jsonl",
        out_dir / "report.png",
        title=f"{summary['algorithm']} x{summary['num_workers']}",
    )
    return summary
