"""Where a worker sits and what it reports: :class:`WorkerContext` in, :class:`WorkerResult` out.

Every runner (the local launcher, torchrun, the elastic worker, pipelines, federated clients) hands a loop a
context and publishes the loop's result through the run's store, where the launcher reads it back. The
helpers here are the pieces every runner shares: :meth:`WorkerContext.emit` (a record to the run's sink),
:func:`worker_result` (a result whose communication figures come from the worker's byte ledger) and
:func:`publish_result` / :func:`read_results` (results through the store).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from farsync.comm.ledger import ByteLedger

if TYPE_CHECKING:
    from torch._C._distributed_c10d import Store

__all__ = ["Sink", "WorkerContext", "WorkerResult", "publish_result", "read_results", "worker_result"]

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

    def emit(self, record: dict[str, Any]) -> None:
        """Sends ``record`` to the run's sink, tagged ``worker = rank`` unless it names a worker already."""
        record.setdefault("worker", self.rank)
        self.sink(record)


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


def worker_result(
    ctx: WorkerContext,
    ledger: ByteLedger,
    *,
    num_steps: int,
    num_rounds: int,
    tokens: int,
    wall_s: float,
    compute_s: float,
    global_params_sha256: str,
    final_eval: dict[str, float],
    num_params: int,
    extra: dict[str, Any] | None = None,
) -> WorkerResult:
    """A :class:`WorkerResult` for ``ctx``'s worker whose communication figures (bytes sent on every channel,
    peak sync bytes, blocked time, the ledger itself) are read from ``ledger``."""
    return WorkerResult(
        rank=ctx.rank,
        num_steps=num_steps,
        num_rounds=num_rounds,
        tokens=tokens,
        bytes_sent=ledger.bytes_sent(),
        peak_sync_bytes=ledger.peak_sync_bytes,
        wall_s=wall_s,
        compute_s=compute_s,
        comm_wait_s=ledger.blocked_s(),
        global_params_sha256=global_params_sha256,
        final_eval=final_eval,
        ledger=ledger.to_dict(),
        num_params=num_params,
        extra=extra if extra is not None else {},
    )


def publish_result(ctx: WorkerContext, result: WorkerResult) -> None:
    """Puts a worker's result in the run's store under ``<prefix>/final/<rank>`` for the launcher."""
    ctx.store.set(f"{ctx.group_prefix}/final/{ctx.rank}", json.dumps(vars(result)))


def read_results(store: Store, prefix: str, world_size: int) -> list[dict[str, Any]]:
    """Every worker's :class:`WorkerResult` as a dict, waiting until all are published."""
    keys = [f"{prefix}/final/{rank}" for rank in range(world_size)]
    store.wait(keys)
    return [json.loads(store.get(key)) for key in keys]
