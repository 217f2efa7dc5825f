"""DiLoCo with a one-round overlap: the outer all-reduce of round t runs while round t+1 computes.

Three rules, chosen with ``algorithm.overlap`` when ``algorithm.delay = 1``: two published ones (``naive``,
``eager``) and one of farsync's own (``delayed``). Every rule keeps one *consensus*
``theta`` (fp32, bitwise identical on every worker) stepped by the outer optimizer ``OuterOpt`` (SGD with
Nesterov momentum) with every round's average exactly once and in order, one round late; ``theta`` is what
the run evaluates, checkpoints and ends with. The rules differ in where a worker starts the next round while
that round's average is still on the wire.

Notation: worker i of M, round t = 1, 2, ...; ``x_i`` the worker's local weights; ``a_i^t`` its weights when
round t started; ``Delta^t`` the weighted mean over workers of ``Delta_i^t`` (``Delta^0 = 0``). At the end
of round t, worker i

1. forms its pseudo-gradient ``Delta_i^t = a_i^t - x_i`` (what its H inner steps moved it);
2. waits for ``Delta^{t-1}``, whose all-reduce it started one round ago (nothing for t = 1), and applies it
   one round late: ``theta <- OuterOpt(theta, Delta^{t-1})``;
3. starts the all-reduce of ``Delta_i^t`` in the background (:class:`~farsync.comm.background.BackgroundSync`);
4. starts round t+1 at once from ``a_i^{t+1}``:

``naive`` (Kale, Douillard and Donchev 2025, "Eager Updates For Overlapped Communication and Computation in
DiLoCo", arXiv 2502.12996, Algorithm 2, "delayed outer gradients"):
    ``a_i^{t+1} = theta``: every worker restarts from the consensus, which holds the averages up to round
    t-1; round t's progress reaches the workers one round later, through ``theta``. The paper lowers the
    outer learning rate for it (its Table 2, 500M parameters: +12.7% over no overlap, +2.2% lowered).

``eager`` (the same paper, Algorithm 3, "eager updates"):
    each worker keeps its own outer trajectory ``theta_i`` with its own outer optimizer state (momentum),
    stepped with an estimate of the outer gradient in which its own share is fresh and the others' are one
    round late: ``Dt_i^t = (1/M) Delta_i^t + (Delta^{t-1} - (1/M) Delta_i^{t-1})`` (``Delta_i^0 = 0``), i.e.
    ``(1/M) Delta_i^t + (1/M) sum_{j != i} Delta_j^{t-1}``; ``theta_i <- OuterOpt_i(theta_i, Dt_i^t)`` and
    ``a_i^{t+1} = theta_i``. Every worker's own share enters its trajectory once, fresh; every other share
    once, one round late. The shares are the paper's 1/M (the mean reducer weighs workers equally unless a
    worker is left out). ``theta_i`` starts as ``theta`` with a fresh outer momentum; ``theta`` itself (the
    same averages, all one round late) is what the run evaluates and ends with: ``finish`` applies the last
    average to it and loads it, so every worker ends with the same weights.

``delayed`` (farsync's rule after DiLoCoX, Qi et al. 2025, arXiv 2506.21263):
    ``a_i^{t+1} = theta + (x_i - a_i^t)``: the previous round's average is applied and the worker's own raw
    progress made while it was in flight is kept on top. One round later that progress leaves the start
    point and enters ``theta`` inside ``Delta^t``, so nothing is counted twice. DiLoCoX describes its overlap
    in words (local training goes on while the previous round's pseudo-gradient is communicated); this
    bookkeeping, measuring the progress from the round's start point, is farsync's. It differs from
    ``naive`` by keeping the local progress, and from ``eager`` by keeping it raw (weight 1, no outer step),
    with no per-worker outer state.

Removed: ``lookahead``, farsync's earlier "eager" (restart from ``OuterOpt(theta, E_i)`` on a copy of the
consensus, ``E_i`` the own pseudo-gradient shrunk towards the last average). In the sweep below it ended at
2.168 at its best recipe (0.7 / 0.3; 2.482 at 1.0 / 0.7), behind the published eager at the same recipe
(2.128), so it did not earn a name of its own (it is in this file's history, commit 74c67cf).

Measured (``farsync bench quality``, overlap section, ``benchmarks/results/quality.md``; 137k-parameter GPT,
M = 4, H = 30, 40 rounds, 8 sequences per worker step; synchronous DiLoCo 2.016): each rule wants its own
outer recipe (:data:`farsync.config.OVERLAP_RECIPE_SCALE`, used when the recipe is left to the rule). At
the synchronous 1.0 / 0.7 the published rules oscillate (naive ends at 5.67, eager at 3.08): a pseudo-
gradient measured one outer step behind, applied with a large lr and momentum, repeats in stiff
directions the correction the previous step already made. The paper's lever, a lower lr alone, is not
enough here (naive 0.5 / 0.7: 2.95); a lower momentum is (naive 0.5 / 0.5: 2.397, +18.9%; eager 0.7 / 0.3:
2.128, +5.6%). ``delayed`` needs no retuning (1.0 / 0.7: 2.277, +12.9%; 0.7 / 0.3 is worse), because its
worker restarts where its own round ended. So at this size eager (tuned) is the best overlap rule,
ahead of delayed and naive; in the paper's regime (35M to 1B parameters, large batches) eager is within
+0.4% to +2.3% of synchronous (its Table 6).

Eager against delayed as each worker's batch grows (same tokens; 16 sequences: H = 15, 32: H = 10): eager
is ahead at every batch measured, by 0.149 (8 sequences), 0.165 (16) and 0.123 (32) in eval loss; its gap
to synchronous DiLoCo goes +5.6%, -1.3%, +1.6%, delayed's +12.9%, +5.9%, +6.5%. Delayed is ahead of eager
only when neither is retuned (at the synchronous 1.0 / 0.7: 2.277 against 3.077). Prefer ``eager`` with
its recipe (left to the rule, or 0.7 / 0.3 at M = 4, H = 30); ``delayed`` where the outer recipe cannot be
retuned.

Compute never waits on communication while one round's all-reduce takes less than the next round's H inner
steps: before each all-reduce the reducer's ``time_budget_s`` (adaptive compressed reducers have one) is set
to H x the measured inner-step compute time (:mod:`farsync.algorithms.step_timer`).

``finish()`` waits for the last all-reduce, applies it and loads ``theta`` into the model, so every worker
ends with bitwise-identical weights; evaluation during the run also uses ``theta`` (the weights every
worker agrees on). Checkpoints: :meth:`state_dict` first drains the all-reduce in flight (the training thread
waits for it, once per checkpoint) and stores its averaged result, which is applied at the next round end as
if it had just arrived; a resumed run therefore continues the same trajectory.

Failure: a worker whose pseudo-gradient holds NaN or Inf sends zeros with weight 0 that round and logs a
warning naming itself; the round goes on with the others' average, and the worker restarts from ``theta``
(``eager``: its own trajectory restarts as a copy of ``theta`` and its momentum).
"""

