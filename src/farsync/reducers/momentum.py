"""Worker momentum: each worker sends the running momentum of its updates instead of the update itself.

Karimireddy, He and Jaggi 2021 ("Learning from History for Byzantine Robust Optimization", ICML 2021,
arXiv 2012.10333) show that a robust rule applied to raw stochastic gradients cannot tell a small,
consistent attack (ALIE, inner-product manipulation) from the honest noise, and that averaging the noise
away at each worker before the rule sees it, with momentum, is what makes the rule's error shrink over
time. :class:`WorkerMomentum` keeps, per parameter name, ``m <- beta * m + update`` and returns ``m``.

Ours differs from the paper's ``m <- (1 - beta) * update + beta * m`` by the constant factor
``1 / (1 - beta)``, on purpose: with it the server's plain SGD step of learning rate ``lr`` on the mean of
the workers' momenta is exactly PyTorch's SGD with momentum ``beta`` and learning rate ``lr`` on the mean
gradient (momentum is linear), so a user's settings carry over. Every rule in :mod:`farsync.aggregate` is
scale-equivariant (CenteredClip with an adaptive radius included), so the aggregate is the paper's times
that factor. The optimizer that applies the aggregate must not add momentum again.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

__all__ = ["WorkerMomentum"]

logger = logging.getLogger(__name__)


class WorkerMomentum:
    """``m <- beta * m + update`` per parameter name; calling it returns the new momenta (fresh tensors).

    A name seen for the first time starts from zero momentum (so its first momentum is the update). A
    tensor whose shape changed since the last call restarts from zero too, with a warning.
    """

    def __init__(self, beta: float) -> None:
        if not 0 <= beta < 1:
            raise ValueError(f"beta must be in [0, 1), got {beta!r}")
        self.beta = beta
        self.buffers: dict[str, torch.Tensor] = {}

    def __call__(self, named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for name, update in named.items():
            buffer = self.buffers.get(name)
            if buffer is not None and buffer.shape != update.shape:
                logger.warning("worker momentum: %s changed shape %s -> %s; restarting it",
                               name, tuple(buffer.shape), tuple(update.shape))  # fmt: skip
                buffer = None
            value = update.detach().float()
            momentum = value.clone() if buffer is None else buffer.mul(self.beta).add_(value)
            self.buffers[name] = momentum
            out[name] = momentum.clone()
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"beta": self.beta, "buffers": {name: t.clone() for name, t in self.buffers.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.buffers = {name: t.clone() for name, t in state["buffers"].items()}
