"""One synchronous run of ``farsync bench byzantine``: per-step gradient aggregation (DDP) through the real
reducer stack, with SGD and momentum, as threads.

The training loop (:class:`~farsync.train.loop.TrainingLoop`) uses AdamW; the reference workload of
issue 13 is plain synchronous SGD (lr 0.1, momentum 0.9, batch 16), so this module runs that loop itself,
with everything else from the library: each of the ``n`` workers is a thread with its own gloo group
(:func:`farsync.sim.ranks.run_ranks`), its digits shard and MLP from :func:`farsync.train.task.build_task`,
and the reducer :func:`farsync.train.build.build_reducer` makes for the configuration (the robust reducer
over the butterfly for a robust rule, the ring all-reduce for the mean), wrapped by the attack simulation
(:func:`farsync.sim.attacking.build_attacking_reducer`) when ``byzantine.workers`` is set. Every step a
worker computes its gradient, the reducer aggregates the gradients, and every worker applies the same
aggregate with its own (identical) SGD optimizer: momentum is applied after aggregation, as in DDP, unless
``aggregation.worker_momentum`` is set (the workers then send their momenta and the step is plain SGD).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from farsync.comm.communicator import Communicator
from farsync.config import RunConfig
from farsync.sim.attacking import build_attacking_reducer
from farsync.sim.attacks import LABEL_FLIP
from farsync.sim.ranks import run_ranks
from farsync.train.build import build_reducer
from farsync.train.schedule import lr_lambda
from farsync.train.task import build_task

__all__ = ["SYNC_LR", "SYNC_MOMENTUM", "run_sync"]

logger = logging.getLogger(__name__)

SYNC_LR = 0.1
"""SGD learning rate of the synchronous regime (peak, with ``schedule = "cosine"``)."""
SYNC_MOMENTUM = 0.9
"""SGD momentum of the synchronous regime, applied to the aggregated gradient."""
_TIMEOUT_S = 900.0  # a 300-step run of 16 threads on a loaded 2-core machine takes minutes


def run_sync(config: RunConfig, schedule: str = "constant") -> dict[str, Any]:
    """Trains ``config.num_workers`` threads for ``config.train.num_steps`` steps; returns the final
    accuracy and loss of the (identical) model and the bytes each worker sent.

    ``schedule``: ``"constant"`` keeps :data:`SYNC_LR`; ``"cosine"`` multiplies it by
    :func:`~farsync.train.schedule.lr_lambda` of ``config.train`` (warm-up, then cosine decay)."""
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    begin = time.perf_counter()
    byzantine = set(config.byzantine.workers)

    def worker(rank: int, world: int, group: Any, store: Any) -> dict[str, Any]:
        torch.set_num_threads(1)
        comm = Communicator(group, rank, world)
        wrappers = (build_attacking_reducer,) if byzantine else ()
        reducer = build_reducer(config, comm, wrappers)
        task = build_task(
            config.model,
            config.data,
            batch_size=config.train.batch_size,
            num_eval_batches=1,
            rank=rank,
            num_workers=world,
            seed=config.seed,
            flip_labels=config.byzantine.attack == LABEL_FLIP and rank in byzantine,
        )
        model = task.model
        named = dict(model.named_parameters())
        # With worker momentum the workers already send momenta: the step must not add momentum again.
        momentum = 0.0 if config.aggregation.resolved().worker_momentum > 0 else SYNC_MOMENTUM
        optimizer = torch.optim.SGD(model.parameters(), lr=SYNC_LR, momentum=momentum)
        factor = lr_lambda(config.train) if schedule == "cosine" else (lambda step: 1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        for _ in range(config.train.num_steps):
            x, y = next(task.batches)
            optimizer.zero_grad(set_to_none=False)
            loss = task.loss(model, x, y)
            loss.backward()  # type: ignore[no-untyped-call]
            grads = {name: p.grad if p.grad is not None else torch.zeros_like(p) for name, p in named.items()}
            averaged = reducer(grads)
            for name, param in named.items():
                param.grad = averaged[name].to(param.dtype).reshape(param.shape).clone()
            optimizer.step()
            scheduler.step()
        metrics = task.evaluate(model) if rank == 0 else {}
        ledger = comm.ledger
        return {"metrics": metrics, "bytes_sent": ledger.bytes_sent(), "verify": ledger.bytes_sent("verify")}

    results = run_ranks(worker, config.num_workers, prefix="byz-sync", timeout_s=_TIMEOUT_S)
    metrics = results[0]["metrics"]
    return {
        "final_eval_accuracy": float(metrics["eval_accuracy"]),
        "final_eval_loss": float(metrics["eval_loss"]),
        "bytes_sent_per_worker": sum(r["bytes_sent"] for r in results) / len(results),
        "verify_bytes_per_worker": sum(r["verify"] for r in results) / len(results),
        "num_rounds": config.train.num_steps,
        "seconds": time.perf_counter() - begin,
    }
