"""Streaming DiLoCo: synchronise one parameter fragment at a time, overlapped with compute.

Douillard et al. 2025, "Streaming DiLoCo with overlapping communication: Towards a Distributed Free Lunch"
(arXiv 2501.18512). The parameters are split into P fragments of strided layers
(:mod:`farsync.algorithms.fragments` says which parameter goes where and when each fragment syncs). Every
fragment synchronises every H inner steps, fragment p at offset ``floor(p H / P)`` within the round. For
fragment p, after inner step s:

    Delta_{i,p}   = theta_p - x_{i,p}(s)                          (worker i's fragment pseudo-gradient)
    all-reduce    Delta_p = mean_i Delta_{i,p}                    (background; overlaps tau inner steps)
    after step s + tau:
        theta_p   <- OuterOpt(theta_p, Delta_p)                   (the fragment's outer step)
        x_{i,p}   <- alpha * x_{i,p}(s + tau) + (1 - alpha) * theta_p    (``algorithm.streaming_alpha``)

``theta`` is the global model (fp32, identical on every worker), with one outer optimizer (SGD with
Nesterov momentum) whose state is kept per parameter, so stepping one fragment leaves the others' momentum
alone. Each synchronisation carries about 1/P of the model, so the peak bytes per sync (the ledger's
``peak_sync_bytes``) drop to about 1/P of DiLoCo's while the total stays the same. Synchronisations run
one after another on the link: one that would start while another is still on the wire (tau > H/P) begins
when the link is free. With ``tau >= 1`` a compressed reducer's ``time_budget_s`` is set to tau x the
measured inner-step time.

``finish()`` waits for the synchronisations in flight, applies them and loads ``theta`` into the model, so
every worker ends with bitwise-identical weights (local progress made since a fragment's last sync is not
in ``theta``, as DiLoCo's steps after its last round). Checkpoints drain the synchronisations in flight and
store their averages, applied at their due step after a resume. ``num_warmup_rounds`` is not used here.

Failure: a worker whose fragment pseudo-gradient holds NaN or Inf sends zeros with weight 0 for that
fragment (warning naming the worker) and takes the global fragment as its local one when it arrives.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from farsync.algorithms.diloco import DiLoCo
from farsync.algorithms.fragments import fragment_offsets, fragments_starting, split_fragments
from farsync.algorithms.overlap import checked_pseudo_gradient
from farsync.algorithms.step_timer import InnerStepTimer
from farsync.comm.background import BackgroundSync, Pending
from farsync.comm.communicator import Communicator
from farsync.config import AlgorithmConfig
from farsync.reducers.base import Reducer
from farsync.reducers.budget import reducer_metrics, set_time_budget

__all__ = ["StreamingDiLoCo"]

logger = logging.getLogger(__name__)

Named = dict[str, torch.Tensor]


@dataclass
class FragmentSync:
    """One fragment's synchronisation between its start and the step it is applied at."""

    fragment: int
    due_step: int
    left_out: bool
    pending: Pending[Named] | None = None
    averaged: Named | None = None

    def result(self) -> Named:
        if self.averaged is None:
            assert self.pending is not None
            self.averaged, self.pending = self.pending.wait(), None
        return self.averaged


