"""Data-parallel SGD: average the gradients of all workers before every inner step.

The baseline every low-communication method is compared with (Li et al. 2020, "PyTorch Distributed:
Experiences on Accelerating Data Parallel Training", arXiv 2006.15704). All workers hold identical weights
at all times, and every step costs a full fp32 all-reduce of the gradients.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from farsync.algorithms.base import Algorithm
from farsync.comm.communicator import Communicator
from farsync.config import ConfigError
from farsync.reducers.base import Reducer

__all__ = ["DDP"]


class DDP(Algorithm):
    """Gradient all-reduce every step.

    Args:
        reducer: how gradients are averaged (default fp32 mean; a compressed or robust reducer also works).
        report_every: DDP has no outer round; a "round" (a record in the loop's metrics, a checkpoint
            boundary) ends every this many inner steps (``train.report_every``).

    Failure: a collective error propagates from ``optimizer.step()``; no update is applied for that step.
    """

    name: ClassVar[str] = "ddp"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        comm: Communicator,
        *,
        reducer: Reducer | None = None,
        report_every: int = 50,
    ) -> None:
        super().__init__(model, optimizer, comm, reducer=reducer)
        if report_every < 1:
            raise ConfigError("train.report_every", report_every, "must be >= 1")
        self.report_every = report_every

    def before_inner_step(self) -> None:
        grads = {
            name: (p.grad if p.grad is not None else torch.zeros_like(p))
            for name, p in self.named_params.items()
        }
        averaged = self.reducer(grads, self.weight)
        for name, param in self.named_params.items():
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            param.grad.copy_(averaged[name])

    def after_inner_step(self) -> bool:
        return self.inner_step % self.report_every == 0
