"""One worker's training loop, assembled from parts: data -> inner step -> algorithm hooks -> records, a result.

The loop is an ordinary PyTorch loop; everything distributed happens in the algorithm's optimizer hooks.
:class:`TrainingLoop` is public and built by composition: a runner hands it a :class:`LoopParts` naming the
pieces where its run differs from a plain one, and every piece left out is the plain run's.

======================  ==============================================  ==========================================
part                    plain run (the default)                         who passes another
======================  ==============================================  ==========================================
``task``                :func:`worker_task`: this worker's data shard   pipelines (a stage of the replica's model)
``clock``, ``ledger``   the configured WAN emulator, a fresh ledger     runners that build communicators first
``comm``                :func:`sync_communicator` over every worker     pipelines (a stage's sync group), elastic
                                                                        (world size 1; quorums build their own)
``reducer``             :func:`~farsync.train.build.build_reducer`      elastic (its quorum-following reducer)
``step``                :func:`plain_step`                              pipelines (the pipelined step)
``evaluate``            :func:`evaluate_global`                         pipelines (forward through the stages)
``decorate``            nothing                                         pipelines (replica, stage, activation
                                                                        bytes), elastic (quorum figures)
``finish``              nothing                                         pipelines and elastic (result subclasses)
``resume``              :meth:`TrainingLoop.maybe_resume`               elastic (join a quorum and heal)
``checkpoint``          :meth:`TrainingLoop.maybe_checkpoint`           elastic (the quorum's source writes one)
======================  ==============================================  ==========================================

The algorithm is always built by :func:`~farsync.train.build.build_algorithm` with the reducer it will use,
so nothing is swapped after construction. The inner step does the same work whatever the parts: draw a
batch, call the step function, clear gradients, advance the schedule, count time.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from farsync.algorithms.base import Algorithm
from farsync.comm.clock import Clock
from farsync.comm.communicator import Communicator
from farsync.comm.groups import make_group
from farsync.comm.ledger import ByteLedger
from farsync.config import RunConfig
from farsync.reducers.base import Reducer
from farsync.train.build import build_algorithm, build_reducer, link_for_group
from farsync.train.checkpoint import prune, save_worker_state
from farsync.train.context import WorkerContext, WorkerResult, publish_result, worker_result
from farsync.train.reshard import resume_state
from farsync.train.schedule import lr_lambda
from farsync.train.task import MODEL_INIT_LOCK, Task, build_task

__all__ = [
    "Evaluator",
    "LoopHook",
    "LoopParts",
    "RecordHook",
    "ResultHook",
    "StepFunction",
    "TrainingLoop",
    "evaluate_global",
    "plain_step",
    "run_training",
    "sync_communicator",
    "worker_task",
]

logger = logging.getLogger(__name__)

StepFunction = Callable[["TrainingLoop", Tensor, Tensor], float]
"""``step(loop, inputs, targets) -> loss``: gradients for one batch, then ``loop.optimizer.step()`` (the
algorithm's hooks run inside it). The loop clears the gradients, advances the schedule and counts time."""

Evaluator = Callable[["TrainingLoop"], dict[str, float]]
"""``evaluate(loop) -> metrics`` of the global weights (``eval_loss``, maybe ``eval_accuracy``)."""

RecordHook = Callable[[dict[str, Any]], None]
"""Adds to or rewrites a record in place before it goes to the run's sink."""

ResultHook = Callable[["TrainingLoop", WorkerResult], WorkerResult]
"""Turns the loop's end-of-run result into the runner's (a :class:`WorkerResult` subclass with its fields)."""

LoopHook = Callable[["TrainingLoop"], None]
"""Resume before the first step, or checkpoint at a round's end, in the runner's own way."""


@dataclass(kw_only=True)
class LoopParts:
    """What a runner composes into :class:`TrainingLoop`; every part left ``None`` is the plain run's.

    A runner that passes ``comm`` passes the ``clock`` and ``ledger`` that communicator charges, so the
    loop's byte and time figures include its traffic.
    """

    task: Task | None = None
    """Model, batches, loss and evaluation data; ``None``: :func:`worker_task`."""
    clock: Clock | None = None
    """The worker's clock (WAN emulator); ``None``: ``Clock(network.emulation)``."""
    ledger: ByteLedger | None = None
    """The worker's byte ledger; ``None``: a fresh one."""
    comm: Communicator | None = None
    """What the algorithm synchronises over; ``None``: :func:`sync_communicator`."""
    reducer: Reducer | None = None
    """How the algorithm combines updates; ``None``: ``build_reducer(config, comm, ctx.reducer_wrappers)``."""
    step: StepFunction | None = None
    """One inner step; ``None``: :func:`plain_step`."""
    evaluate: Evaluator | None = None
    """Evaluation of the global weights; ``None``: :func:`evaluate_global`."""
    decorate: RecordHook | None = None
    """Record decoration before every record leaves the loop; ``None``: records as they are."""
    finish: ResultHook | None = None
    """The runner's result from the loop's; ``None``: the loop's :class:`WorkerResult`."""
    resume: LoopHook | None = None
    """Before the first step; ``None``: :meth:`TrainingLoop.maybe_resume`."""
    checkpoint: LoopHook | None = None
    """At each round's end; ``None``: :meth:`TrainingLoop.maybe_checkpoint`."""


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


# ------------------------------------------------------------------------------------- default parts
def worker_task(config: RunConfig, ctx: WorkerContext) -> Task:
    """The plain run's task: the configured model (seeded by ``config.seed``) on worker ``ctx.rank``'s shard."""
    with MODEL_INIT_LOCK:  # threads share the global RNG; never reseed it under another's model init
        torch.manual_seed(config.seed)
    return build_task(
        config.model,
        config.data,
        batch_size=config.train.batch_size,
        num_eval_batches=config.train.num_eval_batches,
        rank=ctx.rank,
        num_workers=ctx.world_size,
        seed=config.seed,
        flip_labels=ctx.rank in config.byzantine.workers and config.byzantine.attack == "label_flip",
        precision=config.train.precision,
    )


def sync_communicator(
    config: RunConfig, ctx: WorkerContext, ledger: ByteLedger, clock: Clock
) -> Communicator:
    """The plain run's communicator: a group of all ``ctx.world_size`` workers on ``<prefix>/sync``, at the
    configured link of its slowest member, charging ``ledger`` and ``clock``."""
    group = make_group(
        ctx.store,
        f"{ctx.group_prefix}/sync",
        ctx.rank,
        ctx.world_size,
        device=ctx.device,
        timeout_s=config.elastic.collective_timeout_s,
    )
    return Communicator(
        group,
        ctx.rank,
        ctx.world_size,
        ledger=ledger,
        clock=clock,
        link=link_for_group(config.network, list(range(ctx.world_size))),
    )


def plain_step(loop: TrainingLoop, inputs: Tensor, targets: Tensor) -> float:
    """Loss, backward, then the optimizer step with gradient clipping inside it.

    Clipping runs as a pre-step hook registered after the algorithm's: DDP then clips the averaged gradient,
    as torch DDP does, instead of averaging gradients each worker clipped on its own.
    """
    loss = loop.task.loss(loop.model, inputs, targets)
    loss.backward()  # type: ignore[no-untyped-call]
    clip = loop.optimizer.register_step_pre_hook(lambda *_: loop.clip_gradients())
    try:
        loop.optimizer.step()  # the algorithm's hooks run inside this call
    finally:
        clip.remove()
    return float(loss.detach())


def evaluate_global(loop: TrainingLoop) -> dict[str, float]:
    """The task's evaluation of the algorithm's global weights (``Algorithm.evaluating()``)."""
    with loop.algorithm.evaluating() as model:
        return loop.task.evaluate(model)


# ------------------------------------------------------------------------------------------ the loop
class TrainingLoop:
    """The state of one worker's training loop (kept in one object so checkpoints capture all of it).

    Args:
        config: the run configuration.
        ctx: where the worker sits and where its records go.
        parts: what the runner composes in (see :class:`LoopParts` and the module docstring).

    Failure: an exception from a collective or a part propagates out of :meth:`run`; the worker ends and
    its runner decides (the local launcher fails the run, the elastic reducer retries the collective).
    """

    def __init__(self, config: RunConfig, ctx: WorkerContext, parts: LoopParts | None = None) -> None:
        parts = parts if parts is not None else LoopParts()
        self.config, self.ctx = config, ctx
        self.clock = (
            parts.clock
            if parts.clock is not None
            else Clock(config.network.emulation, step_time_s=config.network.step_time_s)
        )
        self.ledger = parts.ledger if parts.ledger is not None else ByteLedger(rank=ctx.rank)
        if parts.comm is not None and parts.comm.ledger is not self.ledger:
            raise ValueError("LoopParts.comm must charge LoopParts.ledger: pass the ledger it was built with")
        self.task: Task = parts.task if parts.task is not None else worker_task(config, ctx)
        self.model = self.task.model.to(ctx.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=config.train.lr,
            betas=(0.9, 0.95),
            weight_decay=config.train.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(config.train))
        self.comm = (
            parts.comm if parts.comm is not None else sync_communicator(config, ctx, self.ledger, self.clock)
        )
        reducer = (
            parts.reducer
            if parts.reducer is not None
            else build_reducer(config, self.comm, ctx.reducer_wrappers)
        )
        self.algorithm: Algorithm = build_algorithm(
            config, self.model, self.optimizer, self.comm, reducer, self.task
        )
        self.step_fn: StepFunction = parts.step if parts.step is not None else plain_step
        self.evaluator: Evaluator = parts.evaluate if parts.evaluate is not None else evaluate_global
        self.decorate = parts.decorate
        self.finish = parts.finish
        self.resume_hook: LoopHook = parts.resume if parts.resume is not None else TrainingLoop.maybe_resume
        self.checkpoint_hook: LoopHook = (
            parts.checkpoint if parts.checkpoint is not None else TrainingLoop.maybe_checkpoint
        )
        self.step = 0
        self.compute_s = 0.0
        self.train_s = 0.0
        self.round_losses: list[float] = []
        self.last_eval: dict[str, float] = {}

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
        """The default resume hook: this worker's state from the newest usable checkpoint of the run."""
        if not (self.ctx.resume and self.ctx.out_dir is not None):
            return
        resumed = resume_state(
            self.ctx.out_dir,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            config=self.config,
            fresh=self.state_dict,
        )
        self.load_state_dict(resumed.state)
        self.emit({**resumed.record, "step": self.step, "global_sha256": self.algorithm.global_sha256()})

    def maybe_checkpoint(self) -> None:
        """The default checkpoint hook: every worker saves its state every ``checkpoint.every_rounds``."""
        every = self.config.checkpoint.every_rounds
        if not every or self.ctx.out_dir is None or self.algorithm.round % every != 0:
            return
        save_worker_state(
            self.ctx.out_dir,
            self.algorithm.round,
            self.ctx.rank,
            self.state_dict(),
            num_workers=self.ctx.world_size,
        )
        if self.ctx.rank == 0:
            prune(self.ctx.out_dir, self.config.checkpoint.keep, current=self.algorithm.round)

    # -------------------------------------------------------------------------------------- the loop
    def emit(self, record: dict[str, Any]) -> None:
        """Decorates ``record`` (the runner's hook) and sends it to the run's sink."""
        if self.decorate is not None:
            self.decorate(record)
        self.ctx.emit(record)

    def tokens(self) -> int:
        return self.step * self.task.tokens_per_step

    def inner_step(self) -> float:
        inputs, targets = next(self.task.batches)
        inputs, targets = inputs.to(self.ctx.device), targets.to(self.ctx.device)
        begin, blocked = self.clock.now(), self.ledger.blocked_s()
        # Modelled compute (network.step_time_s) is charged before the step function, which may end the
        # round and start its synchronisation: the sync must leave after the step's compute, as in real time.
        self.clock.add_compute()
        loss = self.step_fn(self, inputs, targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        elapsed = self.clock.now() - begin
        self.train_s += elapsed
        self.compute_s += elapsed - (self.ledger.blocked_s() - blocked)
        self.step += 1
        return loss

    def clip_gradients(self) -> None:
        """``clip_grad_norm_`` at ``train.grad_clip`` (0: off) over this worker's parameters."""
        if self.config.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip)

    def evaluate(self) -> dict[str, float]:
        self.last_eval = self.evaluator(self)
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
        """Resumes, trains to ``train.num_steps``, evaluates the final global weights; returns the result."""
        self.resume_hook(self)
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
            # This worker's own weights, before finish() loads the global ones: summary.json sets the global
            # model's eval loss beside them (issue 11). Only with the plain evaluator (a pipeline stage is
            # not a whole model).
            local = self.task.evaluate(self.model) if self.evaluator is evaluate_global else {}
        # Leaving the block finished any synchronisation in flight; the model holds the final weights.
        final = self.evaluate()
        if "eval_loss" in local:
            final = {**final, "local_eval_loss": local["eval_loss"]}
        result = self.result(final)
        return self.finish(self, result) if self.finish is not None else result

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
        self.checkpoint_hook(self)

    def result(self, final: dict[str, float]) -> WorkerResult:
        """The plain result (before the runner's ``finish`` hook)."""
        return worker_result(
            self.ctx,
            self.ledger,
            num_steps=self.step,
            num_rounds=self.algorithm.round,
            tokens=self.tokens(),
            wall_s=self.train_s,
            compute_s=self.compute_s,
            global_params_sha256=self.algorithm.global_sha256(),
            final_eval=final,
            num_params=sum(p.numel() for p in self.model.parameters()),
            extra=getattr(self.algorithm, "final_metrics", dict)(),
        )


def run_training(config: RunConfig, ctx: WorkerContext, parts: LoopParts | None = None) -> WorkerResult:
    """Trains one worker of a run composed of ``parts`` (default: a plain run) to the end and publishes its
    result."""
    result = TrainingLoop(config, ctx, parts).run()
    publish_result(ctx, result)
    return result