from __future__ import annotations

import copy
import functools
import logging
from typing import Any, ClassVar

import torch
from torch import nn

from farsync.algorithms.diloco import DiLoCo, OuterState
from farsync.algorithms.step_timer import InnerStepTimer
from farsync.comm.background import BackgroundSync, Pending
from farsync.comm.communicator import Communicator
from farsync.config import OVERLAP_RULES, AlgorithmConfig
from farsync.reducers.base import Reducer
from farsync.reducers.budget import reducer_metrics, set_time_budget

__all__ = ["OVERLAP_RULES", "EagerTrajectory", "OverlappedDiLoCo", "checked_pseudo_gradient"]

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


class EagerTrajectory:
    """One worker's own outer trajectory of the ``eager`` rule (Kale et al. 2025, Algorithm 3).

    ``outer`` holds ``theta_i`` and this worker's own outer optimizer state; :meth:`start` steps it with
    ``(1/M) Delta_i^t + (Delta^{t-1} - (1/M) Delta_i^{t-1})`` and returns where round t+1 starts.
    """

    def __init__(self, consensus: OuterState, world_size: int) -> None:
        self.outer = copy.deepcopy(consensus)
        self.share = 1.0 / world_size
        self.previous_share: Named | None = None
        """``(1/M) Delta_i^{t-1}``: this worker's share that its trajectory already took fresh."""

    def start(self, consensus: OuterState, own: Named, weight: float, previous: Named | None) -> Named:
        """Steps ``theta_i`` with the eager estimate and returns it; ``previous`` is ``Delta^{t-1}``."""
        if weight <= 0:  # left out this round: restart from theta, with theta's momentum
            self.outer = copy.deepcopy(consensus)
            self.previous_share = None
            return self.outer.params
        fresh = {name: self.share * tensor for name, tensor in own.items()}
        estimate = dict(fresh)
        if previous is not None:
            taken = self.previous_share
            for name in estimate:
                late = previous[name] if taken is None else previous[name] - taken[name]
                estimate[name] = fresh[name] + late
        self.outer.step(estimate)
        self.previous_share = fresh
        return self.outer.params

    def state_dict(self) -> dict[str, Any]:
        share = self.previous_share
        return {
            "outer": self.outer.state_dict(),
            "previous_share": None if share is None else {k: v.clone() for k, v in share.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.outer.load_state_dict(state["outer"])
        share = state.get("previous_share")
        self.previous_share = None if share is None else {k: v.clone() for k, v in share.items()}


class OverlappedDiLoCo(DiLoCo):
    """DiLoCo whose outer all-reduce overlaps the next round (see the module docstring for the rules)."""

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
        if self.variant not in OVERLAP_RULES:
            raise ValueError(f"overlap {self.variant!r}: allowed {', '.join(OVERLAP_RULES)}")
        self.background = BackgroundSync(comm.clock, comm.ledger)
        self.pending: Pending[Named] | None = None
        self.resolved: Named | None = None
        self.anchor = self._local_copy()
        self.timer = InnerStepTimer(comm.clock)
        self.time_budget_s: float | None = None
        self.eager = EagerTrajectory(self.outer, comm.world_size) if self.variant == "eager" else None

    # ------------------------------------------------------------------------------------ the round
    def _local_copy(self) -> Named:
        return {name: p.detach().clone().float() for name, p in self.named_params.items()}

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
            self._apply(previous)
        # --- hook (DiLoCoX's planner): a round may run synchronously, with no delay ---
        if self.round_is_synchronous(pseudo, weight):
            self._synchronous_round(pseudo, weight)
            return
        # --- end of hook ---
        self._set_budget()
        self.pending = self.background.submit(functools.partial(self.reducer, pseudo, weight))
        self._restart_from(self._start(pseudo, weight, previous))

    def _start(self, pseudo: Named, weight: float, previous: Named | None) -> Named:
        """Where round t+1 starts (module docstring), once ``theta`` took ``previous``."""
        if self.eager is not None:
            return self.eager.start(self.outer, pseudo, weight, previous)
        if self.variant == "delayed":  # a left-out worker's pseudo-gradient is zeros: it restarts from theta
            return {name: self.outer.params[name] - pseudo[name] for name in pseudo}
        return self.outer.params  # naive

    # --- hook (DiLoCoX's planner): a round run synchronously ---
    def round_is_synchronous(self, pseudo: Named, weight: float) -> bool:
        """Whether this round's all-reduce runs now and its outer step is applied at once (no delay).

        Called at every round end after the previous round's average was applied, before this round's
        all-reduce starts. Never here; :class:`~farsync.algorithms.dilocox.DiLoCoX` asks its planner.
        """
        return False

    def _synchronous_round(self, pseudo: Named, weight: float) -> None:
        """The round as synchronous DiLoCo runs it: reduce, step ``theta``, restart every worker from it
        (the eager rule's own trajectory restarts as a copy of ``theta``: every share has been taken)."""
        averaged = self.reducer(pseudo, weight)
        self._apply(averaged)
        if self.eager is not None:
            self.eager.outer = copy.deepcopy(self.outer)
            self.eager.previous_share = None
        self._restart_from(self.outer.params)

    # --- end of hook ---

    def _apply(self, average: Named) -> None:
        """``theta <- OuterOpt(theta, average)``."""
        self.outer.step(average)

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

    def _restart_from(self, start: Named) -> None:
        with torch.no_grad():
            for name, param in self.named_params.items():
                param.copy_(start[name])
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
            self._apply(self.resolved)
            self.resolved = None
        self.load_global_into_model()
        self.anchor = self._local_copy()
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
        )
        if self.eager is not None:
            state["eager"] = self.eager.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state.get("overlap", self.variant) != self.variant:
            raise ValueError(f"checkpoint of overlap {state['overlap']!r} loaded into {self.variant!r}")
        self.pending = None
        self.resolved = state.get("resolved")
        self.anchor = {k: v.clone() for k, v in state["anchor"].items()}
        if self.eager is not None:
            self.eager.load_state_dict(state["eager"])
