"""One worker's training loop: data -> inner steps -> algorithm hooks -> metrics, checkpoints, a result.

The loop is an ordinary PyTorch loop; everything distributed happens in the algorithm's optimizer hooks.
:class:`TrainingLoop` is public: runners (pipelines, elastic membership) compose it by passing a
communicator, a reducer or a step of their own instead of copying it.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch

from farsync.algorithms.base import Algorithm
from farsync.comm.clock import Clock
from farsync.comm.communicator import Communicator
from farsync.comm.groups import make_group
from farsync.comm.ledger import ByteLedger
from farsync.config import RunConfig
from farsync.train.build import build_algorithm, build_reducer, link_for_group
from farsync.train.checkpoint import find_latest, load_worker_state, prune, save_worker_state
from farsync.train.context import WorkerContext, WorkerResult, publish_result
from farsync.train.schedule import lr_lambda
from farsync.train.task import MODEL_INIT_LOCK, Task, build_task

__all__ = ["TrainingLoop", "run_training"]

logger = logging.getLogger(__name__)


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


class TrainingLoop:
    """The state of one worker's training loop (kept in one object so checkpoints capture all of it)."""

    def __init__(self, config: RunConfig, ctx: WorkerContext) -> None:
        self.config, self.ctx = config, ctx
        self.clock = Clock(config.network.emulation)
        self.ledger = ByteLedger(rank=ctx.rank)
        with MODEL_INIT_LOCK:  # threads share the global RNG; never reseed it under another's model init
            torch.manual_seed(config.seed)
        self.task: Task = build_task(
            config.model,
            config.data,
            batch_size=config.train.batch_size,
            num_eval_batches=config.train.num_eval_batches,
            rank=ctx.rank,
            num_workers=ctx.world_size,
            seed=config.seed,
            flip_labels=ctx.rank in config.byzantine.workers and config.byzantine.attack == "label_flip",
        )
        self.model = self.task.model.to(ctx.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=config.train.lr,
            betas=(0.9, 0.95),
            weight_decay=config.train.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(config.train))
        self.comm = self.make_communicator()
        self.algorithm: Algorithm = build_algorithm(
            config,
            self.model,
            self.optimizer,
            self.comm,
            build_reducer(config, self.comm, ctx.reducer_wrappers),
            self.task,
        )
        self.step = 0
        self.compute_s = 0.0
        self.train_s = 0.0
        self.round_losses: list[float] = []
        self.last_eval: dict[str, float] = {}

    def make_communicator(self) -> Communicator:
        """The communicator the algorithm synchronises over (the elastic loop overrides it with its own)."""
        ctx = self.ctx
        group = make_group(
            ctx.store,
            f"{ctx.group_prefix}/sync",
            ctx.rank,
            ctx.world_size,
            device=ctx.device,
            timeout_s=self.config.elastic.collective_timeout_s,
        )
        return Communicator(
            group,
            ctx.rank,
            ctx.world_size,
            ledger=self.ledger,
            clock=self.clock,
            link=link_for_group(self.config.network, list(range(ctx.world_size))),
        )

    # ---------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "algorithm": self.algorithm.state_dict(),
            "batches": self.task.batches.state_dict(),
            "rng": _rng_state(),
            "ledger": self.ledger.to_dict(),
            "compute_s": self.compute_s,
            "train_s": self.train_s,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.algorithm.load_state_dict(state["algorithm"])
        self.task.batches.load_state_dict(state["batches"])
        _set_rng_state(state["rng"])
        self.ledger.load_dict(state["ledger"])
        self.compute_s, self.train_s = float(state["compute_s"]), float(state["train_s"])

    def maybe_resume(self) -> None:
        if not (self.ctx.resume and self.ctx.out_dir is not None):
            return
        found = find_latest(self.ctx.out_dir, self.ctx.world_size)
        if found is None:
            logger.warning(
                "worker %d: no usable checkpoint in %s; starting from scratch",
                self.ctx.rank,
                self.ctx.out_dir,
            )
            return
        round_index, directory = found
        self.load_state_dict(load_worker_state(directory, self.ctx.rank))
        self.emit({"kind": "resume", "round": round_index, "step": self.step})

    def maybe_checkpoint(self) -> None:
        every = self.config.checkpoint.every_rounds
        if not every or self.ctx.out_dir is None or self.algorithm.round % every != 0:
            return
        save_worker_state(self.ctx.out_dir, self.algorithm.round, self.ctx.rank, self.state_dict())
        if self.ctx.rank == 0:
            prune(self.ctx.out_dir, self.config.checkpoint.keep)

    # -------------------------------------------------------------------------------------- the loop
    def emit(self, record: dict[str, Any]) -> None:
        record.setdefault("worker", self.ctx.rank)
        self.ctx.sink(record)

    def tokens(self) -> int:
        return self.step * self.task.tokens_per_step

    def inner_step(self) -> float:
        x, y = next(self.task.batches)
        x, y = x.to(self.ctx.device), y.to(self.ctx.device)
        begin, blocked = self.clock.now(), self.ledger.blocked_s()
        loss = self.task.loss(self.model, x, y)
        loss.backward()  # type: ignore[no-untyped-call]
        # Clip inside step(), after the algorithm's pre-step hook: DDP then clips the averaged gradient, as
        # torch DDP does, instead of averaging gradients each worker clipped on its own.
        clip = self.optimizer.register_step_pre_hook(lambda *_: self.clip_gradients())
        try:
            self.optimizer.step()  # the algorithm's hooks run inside this call
        finally:
            clip.remove()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        elapsed = self.clock.now() - begin
        self.train_s += elapsed
        self.compute_s += elapsed - (self.ledger.blocked_s() - blocked)
        self.step += 1
        return float(loss.detach())

    def clip_gradients(self) -> None:
        if self.config.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip)

    def evaluate(self) -> dict[str, float]:
        with self.algorithm.evaluating() as model:
            self.last_eval = self.task.evaluate(model)
        self.emit(
            {
                "kind": "eval",
                "step": self.step,
                "round": self.algorithm.round,
                "tokens": self.tokens(),
                "bytes_sent": self.ledger.bytes_sent(),
                **self.last_eval,
            }
        )
        return self.last_eval

    def run(self) -> WorkerResult:
        self.maybe_resume()
        num_steps = self.config.train.num_steps
        with self.algorithm:
            while self.step < num_steps:
                loss = self.inner_step()
                self.round_losses.append(loss)
                self.emit(
                    {
                        "kind": "step",
                        "step": self.step,
                        "loss": loss,
                        "lr": self.scheduler.get_last_lr()[0],
                        "tokens": self.tokens(),
                        "bytes_sent": self.ledger.bytes_sent(),
                        "wall_s": self.train_s,
                    }
                )
                if self.algorithm.round_ended:
                    self.end_round()
                if self.step % self.config.train.eval_every == 0 and self.step < num_steps:
                    self.evaluate()
        # Leaving the block finished any synchronisation in flight; the model holds the final weights.
        final = self.evaluate()
        return self.result(final)

    def end_round(self) -> None:
        losses, self.round_losses = self.round_losses, []
        self.emit(
            {
                "kind": "round",
                "round": self.algorithm.round,
                "step": self.step,
                "train_loss": sum(losses) / max(len(losses), 1),
                "tokens": self.tokens(),
                "bytes_sent": self.ledger.bytes_sent(),
                "comm_wait_s": self.ledger.blocked_s(),
                "wall_s": self.train_s,
                **self.algorithm.metrics(),
            }
        )
        self.maybe_checkpoint()

    def result(self, final: dict[str, float]) -> WorkerResult:
        return WorkerResult(
            rank=self.ctx.rank,
            num_steps=self.step,
            num_rounds=self.algorithm.round,
            tokens=self.tokens(),
            bytes_sent=self.ledger.bytes_sent(),
            peak_sync_bytes=self.ledger.peak_sync_bytes,
            wall_s=self.train_s,
            compute_s=self.compute_s,
            comm_wait_s=self.ledger.blocked_s(),
            global_params_sha256=self.algorithm.global_sha256(),
            final_eval=final,
            ledger=self.ledger.to_dict(),
            num_params=sum(p.numel() for p in self.model.parameters()),
            extra=getattr(self.algorithm, "final_metrics", dict)(),
        )


def run_training(config: RunConfig, ctx: WorkerContext) -> WorkerResult:
    """Trains one worker of a plain (unpipelined, non-federated) run to the end and publishes its result."""
    result = TrainingLoop(config, ctx).run()
    publish_result(ctx, result)
    return result
