"""The privacy accountant: (epsilon, delta) spent so far, from Opacus's RDP accountant.

Each round of a sampled Gaussian mechanism (noise multiplier ``z``, sampling rate ``q``) is composed in
Renyi differential privacy (Mironov 2017, "Renyi Differential Privacy", arXiv 1702.07476; the subsampled
Gaussian bound of Mironov, Talwar and Zhang 2019, arXiv 1908.10530) and converted to (epsilon, delta). We do
not implement any of that: :class:`opacus.accountants.RDPAccountant` does, and this class only keeps the
per-round bookkeeping farsync needs (rounds with q = 1 when every worker or client takes part, q = m / N when
m of N federated clients are sampled).

Caveat, stated where it is used: the RDP bound is for Poisson sampling; farsync samples exactly m clients
per round (fixed-size sampling without replacement), the common approximation in federated DP work.
"""

from __future__ import annotations

import logging
import math
from typing import Any

__all__ = ["PrivacyAccountant", "epsilon_for"]

logger = logging.getLogger(__name__)


class PrivacyAccountant:
    """Rounds of the (sub)sampled Gaussian mechanism with one noise multiplier; epsilon at a fixed delta.

    Args:
        noise_multiplier: noise standard deviation divided by the clipping bound (0 means no privacy).
        delta: the delta at which epsilon is reported.
        alphas: RDP orders to search (default: Opacus's own list).
    """

    def __init__(self, noise_multiplier: float, delta: float, alphas: list[float] | None = None) -> None:
        if noise_multiplier < 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        # Imported here: Opacus pulls in SciPy and more, seconds that runs without privacy should not pay.
        from opacus.accountants import RDPAccountant

        self.noise_multiplier, self.delta, self.alphas = noise_multiplier, delta, alphas
        self._accountant = RDPAccountant()
        self.num_steps = 0
        self._unbounded = False

    def step(self, sample_rate: float, num_steps: int = 1, *, noise_multiplier: float | None = None) -> None:
        """Records ``num_steps`` rounds in which each contributor took part with probability ``sample_rate``.

        ``noise_multiplier`` overrides the accountant's own for these rounds (a schedule that changes it).
        """
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        sigma = self.noise_multiplier if noise_multiplier is None else noise_multiplier
        self.num_steps += num_steps
        if sigma == 0:
            self._unbounded = True
            return
        for _ in range(num_steps):
            self._accountant.step(noise_multiplier=sigma, sample_rate=sample_rate)

    def epsilon(self) -> float:
        """Epsilon spent so far at ``delta`` (0 before any round; inf with no noise)."""
        if self.num_steps == 0:
            return 0.0
        if self._unbounded:
            return math.inf
        return float(self._accountant.get_epsilon(self.delta, alphas=self.alphas))

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": list(self._accountant.history),
            "num_steps": self.num_steps,
            "unbounded": self._unbounded,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._accountant.history = [tuple(entry) for entry in state["history"]]
        self.num_steps = int(state["num_steps"])
        self._unbounded = bool(state.get("unbounded", False))


def epsilon_for(noise_multiplier: float, sample_rate: float, num_steps: int, delta: float) -> float:
    """Epsilon after ``num_steps`` rounds at one noise multiplier and sampling rate (Opacus RDP)."""
    accountant = PrivacyAccountant(noise_multiplier, delta)
    accountant.step(sample_rate, num_steps)
    return accountant.epsilon()
