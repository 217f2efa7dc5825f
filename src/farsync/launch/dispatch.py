"""Which runner trains a worker: the plain loop, a pipeline stage, an FSDP-sharded replica or a federated driver.

This is the one place that knows every runner, so it sits above them (the loop never dispatches upward).
Every runner but the federated driver composes :class:`farsync.train.TrainingLoop` from its own
:class:`~farsync.train.LoopParts`; the federated driver shares the loop's communicator, record, result and
publishing helpers (its unit is a round of many clients, not an inner step).
"""

from __future__ import annotations

import dataclasses
import os

import torch

from farsync.config import RunConfig
from farsync.federated.driver import run_federated_worker
from farsync.parallel.fsdp import run_sharded_worker
from farsync.parallel.worker import run_pipelined_worker
from farsync.report.export import final_model_hook
from farsync.sim.attacking import build_attacking_reducer
from farsync.train import LoopParts, WorkerContext, WorkerResult, run_training

__all__ = ["run_worker"]


def run_worker(config: RunConfig, ctx: WorkerContext) -> WorkerResult:
    """Trains one worker to the end; publishes its result to the store under ``final/<rank>``."""
    torch.set_num_threads(max(1, int(os.environ.get("FARSYNC_THREADS", "1"))))
    if config.byzantine.workers:
        ctx = dataclasses.replace(ctx, reducer_wrappers=(*ctx.reducer_wrappers, build_attacking_reducer))
    if config.parallel.num_stages > 1:
        return run_pipelined_worker(config, ctx)
    if config.parallel.num_shards > 1:
        return run_sharded_worker(config, ctx)
    if config.algorithm.name == "fedavg" and config.federated.num_clients > 0:
        return run_federated_worker(config, ctx)
    if config.model.kind == "hf":  # worker 0 keeps the final global weights for `farsync export`
        return run_training(config, ctx, LoopParts(finish=final_model_hook))
    return run_training(config, ctx)
