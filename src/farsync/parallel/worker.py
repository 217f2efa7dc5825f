"""One stage process of a pipelined DiLoCo replica: DiLoCoX's dual optimizer policy.

DiLoCoX (Qi et al. 2025, arXiv 2506.21263) trains past one device's memory by making each DiLoCo replica a
pipeline. Worker ``r`` of ``R x S`` is stage ``r % S`` of replica ``r // S`` (:mod:`farsync.parallel.mesh`)
and owns only its stage's layers together with

* the **inner** optimizer (AdamW) state of those layers, stepped after every pipelined inner step;
* the **outer** optimizer (DiLoCo's Nesterov SGD over fp32 global weights) state of those layers, run by
  the configured algorithm (:func:`farsync.train.build.build_algorithm`, so compression, error feedback and the
  overlapped outer step of the other algorithms apply unchanged) over the stage's sync group.

So the same stage of every replica averages its pseudo-gradient with the others over the slow link
(``network.bandwidth``, ledger channel ``"sync"``), while activations move inside a replica over the fast
link (``network.intra_bandwidth``, channel ``"activations"``). All stages of a replica read the same batches
(the replica's data shard, seeded by the replica index), so replica ``i`` sees exactly what worker ``i``
of an unpipelined run with ``R`` workers sees.

Loss, clipping, evaluation: only the last stage computes the loss; a two-element all-reduce over the
pipeline group shares it with the other stages together with the squared gradient norms, so gradient
clipping uses the replica's global norm (as ``clip_grad_norm_`` on the whole model would). Evaluation runs
the global weights forward through the pipeline and shares the last stage's sums the same way.

The stage process is the core loop (:class:`farsync.train.TrainingLoop`) composed of a
:class:`PipelineStage`'s parts: the stage's task and model, its sync communicator, the pipelined step and
evaluation, record decoration (replica, stage, activation bytes) and the per-stage result. Rounds,
checkpoints, resume and metrics are the core's: each rank saves its own stage's state under its global rank
(:mod:`farsync.train.checkpoint`); a checkpoint is usable only when every stage of every replica wrote it.

Failure: a non-finite pseudo-gradient drops only that stage's update for the round (weight 0 in its sync
group); a dead peer fails the next receive or collective and ends the worker.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from farsync.comm.clock import Clock
from farsync.comm.communicator import Communicator
from farsync.comm.ledger import ByteLedger
from farsync.config import ConfigError, RunConfig
from farsync.models import GPT, GPTStage, gpt_stage
from farsync.parallel.mesh import Mesh, build_mesh_groups, intra_link
from farsync.parallel.pipeline import PipelineRunner
from farsync.report.pipeline import stage_memory
from farsync.train import LoopParts, TrainingLoop, WorkerContext, WorkerResult, run_training
from farsync.train.build import link_for_group
from farsync.train.task import MODEL_INIT_LOCK, Task, build_task

__all__ = ["PipelineStage", "PipelinedWorkerResult", "run_pipelined_worker"]

logger = logging.getLogger(__name__)

ACTIVATIONS = "activations"
SYNC = "sync"


@dataclass(kw_only=True)
class PipelinedWorkerResult(WorkerResult):
    """A stage process's result: the core fields (``bytes_sent`` = slow-link sync bytes) plus its place in
    the grid, its activation traffic and the memory its stage holds."""

    replica: int
    stage: int
    num_replicas: int
    num_stages: int
    num_microbatches: int
    schedule: str
    activation_bytes: int
    intra_bandwidth_bps: float
    stage_num_params: int
    model_num_params: int
    stage_memory: dict[str, int]


def _cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


class PipelineStage:
    """What makes a worker a pipeline stage: its place in the grid, its slice of the model, two
    communicators over one ledger and clock, and the schedule runner; :meth:`parts` hands them to the loop.

    Raises:
        ConfigError: ``model.kind`` is not ``gpt`` (only the GPT splits into stages).
    """

    def __init__(self, config: RunConfig, ctx: WorkerContext) -> None:
        if config.model.kind != "gpt":
            raise ConfigError(
                "parallel.num_stages", config.parallel.num_stages, "pipeline stages need model.kind = 'gpt'"
            )
        self.config, self.ctx = config, ctx
        self.mesh = Mesh.for_world(ctx.world_size, config.parallel.num_stages)
        self.replica, self.stage = self.mesh.coordinate(ctx.rank)
        self.clock = Clock(config.network.emulation, step_time_s=config.network.step_time_s)
        self.ledger = ByteLedger(rank=ctx.rank)
        self.task, self.model = self._build_stage()
        self.pipe_comm, self.sync_comm = self._build_communicators()
        self.pipeline = PipelineRunner(
            self.model,
            self.pipe_comm,
            schedule=config.parallel.schedule,
            num_microbatches=config.parallel.num_microbatches,
            hidden_width=config.model.width,
        )

    def parts(self) -> LoopParts:
        """The loop's parts: the algorithm runs per stage, over the stage's sync group."""
        return LoopParts(
            task=self.task,
            clock=self.clock,
            ledger=self.ledger,
            comm=self.sync_comm,
            step=self.step,
            evaluate=self.evaluate,
            decorate=self.decorate,
            finish=self.finish,
        )

    def _build_stage(self) -> tuple[Task, GPTStage]:
        """The replica's task (data shard ``replica`` of R) and this stage's slice of the model."""
        config = self.config
        with MODEL_INIT_LOCK:  # threads share the global RNG; never reseed it under another's model init
            torch.manual_seed(config.seed)
        task = build_task(
            config.model,
            config.data,
            batch_size=config.train.batch_size,
            num_eval_batches=config.train.num_eval_batches,
            rank=self.replica,
            num_workers=self.mesh.num_replicas,
            seed=config.seed,
        )
        full = task.model
        assert isinstance(full, GPT)
        self.model_num_params = sum(p.numel() for p in full.parameters())
        # The stage shares its modules with the full model (identical initialisation to an unpipelined run);
        # replacing the task's reference frees the other stages' layers.
        stage = gpt_stage(full, self.stage, self.mesh.num_stages).to(self.ctx.device)
        task.model = stage
        return task, stage

    def _build_communicators(self) -> tuple[Communicator, Communicator]:
        """The pipeline communicator (fast link, "activations") and the sync communicator (slow link, "sync")."""
        config, ctx = self.config, self.ctx
        groups = build_mesh_groups(
            ctx.store,
            ctx.group_prefix,
            self.mesh,
            ctx.rank,
            device=ctx.device,
            timeout_s=config.elastic.collective_timeout_s,
        )
        pipeline = Communicator(
            groups.pipeline,
            self.stage,
            self.mesh.num_stages,
            ledger=self.ledger,
            clock=self.clock,
            link=intra_link(config.network),
            channel=ACTIVATIONS,
        )
        sync = Communicator(
            groups.sync,
            self.replica,
            self.mesh.num_replicas,
            ledger=self.ledger,
            clock=self.clock,
            link=link_for_group(config.network, self.mesh.sync_members(self.stage)),
            channel=SYNC,
        )
        return pipeline, sync

    # ------------------------------------------------------------------------------------- metrics
    def decorate(self, record: dict[str, Any]) -> None:
        """Records with bytes carry the slow-link bytes (comparable with unpipelined runs) and, apart, the
        activation bytes of the fast link inside the replica; every record names its replica and stage."""
        if "bytes_sent" in record:
            record["bytes_sent"] = self.ledger.bytes_sent(SYNC)
            record["activation_bytes"] = self.ledger.bytes_sent(ACTIVATIONS)
        record.update(replica=self.replica, stage=self.stage)

    # ------------------------------------------------------------------------------------ the step
    def step(self, loop: TrainingLoop, inputs: Tensor, targets: Tensor) -> float:
        """Every microbatch through the schedule, the replica's loss and gradient norm shared by all stages,
        clipping by that global norm, then the optimizer step (and the algorithm's hooks inside it)."""
        self.model.train()
        loss = self.pipeline.train_step(inputs, targets, _cross_entropy)
        local_square_norm = sum(
            float(torch.linalg.vector_norm(p.grad.detach().float())) ** 2
            for p in self.model.parameters()
            if p.grad is not None
        )
        loss, square_norm = self.pipeline.sum_across_stages([loss, local_square_norm])
        if self.config.train.grad_clip > 0:
            self._clip(square_norm**0.5)
        loop.optimizer.step()  # the algorithm's hooks run inside this call
        return loss

    def _clip(self, total_norm: float) -> None:
        """``clip_grad_norm_`` with the norm of the whole replica's gradient (all stages)."""
        coefficient = min(self.config.train.grad_clip / (total_norm + 1e-6), 1.0)
        if coefficient < 1.0:
            for param in self.model.parameters():
                if param.grad is not None:
                    param.grad.detach().mul_(coefficient)

    def evaluate(self, loop: TrainingLoop) -> dict[str, float]:
        """The global weights forward through the pipeline; the last stage's sums shared with every stage."""
        sums = [0.0, 0.0, 0.0]  # summed loss, items, correct predictions

        def consume(logits: Tensor, y: Tensor) -> None:
            flat = logits.reshape(-1, logits.shape[-1])
            sums[0] += float(F.cross_entropy(flat, y.reshape(-1), reduction="sum"))
            sums[1] += y.numel()
            sums[2] += int((flat.argmax(-1) == y.reshape(-1)).sum())

        with loop.algorithm.evaluating() as model:
            was_training = model.training
            model.eval()
            self.pipeline.forward_only(self.task.eval_data, consume)
            model.train(was_training)
        total_loss, items, _ = self.pipeline.sum_across_stages(sums)
        eval_loss = total_loss / max(items, 1.0)
        return {"eval_loss": eval_loss if math.isfinite(eval_loss) else float("inf")}

    def finish(self, loop: TrainingLoop, result: WorkerResult) -> PipelinedWorkerResult:
        """The loop's result with the slow-link bytes and this stage's place, traffic and memory."""
        core = vars(result)
        core["bytes_sent"] = self.ledger.bytes_sent(SYNC)
        return PipelinedWorkerResult(
            **core,
            replica=self.replica,
            stage=self.stage,
            num_replicas=self.mesh.num_replicas,
            num_stages=self.mesh.num_stages,
            num_microbatches=self.config.parallel.num_microbatches,
            schedule=self.config.parallel.schedule,
            activation_bytes=self.ledger.bytes_sent(ACTIVATIONS),
            intra_bandwidth_bps=self.pipe_comm.link.bandwidth_bps if self.pipe_comm.link else 0.0,
            stage_num_params=sum(p.numel() for p in self.model.parameters()),
            model_num_params=self.model_num_params,
            stage_memory=stage_memory(self.model, loop.optimizer, loop.algorithm.state_dict()),
        )


def run_pipelined_worker(config: RunConfig, ctx: WorkerContext) -> WorkerResult:
    """Trains one stage of one replica to the end; publishes its result under ``final/<rank>``."""
    return run_training(config, ctx, PipelineStage(config, ctx).parts())