class StreamingDiLoCo(DiLoCo):
    """DiLoCo that syncs strided fragments in turn, each overlapped with tau inner steps (see module doc)."""

    name: ClassVar[str] = "streaming"

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
        cfg = self.config
        if cfg.streaming_tau >= cfg.num_inner_steps:
            from farsync.config import ConfigError

            raise ConfigError(
                "algorithm.streaming_tau",
                cfg.streaming_tau,
                f"must be < algorithm.num_inner_steps ({cfg.num_inner_steps})",
            )
        sizes = {name: p.numel() for name, p in self.named_params.items()}
        self.fragments = split_fragments(sizes, cfg.num_fragments)
        self.offsets = fragment_offsets(cfg.num_inner_steps, cfg.num_fragments)
        self.background = BackgroundSync(comm.clock, comm.ledger)
        self.in_flight: list[FragmentSync] = []
        self.timer = InnerStepTimer(comm.clock)
        self.sync_lane = comm.emulator.lane()  # one fragment sync on the link at a time
        self.fragment_syncs = 0
        self.time_budget_s: float | None = None

    # ------------------------------------------------------------------------------------ the steps
    def after_inner_step(self) -> bool:
        self.timer.tick()
        step = self.inner_step
        started = fragments_starting(step, self.config.num_inner_steps, self.offsets)
        for fragment in started:
            self._start(fragment, step)
        due = [sync for sync in self.in_flight if sync.due_step <= step]
        for sync in due:
            self._apply(sync)
        if started or due:
            self.timer.restart()
        return step % self.config.num_inner_steps == 0

    def _start(self, fragment: int, step: int) -> None:
        names = self.fragments[fragment]
        pseudo = {name: self.outer.params[name] - self.named_params[name].detach().float() for name in names}
        pseudo, weight = checked_pseudo_gradient(
            pseudo, self.weight, self.comm.rank, f"fragment {fragment} at step {step}"
        )
        window = self.timer.window_s(self.config.streaming_tau)
        if window is not None and window > 0:
            self.time_budget_s = window
            set_time_budget(self.reducer, window)
        sync = FragmentSync(fragment, step + self.config.streaming_tau, left_out=weight == 0.0)
        sync.pending = self.background.submit(functools.partial(self._reduce_when_link_free, pseudo, weight))
        self.in_flight.append(sync)
        self.fragment_syncs += 1

    def _reduce_when_link_free(self, pseudo: Named, weight: float) -> Named:
        # Runs on the background thread (jobs run in order): start after the previous sync left the link.
        self.sync_lane.wait_free()
        averaged = self.reducer(pseudo, weight)
        self.sync_lane.release()
        return averaged

    def _apply(self, sync: FragmentSync) -> None:
        averaged = sync.result()
        self.in_flight.remove(sync)
        names = self.fragments[sync.fragment]
        for name in names:
            self.outer.params[name].grad = averaged[name].to(torch.float32).clone()
        self.outer.optimizer.step()
        self.outer.optimizer.zero_grad(set_to_none=True)
        alpha = 0.0 if sync.left_out else self.config.streaming_alpha
        with torch.no_grad():
            for name in names:
                param = self.named_params[name]
                mixed = alpha * param.detach().float() + (1.0 - alpha) * self.outer.params[name]
                param.copy_(mixed)

    # --------------------------------------------------------------------------------------- the end
    def drain(self) -> None:
        """Waits for every synchronisation in flight (their results are kept until their due step)."""
        for sync in self.in_flight:
            sync.result()

    def finish(self) -> None:
        self.drain()
        for sync in sorted(self.in_flight, key=lambda s: s.due_step):
            self._apply(sync)
        self.load_global_into_model()
        self.background.close()

    # ----------------------------------------------------------------------------------- inspection
    def metrics(self) -> dict[str, Any]:
        values: dict[str, Any] = {"fragment_syncs": self.fragment_syncs}
        if self.time_budget_s is not None:
            values["time_budget_s"] = self.time_budget_s
        values.update(reducer_metrics(self.reducer))
        return values

    def state_dict(self) -> dict[str, Any]:
        self.drain()
        state = super().state_dict()
        state["in_flight"] = [
            {"fragment": s.fragment, "due_step": s.due_step, "left_out": s.left_out, "averaged": s.result()}
            for s in self.in_flight
        ]
        state["fragment_syncs"] = self.fragment_syncs
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.in_flight = [
            FragmentSync(s["fragment"], int(s["due_step"]), bool(s["left_out"]), averaged=s["averaged"])
            for s in state.get("in_flight", [])
        ]
        self.fragment_syncs = int(state.get("fragment_syncs", 0))
