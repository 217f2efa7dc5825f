"""What a pipelined run reports about its stages: memory each stage process holds and bytes per link.

:func:`stage_memory` measures one stage process (its parameters, its inner optimizer state and its outer
DiLoCo state); :func:`pipeline_summary` turns every worker's result into the summary fields of a pipelined
run, so a benchmark can show that each stage holds about 1/S of the model and its optimizer state and that
activation traffic (fast link inside a replica) is reported apart from the sync traffic (slow link).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from farsync.comm.cost import Collective, wire_bytes

__all__ = ["pipeline_report", "pipeline_summary", "stage_memory", "tensor_bytes"]


def tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor inside ``obj`` (nested dicts, lists and tuples), counted once each."""
    seen: set[int] = set()

    def walk(item: Any) -> int:
        if isinstance(item, torch.Tensor):
            if id(item) in seen:
                return 0
            seen.add(id(item))
            return item.numel() * item.element_size()
        if isinstance(item, dict):
            return sum(walk(v) for v in item.values())
        if isinstance(item, list | tuple):
            return sum(walk(v) for v in item)
        return 0

    return walk(obj)


def stage_memory(module: nn.Module, optimizer: torch.optim.Optimizer, outer_state: Any) -> dict[str, int]:
    """Parameter, inner-optimizer-state and outer-state bytes held by one stage process."""
    return {
        "param_bytes": sum(p.numel() * p.element_size() for p in module.parameters()),
        "inner_state_bytes": tensor_bytes(list(optimizer.state.values())),
        "outer_state_bytes": tensor_bytes(outer_state),
    }


def pipeline_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Summary fields of a pipelined run from its workers' results (dicts with ``stage`` and ``replica``).

    Overrides the fields whose unpipelined meaning counts every stage as a whole replica: ``tokens``
    (one stage per replica), ``num_params`` (the whole model) and the DDP comparison (a DDP baseline on the
    same grid all-reduces each stage's gradients over its sync group every step).
    """
    results = sorted(results, key=lambda r: r["rank"])
    num_stages = int(results[0]["num_stages"])
    num_replicas = int(results[0]["num_replicas"])
    per_stage: list[dict[str, Any]] = []
    for stage in range(num_stages):
        members = [r for r in results if int(r["stage"]) == stage]
        memory = members[0]["stage_memory"]
        per_stage.append(
            {
                "stage": stage,
                "num_params": int(members[0]["stage_num_params"]),
                "bytes_sent": max(int(r["bytes_sent"]) for r in members),
                "activation_bytes": max(int(r["activation_bytes"]) for r in members),
                **memory,
                "total_bytes": sum(int(v) for v in memory.values()),
            }
        )
    total = sum(s["total_bytes"] for s in per_stage)
    for entry in per_stage:
        entry["share_of_total"] = entry["total_bytes"] / total if total else 0.0
    num_steps = int(results[0]["num_steps"])
    ddp_bytes = max(
        num_steps * wire_bytes(Collective.ALL_REDUCE, 4 * s["num_params"], num_replicas) for s in per_stage
    )
    bytes_per_worker = max(int(r["bytes_sent"]) for r in results)
    return {
        "num_stages": num_stages,
        "num_replicas": num_replicas,
        "num_microbatches": int(results[0]["num_microbatches"]),
        "schedule": results[0]["schedule"],
        "num_params": int(results[0]["model_num_params"]),
        "tokens": sum(int(r["tokens"]) for r in results if int(r["stage"]) == 0),
        "ddp_bytes_per_worker": ddp_bytes,
        "bytes_reduction_vs_ddp": ddp_bytes / bytes_per_worker if bytes_per_worker else None,
        "bytes_sent_per_stage": [s["bytes_sent"] for s in per_stage],
        "activation_bytes_per_worker": max(int(r["activation_bytes"]) for r in results),
        "activation_bytes_by_worker": [int(r["activation_bytes"]) for r in results],
        "intra_bandwidth_bps": results[0]["intra_bandwidth_bps"],
        "stages": per_stage,
        "max_stage_share": max(s["share_of_total"] for s in per_stage),
        "unpipelined_worker_state_bytes": total,
    }


def pipeline_report(summary: dict[str, Any]) -> dict[str, Any]:
    """What ``farsync bench dilocox`` shows for a pipelined run, from its ``summary.json``.

    ``stages`` holds one row per stage (parameters, inner and outer optimizer state, the stage's share of
    what one unpipelined worker would hold, slow-link sync bytes and fast-link activation bytes);
    ``ideal_share`` is 1/S, to set against ``max_stage_share``.
    """
    if "stages" not in summary:
        raise ValueError("pipeline_report needs the summary of a pipelined run (parallel.num_stages > 1)")
    return {
        "num_replicas": summary["num_replicas"],
        "num_stages": summary["num_stages"],
        "schedule": summary["schedule"],
        "num_microbatches": summary["num_microbatches"],
        "ideal_share": 1.0 / summary["num_stages"],
        "max_stage_share": summary["max_stage_share"],
        "unpipelined_worker_state_bytes": summary["unpipelined_worker_state_bytes"],
        "sync_bytes_per_stage": summary["bytes_sent_per_stage"],
        "activation_bytes_per_worker": summary["activation_bytes_per_worker"],
        "stages": [dict(row) for row in summary["stages"]],
    }
