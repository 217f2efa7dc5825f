"""DiLoCo with a one-step-delay overlap: the outer all-reduce of round t runs while round t+1 computes.

Two published variants, chosen with ``algorithm.overlap`` when ``algorithm.delay = 1``.

Notation: worker i of M, round t = 1, 2, ...; ``x_i`` the worker's local weights; ``a_i^t`` its weights
when round t started; ``theta`` the *consensus* global weights (fp32, bitwise identical on every worker,
stepped by the outer optimizer ``OuterOpt``: SGD with Nesterov momentum); ``Delta^t`` the weighted mean over
workers of ``Delta_i^t``. At the end of round t, worker i

1. forms its pseudo-gradient ``Delta_i^t = a_i^t - x_i`` (what its H inner steps moved it);
2. waits for ``Delta^{t-1}``, whose all-reduce it started one round ago (nothing for t = 1), and applies it
   one round late: ``theta <- OuterOpt(theta, Delta^{t-1})``;
3. starts the all-reduce of ``Delta_i^t`` in the background (:class:`~farsync.comm.background.BackgroundSync`);
4. sets ``x_i <- a_i^{t+1} = theta + o_i^t`` and starts round t+1 at once, where the offset ``o_i^t`` is:

``delayed`` (DiLoCoX, Qi et al. 2025, arXiv 2506.21263):
    ``o_i^t = -Delta_i^t``, i.e. ``a_i^{t+1} = theta_new + (x_i - a_i^t)``. The outer optimizer steps with the
    previous round's average, and the progress made while that average was in flight is kept on top of the
    new global weights. One round later this local progress is dropped from the offset and enters ``theta``
    as part of its average ``Delta^t``, so no update is counted twice. (The paper states the rule in words;
    this bookkeeping, measuring the progress from the round's start point, is ours.)

``eager`` (Kale, Douillard and Donchev 2025, "Eager Updates For Overlapped Communication and Computation in
DiLoCo", arXiv 2502.12996):
    the paper gives each worker its own outer trajectory stepped with
    ``Delta~_i^t = (1/M) Delta_i^t + (Delta^{t-1} - (1/M) Delta_i^{t-1})``: the worker's fresh pseudo-gradient
    stands in for its own share of the average that has not arrived yet, and the other workers' shares come
    one round late. SGD with (Nesterov) momentum is linear in its gradients, so that trajectory equals
    ``theta + o_i^t`` where ``o_i`` is a second outer optimizer (same lr and momentum) run from zero on
    ``c_i^t = (1/M)(Delta_i^t - Delta_i^{t-1})``. Keeping ``theta`` separately gives every worker the same
    global weights to evaluate, checkpoint and end with, which the per-worker form does not.

Compute never waits on communication while one round's all-reduce takes less than the next round's H inner
steps: before each all-reduce the reducer's ``time_budget_s`` (adaptive compressed reducers have one) is set
to H x the measured inner-step compute time (:mod:`farsync.algorithms.step_timer`).

``finish()`` waits for the last all-reduce, applies it and loads ``theta`` into the model, so every worker
ends with bitwise-identical weights. Checkpoints: :meth:`state_dict` first drains the all-reduce in flight
(the training thread waits for it, once per checkpoint) and stores its averaged result, which is applied at
the next round end as if it had just arrived; a resumed run therefore continues the same trajectory.

Failure: a worker whose pseudo-gradient holds NaN or Inf sends zeros with weight 0 that round and logs a
warning naming itself; the round goes on with the others' average, and the worker restarts from ``theta``.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, ClassVar

import torch
from torch import nn

from farsync.algorithms.diloco import DiLoCo, OuterState
from farsync.algorithms.step_timer import InnerStepTimer
from farsync.comm.background import BackgroundSync, Pending
from farsync.comm.communicator import Communicator
from farsync.config import AlgorithmConfig
from farsync.reducers.base import Reducer
from farsync.reducers.budget import reducer_metrics, set_time_budget

__all__ = ["OverlappedDiLoCo", "checked_pseudo_gradient"]

logger = logging.getLogger(__name__)

Named = dict[str, torch.Tensor]


def checked_pseudo_gradient(pseudo: Named, weight: float, rank: int, what: str) -> tuple[Named, float]:
    """``pseudo`` and ``weight``, or zeros and weight 0 (with a warning naming the worker) if not finite."""
    bad = [name for name, tensor in pseudo.items() if not torch.isfinite(tensor).all()]
    if not bad:
        return pseudo, weight
    logger.warning(
        "worker %d: pseudo-gradient of %s has NaN/Inf in %s; left out of this synchronisation",
        rank,
        what,
        ", ".join(bad[:3]),
    )
    return {name: torch.zeros_like(tensor) for name, tensor in pseudo.items()}, 0.0


class OverlappedDiLoCo(DiLoCo):
    """DiLoCo whose outer all-reduce overlaps the next round (see the module docstring for the equations)."""

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
        super().__init__(model, optimizer, comm, config, reducer=reducer)
        self.variant = self.config.overlap
        self.background = BackgroundSync(comm.clock, comm.ledger)
        self.pending: Pending[Named] | None = None
        self.resolved: Named | None = None
        self.anchor = self._local_copy()
        self.previous_pseudo: Named = {n: torch.zeros_like(t) for n, t in self.anchor.items()}
        self.offset = self._zero_offset()
        self.timer = InnerStepTimer()
        self.time_budget_s: float | None = None

    # ------------------------------------------------------------------------------------ the round
    def _local_copy(self) -> Named:
        return {name: p.detach().clone().float() for name, p in self.named_params.items()}

    def _zero_offset(self) -> OuterState:
        zeros = {
            name: nn.Parameter(torch.zeros_like(t), requires_grad=False) for name, t in self.anchor.items()
        }
        return OuterState(zeros, self.config)

    def after_inner_step(self) -> bool:
        self.timer.tick()
        ended = super().after_inner_step()
        if ended:
            self.timer.restart()
        return ended

    def outer_round(self) -> None:
        pseudo = {name: self.anchor[name] - p.detach().float() for name, p in self.named_params.items()}
        pseudo, weight = checked_pseudo_gradient(pseudo, self.weight, self.comm.rank, f"round {self.round}")
        # Wait for the previous round's average before starting the next all-reduce: the link carries one
        # synchronisation at a time, so the new one cannot start (in emulated time) before the old one ends.
        previous = self._take_previous()
        if previous is not None:
            self.outer.step(previous)
        self._set_budget()
        self.pending = self.background.submit(functools.partial(self.reducer, pseudo, weight))
        self._restart_from(self._next_offset(pseudo))

    def _take_previous(self) -> Named | None:
        if self.resolved is not None:
            previous, self.resolved = self.resolved, None
            return previous
        if self.pending is not None:
            previous = self.pending.wait()
            self.pending = None
            return previous
        return None

    def _set_budget(self) -> None:
        window = self.timer.window_s(self.round_length(self.round + 1))
        if window is not None and window > 0:
            self.time_budget_s = window
            set_time_budget(self.reducer, window)

    def _next_offset(self, pseudo: Named) -> Named:
        if self.variant == "delayed":
            return {name: -tensor for name, tensor in pseudo.items()}
        share = 1.0 / self.comm.world_size
        correction = {name: share * (pseudo[name] - self.previous_pseudo[name]) for name in pseudo}
        self.previous_pseudo = {name: tensor.clone() for name, tensor in pseudo.items()}
        self.offset.step(correction)
        return self.offset.params

    def _restart_from(self, offset: Named) -> None:
        with torch.no_grad():
            for name, param in self.named_params.items():
                param.copy_(self.outer.params[name] + offset[name])
        self.anchor = self._local_copy()

    def drain(self) -> None:
        """Waits for the all-reduce in flight and keeps its result for the next round end."""
        if self.pending is not None:
            self.resolved = self.pending.wait()
            self.pending = None

    def finish(self) -> None:
        """Applies the last average and loads the (identical on every worker) global weights."""
        self.drain()
        if self.resolved is not None:
            self.outer.step(self.resolved)
            self.resolved = None
        self.load_global_into_model()
        self.anchor = self._local_copy()
        self.previous_pseudo = {n: torch.zeros_like(t) for n, t in self.anchor.items()}
        self.offset = self._zero_offset()
        self.background.close()

    # ----------------------------------------------------------------------------------- inspection
    def metrics(self) -> dict[str, Any]:
        values: dict[str, Any] = {"overlap": self.variant}
        step = self.timer.step_s()
        if step is not None:
            values["inner_step_s"] = step
        if self.time_budget_s is not None:
            values["time_budget_s"] = self.time_budget_s
        values.update(reducer_metrics(self.reducer))
        return values

    def state_dict(self) -> dict[str, Any]:
        self.drain()
        state = super().state_dict()
        state.update(
            overlap=self.variant,
            resolved=None if self.resolved is None else {k: v.clone() for k, v in self.resolved.items()},
            anchor={k: v.clone() for k, v in self.anchor.items()},
            previous_pseudo={k: v.clone() for k, v in self.previous_pseudo.items()},
            offset=self.offset.state_dict(),
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.pending = None
        self.resolved = state.get("resolved")
        self.anchor = {k: v.clone() for k, v in state["anchor"].items()}
        self.previous_pseudo = {k: v.clone() for k, v in state["previous_pseudo"].items()}
        self.offset.load_state_dict(state["offset"])
