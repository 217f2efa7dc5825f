"""FSDP2 inside a DiLoCo replica: each replica is N ranks that shard one model with ``fully_shard``.

A run is sharded with ``parallel.num_shards = N > 1``; ``num_workers`` is then R replicas x N shards and
global rank ``r`` sits at replica ``r // N``, shard ``r % N`` (:class:`ShardLayout`). Each rank joins

* its replica's **shard group** (the N ranks of one replica, a fast link inside a machine or cluster):
  ``fully_shard`` (Zhao et al. 2023, "PyTorch FSDP", arXiv 2304.11277; FSDP2's per-parameter ``DTensor``
  sharding along dim 0) all-gathers parameters for each block's forward and backward and reduce-scatters
  (averages) the gradients here;
* its shard's **sync group** (shard ``s`` of every replica, the slow link): the algorithm (DiLoCo,
  DiLoCoX, Streaming DiLoCo, FedAvg) averages this rank's local shard of every parameter with the same shard
  of the other replicas, and nothing else. Pseudo-gradients and the outer optimizer state live on the local
  shard, in fp32 (:func:`farsync.algorithms.base.local_shard`).

Process groups: ``DeviceMesh`` and ``fully_shard`` require torch's *default* process group, so a sharded
worker initialises one (on a prefix of the run's store; gloo on CPU, NCCL on GPU) and builds every
replica's shard group from it with ``dist.new_group``. That default group exists only because the mesh
needs it: farsync's own collectives (the sync group, through :class:`~farsync.comm.communicator.Communicator`)
still use explicit groups from :func:`farsync.comm.groups.make_group`. The default group is per process,
so sharded runs are processes only (``farsync train`` or torchrun), never threads.

Data and numerics: a replica reads data shard ``replica`` of R, exactly as an unsharded worker of an
R-worker run, draws the replica's batch of ``train.batch_size`` and each shard rank takes an equal slice;
FSDP's reduce-scatter averages the slices' gradients, which is the whole batch's gradient, and the loss
recorded is the mean over the shard group. So R replicas x N shards reproduce the unsharded R-worker run
up to floating-point summation order. ``train.precision = "bf16"`` uses FSDP2's
``MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32)``: sharded fp32 master weights, bf16
compute, fp32 gradient reduction.

Composition: compression and robust aggregation act on each shard group's local shards (a compressor or a
robust rule sees one shard of the pseudo-gradient, so e.g. Krum chooses per shard); byzantine simulation
wraps the reducer as usual. Refused with a config error (:meth:`farsync.config.RunConfig.validate`): ddp and
gossip (they need whole gradients or optimizer states), differential privacy (it clips whole updates),
pipeline stages, federated client sampling; and ``--elastic``. Communication figures (``bytes_sent``)
count the sync group only: FSDP's all-gathers and reduce-scatters inside a replica are not charged.

Checkpoints hold each rank's local shards (``DTensor`` state turned into plain tensors and back), so a run
resumes with the same layout only. At the end the global weights are gathered within each replica: the
result's hash is over whole tensors (comparable with an unsharded run's) and, for a Hugging Face model,
rank 0 writes ``RUN_DIR/final/`` for ``farsync export``.

Failure: an exception in any rank propagates out of the loop; the collective it leaves unmatched times out
on the other ranks (``elastic.collective_timeout_s`` for the sync group) and the launcher fails the run.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from farsync.algorithms.base import params_sha256
from farsync.comm.clock import Clock
from farsync.comm.communicator import Communicator
from farsync.comm.groups import backend_for, make_group
from farsync.comm.ledger import ByteLedger
from farsync.config import RunConfig
from farsync.report.export import save_final_model
from farsync.train import (
    MODEL_INIT_LOCK,
    LoopParts,
    Task,
    TrainingLoop,
    WorkerContext,
    WorkerResult,
    build_task,
    find_latest,
    link_for_group,
    load_worker_state,
    plain_step,
    prune,
    publish_result,
    save_worker_state,
)
from farsync.train.task import build_text_model

__all__ = [
    "ShardLayout",
    "ShardedWorker",
    "gather_full",
    "localize_state",
    "run_sharded_worker",
    "shard_model",
    "transformer_blocks",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardLayout:
    """``num_replicas`` DiLoCo replicas of ``num_shards`` FSDP ranks each; rank ``r`` = replica x N + shard."""

    num_replicas: int
    num_shards: int

    def replica(self, rank: int) -> int:
        return rank // self.num_shards

    def shard(self, rank: int) -> int:
        return rank % self.num_shards

    def replica_ranks(self, replica: int) -> list[int]:
        """Global ranks of one replica's shard group."""
        return [replica * self.num_shards + shard for shard in range(self.num_shards)]

    def shard_ranks(self, shard: int) -> list[int]:
        """Global ranks of one shard's sync group (that shard of every replica)."""
        return [replica * self.num_shards + shard for replica in range(self.num_replicas)]


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks FSDP shards one by one: the longest ``nn.ModuleList`` in the model (farsync's GPT
    ``blocks``, a Llama's ``model.layers``, GPT-2's ``transformer.h``); empty when there is none."""
    longest: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > len(longest):
            longest = list(module)
    return longest


def shard_model(model: nn.Module, mesh: Any, precision: str) -> nn.Module:
    """``fully_shard`` every transformer block, then the root (embeddings, final norm, output layer)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if precision == "bf16"
        else MixedPrecisionPolicy()
    )
    # The root too reshards after forward (FSDP2 keeps it gathered by default, for the backward to come): an
    # evaluation has no backward, and the algorithm writes the shards between steps, so a gathered copy
    # left behind would be stale; parameters are DTensors whenever the loop is between forward passes.
    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=True)
    return model


