"""DiLoCo: Distributed Low-Communication training (Douillard et al. 2023, arXiv 2311.08105).

Each worker runs H inner steps of its own optimizer (AdamW) from the current global weights, then

    pseudo_gradient_i = theta_global - theta_i                       (per worker)
    Delta             = mean_i pseudo_gradient_i                     (one all-reduce)
    theta_global      = OuterSGD(theta_global, Delta)                (Nesterov momentum, see below)
    theta_i           = theta_global                                 (every worker restarts from it)

Outer learning rate and momentum: the paper's lr 0.7 / momentum 0.9 is not the default here. Left to the rule
(``algorithm.outer_lr = 0``, ``algorithm.outer_momentum < 0``, the defaults), they come from
:func:`farsync.config.outer_recipe` for this group's M workers and H inner steps: at H >= 30 momentum 0.7 and
lr 0.5 sqrt(M) capped at 1 (M = 2: 0.71, M >= 4: 1.0), moving linearly towards plain averaging (lr 1, no
momentum) as H shrinks. With tens of rounds rather than thousands, 0.7 / 0.9 did worse in ``farsync bench
quality`` (the measurements are in ``outer_recipe``'s docstring). Values set explicitly are kept (the
paper's: ``algorithm.outer_lr=0.7``, ``algorithm.outer_momentum=0.9``); momentum 0 turns Nesterov off.

The global weights and the outer momentum live in fp32 on every worker (all workers apply the same outer
step to the same averaged pseudo-gradient, so they stay bitwise identical without a broadcast).

Warm-up (``num_warmup_rounds``): the first rounds use a shorter H, which keeps the replicas close while the
loss falls fastest; the benchmark shows what it is worth.

Failure: a worker whose pseudo-gradient holds NaN or Inf sends zeros with weight 0 for that round, logs a
warning naming itself, and adopts the average of the others; the round goes on.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch
from torch import nn

from farsync.algorithms.base import Algorithm
from farsync.comm.communicator import Communicator
from farsync.config import AlgorithmConfig
from farsync.reducers.base import Reducer
from farsync.reducers.budget import replaces_outer_momentum

__all__ = ["DiLoCo", "OuterState"]

logger = logging.getLogger(__name__)


class OuterState:
    """fp32 global weights and the outer optimizer over them."""

    def __init__(
        self,
        named_params: dict[str, nn.Parameter],
        config: AlgorithmConfig,
        *,
        lr: float | None = None,
        momentum: float | None = None,
    ) -> None:
        self.params = {name: p.detach().clone().float() for name, p in named_params.items()}
        momentum = config.outer_momentum if momentum is None else momentum
        lr = config.outer_lr if lr is None else lr
        if lr <= 0 or momentum < 0:
            raise ValueError(
                f"outer lr {lr} / momentum {momentum} are still the 'use the rule' markers: resolve them "
                "with AlgorithmConfig.with_outer_recipe(num_workers) first (lr must be > 0, momentum in [0, 1))"
            )
        self.optimizer = torch.optim.SGD(
            list(self.params.values()),
            lr=lr,
            momentum=momentum,
            nesterov=config.nesterov and momentum > 0,
        )

    def step(self, averaged: dict[str, torch.Tensor]) -> None:
        """Applies the outer optimizer with ``averaged`` as the gradient of the global weights."""
        for name, param in self.params.items():
            param.grad = averaged[name].to(param.dtype).clone()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        return {
            "params": {k: v.clone() for k, v in self.params.items()},
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for name, value in state["params"].items():
                self.params[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])


class DiLoCo(Algorithm):
    """DiLoCo with a synchronous outer step every H inner steps (see the module docstring)."""

    name: ClassVar[str] = "diloco"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        comm: Communicator,
        config: AlgorithmConfig | None = None,
        *,
        reducer: Reducer | None = None,
    ) -> None:
        super().__init__(model, optimizer, comm, reducer=reducer)
        # Outer lr / momentum left to the rule follow this group's M and H (config.outer_recipe), or
        # SparseLoCo's (1, 0) when the reducer's error-feedback buffer stands in for the outer momentum.
        self.config = (config if config is not None else AlgorithmConfig()).with_outer_recipe(
            comm.world_size, error_feedback_momentum=replaces_outer_momentum(self.reducer)
        )
        self.outer = self._make_outer_state()
        self.steps_in_round = 0

    def _make_outer_state(self) -> OuterState:
        return OuterState(self.named_params, self.config)

    def round_length(self, round_index: int) -> int:
        """H for round ``round_index`` (shorter during warm-up)."""
        if round_index < self.config.num_warmup_rounds:
            return self.config.num_warmup_inner_steps
        return self.config.num_inner_steps

    def after_inner_step(self) -> bool:
        self.steps_in_round += 1
        if self.steps_in_round < self.round_length(self.round):
            return False
        self.steps_in_round = 0
        self.outer_round()
        return True

    # ------------------------------------------------------------------------------------ the round
    def pseudo_gradient(self) -> tuple[dict[str, torch.Tensor], float]:
        """theta_global - theta_local per parameter, and this worker's weight (0 if non-finite)."""
        pseudo = {name: self.outer.params[name] - p.detach().float() for name, p in self.named_params.items()}
        weight = self.weight
        bad = [name for name, t in pseudo.items() if not torch.isfinite(t).all()]
        if bad:
            logger.warning(
                "worker %d: pseudo-gradient of round %d has NaN/Inf in %s; left out of this round",
                self.comm.rank,
                self.round,
                ", ".join(bad[:3]),
            )
            pseudo = {name: torch.zeros_like(t) for name, t in pseudo.items()}
            weight = 0.0
        return pseudo, weight

    def outer_round(self) -> None:
        pseudo, weight = self.pseudo_gradient()
        averaged = self.reducer(pseudo, weight)
        self.outer.step(averaged)
        self.load_global_into_model()

    def finish(self) -> None:
        """Synchronises a last, partial round (when num_steps is not a multiple of H), so the final global
        weights include every inner step; every worker has done the same number of steps, so all agree."""
        if self.steps_in_round > 0:
            self.steps_in_round = 0
            self.outer_round()
            self.round += 1

    def load_global_into_model(self) -> None:
        with torch.no_grad():
            for name, param in self.named_params.items():
                param.copy_(self.outer.params[name])

    # ----------------------------------------------------------------------------------- inspection
    def global_tensors(self) -> list[torch.Tensor]:
        return list(self.outer.params.values())

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(outer=self.outer.state_dict(), steps_in_round=self.steps_in_round)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.outer.load_state_dict(state["outer"])
        self.steps_in_round = int(state["steps_in_round"])
