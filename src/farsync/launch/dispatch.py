"""Which runner trains a worker: the plain loop, a pipeline stage or a federated driver.

This is the one place that knows every runner, so it sits above them (the loop never dispatches upward).
"""

from __future__ import annotations

import dataclasses
import os

import torch

from farsync.config import RunConfig
from farsync.federated.driver import run_federated_worker
from farsync.parallel.worker import run_pipelined_worker
from farsync.sim.attacking import build_attacking_reducer
from farsync.train import WorkerContext, WorkerResult, run_training

__all__ = ["run_worker"]


def run_worker(config: RunConfig, ctx: WorkerContext) -> WorkerResult:
    """Trains one worker to the end; publishes its result to the store under ``final/<rank>``."""
    torch.set_num_threads(max(1, int(os.environ.get("FARSYNC_THREADS", "1"))))
    if config.byzantine.workers:
        ctx = dataclasses.replace(ctx, reducer_wrappers=(*ctx.reducer_wrappers, build_attacking_reducer))
    if config.parallel.num_stages > 1:
        return run_pipelined_worker(config, ctx)
    if config.algorithm.name == "fedavg" and config.federated.num_clients > 0:
        return run_federated_worker(config, ctx)
    return run_training(config, ctx)
