"""Where a worker sits and what it reports: :class:`WorkerContext` in, :class:`WorkerResult` out.

Every runner (the local launcher, torchrun, the elastic worker, pipelines, federated clients) hands a loop a
context and publishes the loop's result through the run's store, where the launcher reads it back.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torch._C._distributed_c10d import Store

__all__ = ["Sink", "WorkerContext", "WorkerResult", "publish_result", "read_results"]

Sink = Callable[[dict[str, Any]], None]


@dataclass
class WorkerContext:
    """Where a worker sits: its rank, the run's store, where to write and where to report."""

    rank: int
    world_size: int
    store: Store
    out_dir: Path | None
    sink: Sink
    resume: bool = False
    group_prefix: str = "run"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    reducer_wrappers: tuple[Any, ...] = ()
    """Layers the runner puts around the configured reducer (:data:`farsync.train.build.ReducerWrapper`),
    e.g. attack simulation; applied outermost, in order."""


@dataclass
class WorkerResult:
    """What a worker reports at the end (it also goes to the store under ``final/<rank>``)."""

    rank: int
    num_steps: int
    num_rounds: int
    tokens: int
    bytes_sent: int
    peak_sync_bytes: int
    wall_s: float
    compute_s: float
    comm_wait_s: float
    global_params_sha256: str
    final_eval: dict[str, float]
    ledger: dict[str, Any]
    num_params: int
    extra: dict[str, Any] = field(default_factory=dict)
    """Algorithm-specific end-of-run figures (``final_metrics()`` where an algorithm has it); summary["extra"]."""


def publish_result(ctx: WorkerContext, result: WorkerResult) -> None:
    """Puts a worker's result in the run's store under ``<prefix>/final/<rank>`` for the launcher."""
    ctx.store.set(f"{ctx.group_prefix}/final/{ctx.rank}", json.dumps(vars(result)))


def read_results(store: Store, prefix: str, world_size: int) -> list[dict[str, Any]]:
    """Every worker's :class:`WorkerResult` as a dict, waiting until all are published."""
    keys = [f"{prefix}/final/{rank}" for rank in range(world_size)]
    store.wait(keys)
    return [json.loads(store.get(key)) for key in keys]