def _is_dtensor(value: Any) -> bool:
    return hasattr(value, "to_local") and hasattr(value, "device_mesh")


def localize_state(state: Any) -> Any:
    """``state`` with every ``DTensor`` replaced by a copy of this rank's local shard (for ``torch.save``)."""
    if _is_dtensor(state):
        return state.to_local().detach().clone()
    if isinstance(state, dict):
        return {key: localize_state(value) for key, value in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(localize_state(value) for value in state)
    return state


def _like(local: Tensor, template: Any) -> Any:
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        local.to(template.device),
        template.device_mesh,
        template.placements,
        shape=template.shape,
        stride=template.stride(),
    )


def _globalize_loop_state(loop: TrainingLoop, state: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`localize_state` for a loop's state: local shards back into ``DTensor``s shaped
    like the loop's sharded parameters (model weights and the inner optimizer's per-parameter states)."""
    templates = loop.model.state_dict()
    state = dict(state)
    state["model"] = {
        name: _like(value, templates[name]) if _is_dtensor(templates.get(name)) else value
        for name, value in state["model"].items()
    }
    params = [p for group in loop.optimizer.param_groups for p in group["params"]]
    optimizer = dict(state["optimizer"])
    per_param: dict[Any, Any] = {}
    for index, entries in optimizer["state"].items():
        param = params[int(index)]
        local_shape = param.to_local().shape if _is_dtensor(param) else None
        per_param[index] = {
            key: _like(value, param)
            if local_shape is not None and isinstance(value, Tensor) and value.shape == local_shape
            else value
            for key, value in entries.items()
        }
    optimizer["state"] = per_param
    state["optimizer"] = optimizer
    return state


def gather_full(model: nn.Module, local_tensors: list[Tensor]) -> Iterator[tuple[str, Tensor]]:
    """``(name, whole tensor)`` for each of ``model``'s sharded parameters, built from ``local_tensors`` (this
    rank's shards, in ``named_parameters`` order) by an all-gather in the shard group; every rank of the
    replica must call it."""
    for (name, param), local in zip(model.named_parameters(), local_tensors, strict=True):
        if _is_dtensor(param):
            yield name, _like(local.to(param.dtype), param).full_tensor().detach()
        else:
            yield name, local.detach()


class ShardedWorker:
    """One rank of a sharded replica: the layout, the groups, the sharded task and the loop's parts."""

    def __init__(self, config: RunConfig, ctx: WorkerContext) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                "parallel.num_shards > 1 needs one process per rank (FSDP2 uses the per-process default "
                "process group): run with farsync train or torchrun, not as threads"
            )
        self.config, self.ctx = config, ctx
        shards = config.parallel.num_shards
        self.layout = ShardLayout(ctx.world_size // shards, shards)
        self.replica, self.shard = self.layout.replica(ctx.rank), self.layout.shard(ctx.rank)
        self.shard_group = self._init_groups()

    # ------------------------------------------------------------------------------------------ set-up
    def _init_groups(self) -> Any:
        """The default group (for the device mesh) and this replica's shard group; returns the latter."""
        ctx = self.ctx
        if dist.is_initialized():
            raise RuntimeError("a default process group already exists in this process; one rank per process")
        if ctx.device.type == "cuda":
            torch.cuda.set_device(ctx.device)
        dist.init_process_group(
            backend_for(ctx.device),
            store=dist.PrefixStore(f"{ctx.group_prefix}/default", ctx.store),  # type: ignore[attr-defined]
            rank=ctx.rank,
            world_size=ctx.world_size,
            timeout=datetime.timedelta(seconds=self.config.elastic.collective_timeout_s),
        )
        # Every rank creates every replica's group, in the same order (new_group is collective).
        groups = [dist.new_group(self.layout.replica_ranks(r)) for r in range(self.layout.num_replicas)]
        return groups[self.replica]

    def build_task(self) -> Task:
        """Replica ``replica``'s task (data shard ``replica`` of R) with its model sharded over the replica."""
        from torch.distributed.device_mesh import DeviceMesh

        config = self.config
        with MODEL_INIT_LOCK:
            torch.manual_seed(config.seed)
        task = build_task(
            config.model,
            config.data,
            batch_size=config.train.batch_size,
            num_eval_batches=config.train.num_eval_batches,
            rank=self.replica,
            num_workers=self.layout.num_replicas,
            seed=config.seed,
            # bf16 comes from FSDP's mixed-precision policy here, not autocast.
            precision="fp32",
        )
        mesh = DeviceMesh.from_group(self.shard_group, self.ctx.device.type)
        task.model = shard_model(task.model.to(self.ctx.device), mesh, config.train.precision)
        return task

    def build_comm(self, ledger: ByteLedger, clock: Clock) -> Communicator:
        """This shard's sync group over the replicas, at the link of its slowest member."""
        config, ctx = self.config, self.ctx
        group = make_group(
            ctx.store,
            f"{ctx.group_prefix}/sync/shard{self.shard}",
            self.replica,
            self.layout.num_replicas,
            device=ctx.device,
            timeout_s=config.elastic.collective_timeout_s,
        )
        return Communicator(
            group,
            self.replica,
            self.layout.num_replicas,
            ledger=ledger,
            clock=clock,
            link=link_for_group(config.network, self.layout.shard_ranks(self.shard)),
        )

    def parts(self) -> LoopParts:
        """The loop's parts: the sharded task, this shard's sync communicator, the sharded step and hooks."""
        clock = Clock(self.config.network.emulation, step_time_s=self.config.network.step_time_s)
        ledger = ByteLedger(rank=self.ctx.rank)
        return LoopParts(
            task=self.build_task(),
            clock=clock,
            ledger=ledger,
            comm=self.build_comm(ledger, clock),
            step=self.step,
            decorate=self.decorate,
            finish=self.finish,
            resume=self.resume,
            checkpoint=self.checkpoint,
        )

    # -------------------------------------------------------------------------------------- the parts
    def step(self, loop: TrainingLoop, inputs: Tensor, targets: Tensor) -> float:
        """This rank's slice of the replica's batch; the loss reported is the replica's (mean over shards)."""
        shards = self.layout.num_shards
        rows = inputs.shape[0] // shards
        begin = self.shard * rows
        loss = plain_step(loop, inputs[begin : begin + rows], targets[begin : begin + rows])
        total = torch.tensor([loss], dtype=torch.float64, device=self.ctx.device)
        dist.all_reduce(total, group=self.shard_group)
        return float(total.item()) / shards

    def decorate(self, record: dict[str, Any]) -> None:
        record.setdefault("replica", self.replica)
        record.setdefault("shard", self.shard)

    def checkpoint(self, loop: TrainingLoop) -> None:
        """Every rank saves its local shards every ``checkpoint.every_rounds`` rounds."""
        every = self.config.checkpoint.every_rounds
        out_dir = self.ctx.out_dir
        if not every or out_dir is None or loop.algorithm.round % every != 0:
            return
        state = localize_state(loop.state_dict())
        save_worker_state(
            out_dir, loop.algorithm.round, self.ctx.rank, state, num_workers=self.ctx.world_size
        )
        if self.ctx.rank == 0:
            prune(out_dir, self.config.checkpoint.keep, current=loop.algorithm.round)

    def resume(self, loop: TrainingLoop) -> None:
        """This rank's shards from the newest checkpoint every rank wrote (same layout only)."""
        out_dir = self.ctx.out_dir
        if not (self.ctx.resume and out_dir is not None):
            return
        found = find_latest(out_dir, self.ctx.world_size)
        if found is None:
            logger.warning(
                "rank %d: no usable checkpoint in %s; starting from scratch", self.ctx.rank, out_dir
            )
            return
        round_index, directory = found
        state = load_worker_state(directory, self.ctx.rank)
        loop.load_state_dict(_globalize_loop_state(loop, state))
        loop.emit({"kind": "resume", "round": round_index, "step": loop.step})

    def finish(self, loop: TrainingLoop, result: WorkerResult) -> WorkerResult:
        """Whole-tensor hash of the global weights; rank 0 saves a Hugging Face model's for export."""
        full = dict(gather_full(loop.model, loop.algorithm.global_tensors()))
        result = dataclasses.replace(result, global_params_sha256=params_sha256(list(full.values())))
        if self.ctx.rank == 0 and self.ctx.out_dir is not None and hasattr(loop.task.model, "hf_model"):
            tokenizer = loop.task.tokenizer
            assert tokenizer is not None
            with MODEL_INIT_LOCK:
                whole = build_text_model(self.config.model, tokenizer.vocab_size, self.config.seed)
            with torch.no_grad():
                for name, param in whole.named_parameters():
                    param.copy_(full[name])
            save_final_model(whole, self.ctx.out_dir, tokenizer)
        return result


def run_sharded_worker(config: RunConfig, ctx: WorkerContext) -> WorkerResult:
    """Trains one rank of a sharded replica to the end and publishes its result."""
    worker = ShardedWorker(config, ctx)
    try:
        result = TrainingLoop(config, ctx, worker.parts()).run()
        publish_result(ctx, result)
        return result
    finally:
        dist.destroy_process_group()
