"""The algorithm interface: what every training algorithm hooks into the user's own loop.

An algorithm never owns the loop. It attaches to the user's inner optimizer with step hooks:

* ``before_inner_step`` runs just before ``optimizer.step()`` (DDP all-reduces gradients here);
* ``after_inner_step`` runs just after it (DiLoCo counts steps and, every H, synchronises).

So wrapping an existing loop is::

    with farsync.DiLoCo(model, optimizer, comm, config.algorithm) as diloco:
        for x, y in loader:
            loss_fn(model(x), y).backward()
            optimizer.step()          # hooks fire here
            optimizer.zero_grad()

An algorithm decides *when* to talk and *what* to send; the :class:`~farsync.reducers.base.Reducer` it is
given decides *how* (fp32, compressed, robust). On exit from the ``with`` block the algorithm finishes any
synchronisation still in flight, so the model holds the final global weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import nn

from farsync.comm.communicator import Communicator
from farsync.reducers.base import MeanReducer, Reducer

__all__ = ["Algorithm", "local_shard", "params_sha256"]

logger = logging.getLogger(__name__)


def local_shard(param: nn.Parameter) -> nn.Parameter:
    """The part of ``param`` this rank holds: itself, or for a parameter FSDP2 shards (a ``DTensor``) the
    local shard, a plain tensor sharing its storage, so an algorithm reads and writes this rank's shard and
    averages it with the same shard of the other replicas (:mod:`farsync.parallel.fsdp`)."""
    to_local = getattr(param, "to_local", None)
    if to_local is None:
        return param
    with torch.no_grad():  # without grad mode, to_local() is the shard itself, not an autograd view
        shard: nn.Parameter = to_local()
    return shard


def params_sha256(tensors: list[torch.Tensor]) -> str:
    """Hash of the exact bytes of ``tensors`` (fp32, CPU, in order): equal hashes mean bitwise-equal weights."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class Algorithm(ABC):
    """Base class: optimizer hooks, round counting, state for checkpoints.

    Args:
        model: the worker's model (its parameters are the local weights).
        optimizer: the user's inner optimizer over ``model``'s parameters.
        comm: communicator over the group of workers that synchronise together.
        reducer: how updates are averaged; default fp32 mean all-reduce over ``comm``.
    """

    name: ClassVar[str] = "base"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        comm: Communicator,
        *,
        reducer: Reducer | None = None,
    ) -> None:
        self.model, self.optimizer, self.comm = model, optimizer, comm
        self.reducer = reducer if reducer is not None else MeanReducer(comm)
        self.inner_step = 0
        self.round = 0
        self.round_ended = False
        self.weight = 1.0
        self._hooks: list[Any] = []
        self.named_params = {n: local_shard(p) for n, p in model.named_parameters() if p.requires_grad}

    # ----------------------------------------------------------------------------------- attachment
    def attach(self) -> None:
        if self._hooks:
            return
        self._hooks = [
            self.optimizer.register_step_pre_hook(lambda *_: self.before_inner_step()),
            self.optimizer.register_step_post_hook(lambda *_: self._after()),
        ]

    def detach(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def __enter__(self) -> Algorithm:
        self.attach()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.detach()
        if exc_type is None:
            self.finish()

    def _after(self) -> None:
        self.inner_step += 1
        self.round_ended = self.after_inner_step()
        if self.round_ended:
            self.round += 1

    # ------------------------------------------------------------------------------------ the hooks
    def before_inner_step(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """Called before every inner ``optimizer.step()``."""

    @abstractmethod
    def after_inner_step(self) -> bool:
        """Called after every inner step; returns True when an outer round ended at this step."""

    def finish(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """Completes any synchronisation in flight (end of training)."""

    # ----------------------------------------------------------------------------------- inspection
    def global_tensors(self) -> list[torch.Tensor]:
        """The weights all workers agree on (DDP and after a sync: the model's own)."""
        return [p.detach() for p in self.named_params.values()]

    def global_sha256(self) -> str:
        return params_sha256(self.global_tensors())

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[nn.Module]:
        """The model with the global weights swapped in, for evaluation; local weights restored after."""
        saved = [p.detach().clone() for p in self.named_params.values()]
        with torch.no_grad():
            for param, value in zip(self.named_params.values(), self.global_tensors(), strict=True):
                param.copy_(value)
        try:
            yield self.model
        finally:
            with torch.no_grad():
                for param, value in zip(self.named_params.values(), saved, strict=True):
                    param.copy_(value)

    def metrics(self) -> dict[str, Any]:
        """Extra per-round metrics (chosen rank, bits, ...); by default those of the reducer chain."""
        from farsync.reducers.budget import reducer_metrics

        return reducer_metrics(self.reducer)

    # ------------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"inner_step": self.inner_step, "round": self.round, "reducer": self.reducer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner_step = int(state["inner_step"])
        self.round = int(state["round"])
        self.reducer.load_state_dict(state.get("reducer", {}))
