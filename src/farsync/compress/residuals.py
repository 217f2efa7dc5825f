"""Per-worker error-feedback residuals for the compressed collectives, kept per parameter name.

Error feedback (Seide et al. 2014; Karimireddy et al. 2019, arXiv 1901.09847) adds what compression lost
last round to this round's input, so nothing is dropped, only delayed::

    corrected = update + residual[name]
    residual[name] = corrected - what_this_worker_contributed(corrected)

:class:`~farsync.compress.ErrorFeedback` does this around a pure compressor. The collectives in ``comm/``
encode inside the collective (a ring re-encodes partial sums, low-rank shares P across workers), so they
keep their residuals here instead. Residuals are keyed by parameter name, so a reducer called with
different subsets of the parameters (Streaming DiLoCo's fragments) keeps one residual per parameter.

A worker that is left out of a round (weight 0) contributed nothing, so its whole corrected update stays in
the residual.
"""

from __future__ import annotations

import logging
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
        return self._residuals.get(name)

    def corrected(self, named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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
        self._residuals[name] = residual.detach().to(torch.float32, copy=True)

    def reset(self) -> None:
        self._residuals.clear()

    def state_dict(self) -> dict[str, Any]:
        return {name: r.detach().cpu().clone() for name, r in self._residuals.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._residuals = {
            name: torch.as_tensor(r).detach().to(torch.float32).clone() for name, r in state.items()
        }
