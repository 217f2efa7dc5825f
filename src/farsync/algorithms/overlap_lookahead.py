"""farsync's ``lookahead`` overlap rule: the stand-in for the average still on the wire, and the look-ahead.

Used by :class:`~farsync.algorithms.overlap.OverlappedDiLoCo` with ``algorithm.overlap = "lookahead"`` (the
module docstring there has the rule and how it compares). This module owns the estimate: at the end of
round t a worker restarts from ``OuterOpt(theta, E_i^t)`` taken on a *copy* of the consensus and its outer
momentum (:func:`lookahead`), where ``E_i^t = A + beta (Delta_i^t - A)`` shrinks the worker's own fresh
pseudo-gradient towards ``A``, the last average to arrive, by ``beta = drift / (drift + noise)``:
``noise`` the running mean square of (own pseudo-gradient - its round's average), ``drift`` that of
(average - previous average), both measured on the rounds that arrived (newest sample weighted 1/2). Before
any average has arrived ``E = Delta_i``. ``beta`` minimises the expected squared error of ``E`` when the
own pseudo-gradient is the coming average plus independent noise and the average moves by ``drift`` per
round.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from farsync.algorithms.diloco import OuterState

__all__ = ["LookaheadEstimate", "lookahead"]

Named = dict[str, torch.Tensor]
_EMA_WEIGHT = 0.5


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


class LookaheadEstimate:
    """One worker's estimate of the average on the wire, and the statistics behind its shrinkage."""

    def __init__(self) -> None:
        self.sent: Named | None = None
        """This worker's pseudo-gradient of the round in flight."""
        self.estimate: Named | None = None
        """The estimate it restarted from."""
        self.last_average: Named | None = None
        self.noise_sq: float | None = None
        """Running mean square of (own pseudo-gradient - its round's average)."""
        self.drift_sq: float | None = None
        """Running mean square of (average - previous average)."""
        self.error: float | None = None
        """Distance from the last estimate to the average that arrived, relative to that average."""

    def start(self, outer: OuterState, own: Named, weight: float) -> Named:
        """Where the worker starts the next round: the look-ahead on its estimate (``theta`` when left out)."""
        if weight <= 0:  # a left-out worker (weight 0) has no estimate of its own; it restarts from theta
            self.sent = self.estimate = None
            return outer.params
        self.sent = own
        self.estimate = self._estimate(own)
        return lookahead(outer, self.estimate)

    def _estimate(self, own: Named) -> Named:
        if self.last_average is None:
            return own
        beta = self.shrinkage()
        return {name: self.last_average[name] + beta * (own[name] - self.last_average[name]) for name in own}

    def shrinkage(self) -> float:
        """``beta``: 1 trusts this worker's pseudo-gradient alone, 0 the last average."""
        if self.drift_sq is None or self.noise_sq is None or self.drift_sq + self.noise_sq <= 0:
            return 1.0
        return self.drift_sq / (self.drift_sq + self.noise_sq)

    def observe(self, average: Named) -> None:
        """On an average's arrival: the noise and drift samples behind ``beta``, and the estimate's error."""

        def sq(a: Named, b: Named | None) -> float:
            return sum(float((a[n] - (b[n] if b is not None else 0.0)).pow(2).sum()) for n in average)

        norm = sq(average, None)
        if self.sent is not None:
            self.noise_sq = _ema(self.noise_sq, sq(self.sent, average))
        if self.estimate is not None and norm > 0:
            self.error = (sq(self.estimate, average) / norm) ** 0.5
        self.drift_sq = _ema(self.drift_sq, sq(average, self.last_average))
        self.last_average = {name: tensor.clone() for name, tensor in average.items()}
        self.sent = self.estimate = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "sent": _copy(self.sent),
            "estimate": _copy(self.estimate),
            "last_average": _copy(self.last_average),
            "noise_sq": self.noise_sq,
            "drift_sq": self.drift_sq,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sent, self.estimate = _copy(state.get("sent")), _copy(state.get("estimate"))
        self.last_average = _copy(state.get("last_average"))
        self.noise_sq, self.drift_sq = state.get("noise_sq"), state.get("drift_sq")
