"""Error feedback: a wrapper that carries what a compressor lost into the next round.

Seide et al. 2014, "1-Bit Stochastic Gradient Descent and its Application to Data-Parallel Distributed
Training of Speech DNNs"; Karimireddy et al. 2019, "Error Feedback Fixes SignSGD and other Gradient
Compression Schemes" (arXiv 1901.09847). Each worker keeps a residual per tensor name::

    corrected = tensor + residual[name]
    encoded   = inner.encode(name, corrected)
    residual[name] = corrected - inner.decode(encoded)

so over any number of rounds ``sum(decoded) + residual == sum(inputs)``: nothing is dropped, only delayed.
"""

from __future__ import annotations

from typing import Any

import torch

from farsync.compress.base import Compressor, Encoded

__all__ = ["ErrorFeedback"]


class ErrorFeedback(Compressor):
    """Wraps ``inner`` with per-name float32 residuals (per worker, kept in ``state_dict``).

    A residual whose shape no longer matches its tensor is dropped and restarts from zero. The payload and
    its format are exactly ``inner``'s.
    """

    def __init__(self, inner: Compressor) -> None:
        self.inner = inner
        self.name = f"ef({inner.name})"
        self._residuals: dict[str, torch.Tensor] = {}

    def residual(self, name: str) -> torch.Tensor | None:
        """The residual carried for ``name``, or ``None`` before its first round."""
        return self._residuals.get(name)

    def reset(self) -> None:
        """Forget all residuals (for example after workers re-synchronise their parameters)."""
        self._residuals.clear()

    def encode(self, name: str, tensor: torch.Tensor) -> Encoded:
        corrected = tensor.detach().to(torch.float32, copy=True)
        residual = self._residuals.get(name)
        if residual is not None and residual.shape == corrected.shape:
            corrected += residual.to(corrected.device)
        encoded = self.inner.encode(name, corrected)
        self._residuals[name] = corrected - self.inner.decode(encoded)
        # Report the caller's dtype, not the float32 working copy's.
        encoded.dtype = tensor.dtype
        return encoded

    def decode(self, encoded: Encoded) -> torch.Tensor:
        return self.inner.decode(encoded)

    def state_dict(self) -> dict[str, Any]:
        residuals = {name: r.detach().cpu().clone() for name, r in self._residuals.items()}
        return {"residuals": residuals, "inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._residuals = {name: r.detach().clone() for name, r in state.get("residuals", {}).items()}
        self.inner.load_state_dict(state.get("inner", {}))
