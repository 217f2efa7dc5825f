"""Pipeline execution inside one replica: GPipe and 1F1B schedules over the replica's pipeline group.

Each stage process holds one contiguous slice of the model (:func:`farsync.models.gpt_stage`). An inner
step splits the batch into ``M`` equal microbatches and runs, per stage, a list of forward and backward
actions:

* **GPipe** (Huang et al. 2019, arXiv 1811.06965): all M forwards, then all M backwards;
* **1F1B** (Narayanan et al. 2019, PipeDream, arXiv 1806.03377; the flush variant of Megatron-LM): stage
  ``s`` runs ``min(S - s - 1, M)`` warm-up forwards, then alternates one forward and one backward, then
  drains the remaining backwards, so at most ``S - s`` microbatches' activations are alive at once.

The last stage computes the loss of microbatch ``m`` as ``CE_m / M``, so the accumulated gradient is the
full-batch gradient (equal microbatches) and the step's loss is the sum of the microbatch losses.

Why not ``torch.distributed.pipelining``: its ``PipelineStage`` resolves peers through the c10d registry
(``dist.get_rank(group)``, ``dist.get_global_rank``), which exists only after ``init_process_group`` -- one
default group per process. That rules out the explicit groups farsync builds with ``make_group`` and the
threads mode that tests and benchmarks use (checked with torch 2.13: "Default process group has not been
initialized"). The schedules here are small and run over :class:`~farsync.comm.communicator.Communicator`
``send``/``recv`` on an explicit group, so every activation byte is charged to the ledger's
``"activations"`` channel at the replica's link speed.

Deadlock freedom: sends are posted asynchronously and only waited for at the end of a step; a stage blocks
only on a receive whose matching send its neighbour posts before blocking on anything that depends on this
stage. Tags distinguish forward and backward messages of each microbatch.

Failure: a peer that dies makes a receive fail or time out (``elastic.collective_timeout_s``); the error
propagates out of :meth:`PipelineRunner.train_step` and ends the worker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import Tensor, nn

from farsync.comm.communicator import Communicator, Handle

__all__ = ["Action", "PipelineRunner", "schedule_actions"]

logger = logging.getLogger(__name__)

Action = tuple[Literal["forward", "backward"], int]
LossFn = Callable[[Tensor, Tensor], Tensor]

_EVAL_TAG = 1 << 20


def schedule_actions(schedule: str, stage: int, num_stages: int, num_microbatches: int) -> list[Action]:
    """The order in which ``stage`` runs the forward and backward pass of each microbatch."""
    m = num_microbatches
    if schedule == "gpipe":
        return [("forward", i) for i in range(m)] + [("backward", i) for i in range(m)]
    if schedule != "1f1b":
        raise ValueError(f"parallel.schedule = {schedule!r}: allowed: 'gpipe', '1f1b'")
    warmup = min(num_stages - stage - 1, m)
    actions: list[Action] = [("forward", i) for i in range(warmup)]
    for i in range(m - warmup):
        actions += [("forward", warmup + i), ("backward", i)]
    actions += [("backward", i) for i in range(m - warmup, m)]
    return actions


class PipelineRunner:
    """Runs one stage's share of a pipelined step over the replica's pipeline communicator.

    Args:
        module: this stage's layers (stage 0 takes token ids, the last stage returns logits).
        comm: communicator over the replica's pipeline group; its rank is the stage index.
        schedule: "gpipe" or "1f1b".
        num_microbatches: M; must divide the batch.
        hidden_width: width of the activations passed between stages (shape ``[*batch_shape, width]``).
    """

    def __init__(
        self,
        module: nn.Module,
        comm: Communicator,
        *,
        schedule: str,
        num_microbatches: int,
        hidden_width: int,
    ) -> None:
        self.module, self.comm = module, comm
        self.stage, self.num_stages = comm.rank, comm.world_size
        self.schedule, self.num_microbatches, self.hidden_width = schedule, num_microbatches, hidden_width
        self.actions = schedule_actions(schedule, self.stage, self.num_stages, num_microbatches)
        self.is_first, self.is_last = self.stage == 0, self.stage == self.num_stages - 1

    # ------------------------------------------------------------------------------------ transport
    def _hidden(self, batch_shape: torch.Size) -> Tensor:
        dtype = next(self.module.parameters()).dtype
        return torch.empty(*batch_shape, self.hidden_width, dtype=dtype)

    def _receive(self, like: torch.Size, source: int, tag: int) -> Tensor:
        return self.comm.recv(self._hidden(like), source, tag).wait()

    # ------------------------------------------------------------------------------------- training
    def train_step(self, x: Tensor, y: Tensor, loss_fn: LossFn) -> float:
        """Forward and backward of every microbatch; gradients accumulate in the stage's parameters.

        Returns the batch loss on the last stage and 0.0 elsewhere (the caller shares it).
        """
        m = self.num_microbatches
        if x.shape[0] % m != 0:
            raise ValueError(f"parallel.num_microbatches = {m}: must divide the batch ({x.shape[0]})")
        inputs, targets = x.chunk(m), y.chunk(m)
        alive: dict[int, tuple[Tensor, Tensor]] = {}
        sends: list[Handle[Tensor]] = []
        total_loss = 0.0
        for kind, index in self.actions:
            if kind == "forward":
                stage_input, output = self._forward(inputs[index], index, sends)
                if self.is_last:
                    output = loss_fn(output, targets[index]) / m
                    total_loss += float(output.detach())
                alive[index] = (stage_input, output)
            else:
                self._backward(*alive.pop(index), inputs[index].shape, index, sends)
        for handle in sends:
            handle.wait()
        return total_loss

    def _forward(self, x: Tensor, index: int, sends: list[Handle[Tensor]]) -> tuple[Tensor, Tensor]:
        if self.is_first:
            stage_input = x
        else:
            stage_input = self._receive(x.shape, self.stage - 1, 2 * index).requires_grad_(True)
        output = self.module(stage_input)
        if not self.is_last:
            sends.append(self.comm.send(output.detach(), self.stage + 1, 2 * index))
        return stage_input, output

    def _backward(
        self,
        stage_input: Tensor,
        output: Tensor,
        batch_shape: torch.Size,
        index: int,
        sends: list[Handle[Tensor]],
    ) -> None:
        if self.is_last:
            output.backward()  # type: ignore[no-untyped-call]
        else:
            output.backward(self._receive(batch_shape, self.stage + 1, 2 * index + 1))  # type: ignore[no-untyped-call]
        if not self.is_first:
            assert stage_input.grad is not None
            sends.append(self.comm.send(stage_input.grad, self.stage - 1, 2 * index + 1))

    # ------------------------------------------------------------------------------------ inference
    @torch.no_grad()
    def forward_only(
        self, batches: Iterable[tuple[Tensor, Tensor]], consume: Callable[[Tensor, Tensor], None]
    ) -> None:
        """Runs whole batches forward through the pipeline; the last stage calls ``consume(logits, y)``."""
        sends: list[Handle[Tensor]] = []
        for index, (x, y) in enumerate(batches):
            tag = _EVAL_TAG + index
            hidden = x if self.is_first else self._receive(x.shape, self.stage - 1, tag)
            output = self.module(hidden)
            if self.is_last:
                consume(output, y)
            else:
                sends.append(self.comm.send(output, self.stage + 1, tag))
        for handle in sends:
            handle.wait()

    def sum_across_stages(self, values: list[float]) -> list[float]:
        """Sums a few scalars over the replica's stages (one small all-reduce on the pipeline group)."""
        packed = torch.tensor(values, dtype=torch.float64)
        return [float(v) for v in self.comm.all_reduce(packed, op="sum").wait()]
