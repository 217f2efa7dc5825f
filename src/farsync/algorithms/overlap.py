"""DiLoCo with a one-step-delay overlap: the outer all-reduce of round t runs while round t+1 computes.

Two variants, chosen with ``algorithm.overlap`` when ``algorithm.delay = 1``. Both keep one *consensus*
``theta`` (fp32, bitwise identical on every worker) stepped by the outer optimizer ``OuterOpt`` (SGD with
Nesterov momentum) with every round's average exactly once and in order, one round late; they differ in
where a worker starts the next round while that round's average is still on the wire.

Notation: worker i of M, round t = 1, 2, ...; ``x_i`` the worker's local weights; ``a_i^t`` its weights when
round t started; ``Delta^t`` the weighted mean over workers of ``Delta_i^t``. At the end of round t, worker i

1. forms its pseudo-gradient ``Delta_i^t = a_i^t - x_i`` (what its H inner steps moved it);
2. waits for ``Delta^{t-1}``, whose all-reduce it started one round ago (nothing for t = 1), and applies it
   one round late: ``theta <- OuterOpt(theta, Delta^{t-1})``;
3. starts the all-reduce of ``Delta_i^t`` in the background (:class:`~farsync.comm.background.BackgroundSync`);
4. starts round t+1 at once from ``a_i^{t+1}``:

``delayed`` (DiLoCoX, Qi et al. 2025, arXiv 2506.21263):
    ``a_i^{t+1} = theta + (x_i - a_i^t)``: the previous round's average is applied and the progress made
    while it was in flight is kept on top. One round later that progress leaves the start point and enters
    ``theta`` inside ``Delta^t``, so nothing is counted twice. (The paper states the rule in words; this
    bookkeeping, measuring the progress from the round's start point, is ours.)

``eager`` (after Kale, Douillard and Donchev 2025, "Eager Updates For Overlapped Communication and
Computation in DiLoCo", arXiv 2502.12996):
    the worker's fresh pseudo-gradient stands in for the average still on the wire, and goes through the
    consensus' own outer step: ``a_i^{t+1} = OuterOpt(theta, Delta_i^t)`` taken on a copy of ``theta`` and
    its momentum (:func:`lookahead`), i.e. the point synchronous DiLoCo would start from had every worker
    sent what this one did. The real ``theta`` takes that step with the real ``Delta^t`` one round later.

Why eager is written this way, not as in the paper. The paper gives each worker its own outer trajectory,
stepped with ``Delta~_i^t = (1/M) Delta_i^t + (Delta^{t-1} - (1/M) Delta_i^{t-1})`` (own share fresh, the
others' one round old), an earlier version of this module implemented exactly that (a hand-stepped test
pinned it), and on the 30-round probe (2-layer width-64 GPT, 4 workers, H = 10) it ended at 3.10 against
2.63 synchronous and 2.74 delayed. Three things in that form cost quality, all visible on paper:

* The start point misses the outer step's Nesterov look-ahead. Synchronous DiLoCo starts round t+1 from
  ``theta - lr (Delta^t + mu (mu b + Delta^t))`` (``b`` the momentum buffer): in steady state about
  ``lr / (1 - mu)`` = 7 rounds of progress at lr 0.7, momentum 0.9. The per-worker form adds only its own
  share through its own momentum (about ``7 / M`` rounds), and delayed adds 1 round: both restart far
  behind, and the next pseudo-gradient is measured from there.
* The stale shares are counted on top of progress that already made up for them: a worker started round
  t+1 without the others' round-t progress, its inner steps recovered part of it, and then the others'
  round-t shares arrive and are added anyway (in the per-worker trajectory; ``theta`` takes each average
  once, but it is stepped with pseudo-gradients measured from those overshooting start points).
* The corrections pass through a per-worker momentum: every worker's own noisy share is amplified by
  ``lr / (1 - mu)`` and decays over ~10 rounds instead of being replaced by the average at once.

Stepping a copy of the consensus with the worker's own fresh pseudo-gradient fixes all three: the start
point has the look-ahead, nothing is added twice (the copy is thrown away when the real average arrives),
and the only error is ``lr (1 + mu) (Delta_i^t - Delta^t)``, whose mean over workers is zero, so ``theta``
itself follows synchronous DiLoCo up to second-order effects of where the workers started. On the same
probe the paper's estimate passed through the look-ahead ended at 2.93 and the one-round-old average at
2.98; the worker's own pseudo-gradient at 2.71 (see ``benchmarks/results/quality.md`` for the benchmark).

Where eager still loses, and why. In ``farsync bench quality`` (M = 4, H = 30, 40 rounds, 137k parameters,
8 sequences of 64 bytes per worker step) eager ends +23% above synchronous DiLoCo and delayed +13%, the
reverse of the paper's order. The estimate is the weak link: the run's ``estimate_error`` (distance from
the stand-in to the average that arrives, relative to the average) is 0.3 to 1.0, and 0.5 to 2.0 for the
worker's raw pseudo-gradient, because at batches this small a worker's pseudo-gradient is mostly its own
noise; the start point carries that error times ``lr (1 + mu)``, and the inner AdamW steps spend the round
undoing it. A probe with a temporary switch in this method (2-layer width-32 GPT, 4 workers, 300 steps,
H = 15; final eval loss, synchronous 2.513, delayed 2.569): this estimate 2.709; the raw own
pseudo-gradient 2.763; the same without the look-ahead (``theta - estimate``) 2.723; the last average alone
3.156; restarting from ``theta`` 3.391; the own pseudo-gradient scaled by signal / (signal + noise) 2.669.
With 8x larger worker batches (200 steps, H = 10) the order held: synchronous 2.442, delayed 2.540, eager
2.692. Nothing that starts from a look-ahead on an estimate beat delayed here; the paper's regime (500M
parameters, large batches) has estimates close to the average. On small or noisy workers prefer
``delayed``.

Compute never waits on communication while one round's all-reduce takes less than the next round's H inner
steps: before each all-reduce the reducer's ``time_budget_s`` (adaptive compressed reducers have one) is set
to H x the measured inner-step compute time (:mod:`farsync.algorithms.step_timer`).

``finish()`` waits for the last all-reduce, applies it and loads ``theta`` into the model, so every worker
ends with bitwise-identical weights; evaluation during the run also uses ``theta`` (the weights every
worker agrees on). Checkpoints: :meth:`state_dict` first drains the all-reduce in flight (the training thread
waits for it, once per checkpoint) and stores its averaged result, which is applied at the next round end as
if it had just arrived; a resumed run therefore continues the same trajectory.

Failure: a worker whose pseudo-gradient holds NaN or Inf sends zeros with weight 0 that round and logs a
warning naming itself; the round goes on with the others' average, and the worker restarts from ``theta``.
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
from farsync.config import AlgorithmConfig
from farsync.reducers.base import Reducer
from farsync.reducers.budget import reducer_metrics, set_time_budget

__all__ = ["OverlappedDiLoCo", "checked_pseudo_gradient", "lookahead"]

logger = logging.getLogger(__name__)

Named = dict[str, torch.Tensor]
_EMA_WEIGHT = 0.5


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


def lookahead(outer: OuterState, gradient: Named) -> Named:
    """The weights ``outer`` would hold after one step with ``gradient``; ``outer`` itself is unchanged.

    The step runs on a copy of the weights and the optimizer state, so it is exactly the outer optimizer's
    own update (Nesterov momentum included), whatever that optimizer is.
    """
    trial = copy.deepcopy(outer)
    trial.step(gradient)
    return trial.params


def _copy(named: Named | None) -> Named | None:
    return None if named is None else {name: tensor.clone() for name, tensor in named.items()}


def _ema(mean: float | None, sample: float) -> float:
    """Running mean that weighs the newest sample by ``_EMA_WEIGHT`` (the noise-to-drift ratio moves as
    training goes: drift dominates early, noise late)."""
    return sample if mean is None else (1 - _EMA_WEIGHT) * mean + _EMA_WEIGHT * sample


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
        self.timer = InnerStepTimer()
        self.time_budget_s: float | None = None
        self.sent: Named | None = None
        """Eager: this worker's pseudo-gradient of the round in flight, and the estimate it restarted from."""
        self.estimate: Named | None = None
        self.last_average: Named | None = None
        self.noise_sq: float | None = None
        """Eager: running mean square of (own pseudo-gradient - its round's average)."""
        self.drift_sq: float | None = None
        """Eager: running mean square of (average - previous average)."""
        self.estimate_error: float | None = None

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
            self._observe(previous)
            self.outer.step(previous)
        # --- hook (DiLoCoX's planner): a round may run synchronously, with no delay ---
        if self.round_is_synchronous(pseudo, weight):
            self._synchronous_round(pseudo, weight)
            return
        # --- end of hook ---
        self._set_budget()
        self.pending = self.background.submit(functools.partial(self.reducer, pseudo, weight))
        if self.variant == "eager":
            # A left-out worker (weight 0) has no estimate of its own; it restarts from theta.
            self.sent = pseudo if weight > 0 else None
            self.estimate = self._estimate(pseudo) if weight > 0 else None
            start = lookahead(self.outer, self.estimate) if self.estimate is not None else self.outer.params
        else:
            start = {name: self.outer.params[name] - pseudo[name] for name in pseudo}
        self._restart_from(start)

    # --- hook (DiLoCoX's planner): a round run synchronously ---
    def round_is_synchronous(self, pseudo: Named, weight: float) -> bool:
        """Whether this round's all-reduce runs now and its outer step is applied at once (no delay).

        Called at every round end after the previous round's average was applied, before this round's
        all-reduce starts. Never here; :class:`~farsync.algorithms.dilocox.DiLoCoX` asks its planner.
        """
        return False

    def _synchronous_round(self, pseudo: Named, weight: float) -> None:
        """The round as synchronous DiLoCo runs it: reduce, step ``theta``, restart every worker from it."""
        averaged = self.reducer(pseudo, weight)
        self._observe(averaged)
        self.outer.step(averaged)
        self._restart_from(self.outer.params)

    # --- end of hook ---
    def _estimate(self, own: Named) -> Named:
        """The stand-in for the average on the wire: ``A + beta (own - A)``, ``A`` the last average.

        ``beta = drift / (drift + noise)`` minimises the expected squared error when this worker's pseudo-
        gradient is the coming average plus noise of mean square ``noise`` and the average moves by mean
        square ``drift`` from one round to the next; both are measured on the rounds that arrived (module
        docstring). Before any average has arrived the worker's own pseudo-gradient is the estimate.
        """
        if self.last_average is None:
            return own
        beta = self.shrinkage()
        return {name: self.last_average[name] + beta * (own[name] - self.last_average[name]) for name in own}

    def shrinkage(self) -> float:
        """``beta`` of :meth:`_estimate`: 1 trusts this worker's pseudo-gradient alone, 0 the last average."""
        if self.drift_sq is None or self.noise_sq is None or self.drift_sq + self.noise_sq <= 0:
            return 1.0
        return self.drift_sq / (self.drift_sq + self.noise_sq)

    def _observe(self, average: Named) -> None:
        """On an average's arrival: the noise and drift samples behind ``beta``, and the estimate's error."""

        def sq(a: Named, b: Named | None) -> float:
            return sum(float((a[n] - (b[n] if b is not None else 0.0)).pow(2).sum()) for n in average)

        norm = sq(average, None)
        if self.sent is not None:
            self.noise_sq = _ema(self.noise_sq, sq(self.sent, average))
        if self.estimate is not None and norm > 0:
            self.estimate_error = (sq(self.estimate, average) / norm) ** 0.5
        self.drift_sq = _ema(self.drift_sq, sq(average, self.last_average))
        self.last_average = {name: tensor.clone() for name, tensor in average.items()}
        self.sent = self.estimate = None

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
            self._observe(self.resolved)
            self.outer.step(self.resolved)
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
        if self.estimate_error is not None:
            values["estimate_error"] = self.estimate_error
        if self.variant == "eager":
            values["estimate_shrinkage"] = self.shrinkage()
        values.update(reducer_metrics(self.reducer))
        return values

    def state_dict(self) -> dict[str, Any]:
        self.drain()
        state = super().state_dict()
        state.update(
            overlap=self.variant,
            resolved=None if self.resolved is None else {k: v.clone() for k, v in self.resolved.items()},
            anchor={k: v.clone() for k, v in self.anchor.items()},
            sent=_copy(self.sent),
            estimate=_copy(self.estimate),
            last_average=_copy(self.last_average),
            noise_sq=self.noise_sq,
            drift_sq=self.drift_sq,
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.pending = None
        self.resolved = state.get("resolved")
        self.anchor = {k: v.clone() for k, v in state["anchor"].items()}
        self.sent, self.estimate = _copy(state.get("sent")), _copy(state.get("estimate"))
        self.last_average = _copy(state.get("last_average"))
        self.noise_sq, self.drift_sq = state.get("noise_sq"), state.get("drift_sq")
