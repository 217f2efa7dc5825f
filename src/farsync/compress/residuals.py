"""Error feedback: the one per-worker store of what compression has not yet delivered, per parameter name.

Error feedback (Seide et al. 2014, "1-Bit Stochastic Gradient Descent and its Application to Data-Parallel
Distributed Training of Speech DNNs"; Karimireddy et al. 2019, "Error Feedback Fixes SignSGD and other
Gradient Compression Schemes", arXiv 1901.09847) adds what compression lost last round to this round's
input, so nothing is dropped, only delayed::

    corrected = update + residual[name]
    residual[name] = corrected - what_this_worker_contributed(corrected)

so over any number of rounds ``sum(contributed) + residual == sum(updates)``. Every compressed reducer keeps
its residuals here, whatever the collective: the ring and the butterfly round-trip the corrected update
through their codec, the all-gather keeps what its codec dropped, the low-rank all-reduce keeps the part
outside the shared subspace. Residuals are keyed by parameter name, so a reducer called with different
subsets of the parameters (Streaming DiLoCo's fragments) keeps one residual per parameter.

A worker that is left out of a round (weight 0) contributed nothing, so its whole corrected update stays in
the residual.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["Residuals"]

logger = logging.getLogger(__name__)


class Residuals:
    """float32 residuals by name; ``state_dict`` holds CPU copies for checkpoints."""

    def __init__(self) -> None:
        self._residuals: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._residuals)

    def get(self, name: str) -> torch.Tensor | None:
        """The residual carried for ``name``, or ``None`` before its first round."""
        return self._residuals.get(name)

    def corrected(self, named: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``update + residual`` per name, as new float32 tensors (a residual of another shape is dropped)."""
        out: dict[str, torch.Tensor] = {}
        for name, tensor in named.items():
            value = tensor.detach().to(torch.float32, copy=True)
            residual = self._residuals.get(name)
            if residual is not None and residual.shape == value.shape:
                value += residual.to(value.device)
            out[name] = value
        return out

    def store(self, name: str, residual: torch.Tensor) -> None:
        """Carry ``residual`` (copied to float32) into ``name``'s next round."""
        self._residuals[name] = residual.detach().to(torch.float32, copy=True)

    def keep_unsent(
        self, corrected: Mapping[str, torch.Tensor], sent: Mapping[str, torch.Tensor] | None
    ) -> None:
        """Store ``corrected - sent`` per name, or all of ``corrected`` when ``sent`` is ``None`` (left out)."""
        for name, value in corrected.items():
            self.store(name, value if sent is None else value - sent[name])

    def reset(self) -> None:
        """Forget all residuals (for example after workers re-synchronise their parameters)."""
        self._residuals.clear()

    def state_dict(self) -> dict[str, Any]:
        return {name: r.detach().cpu().clone() for name, r in self._residuals.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._residuals = {
            name: torch.as_tensor(r).detach().to(torch.float32).clone() for name, r in state.items()
        }
