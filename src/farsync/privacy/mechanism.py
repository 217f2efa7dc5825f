"""The Gaussian mechanism on model updates: L2 clipping to a bound and additive Gaussian noise (pure).

Clipping bounds one contributor's influence on a sum of updates to ``clip_norm`` (the sensitivity); noise of
standard deviation ``noise_multiplier * clip_norm`` on that sum then gives the Gaussian mechanism of Dwork
and Roth (2014) as used for deep learning by Abadi et al. 2016 ("Deep Learning with Differential Privacy",
arXiv 1607.00133) and for federated averaging by McMahan et al. 2018 ("Learning Differentially Private
Recurrent Language Models", arXiv 1710.06963). The norm is taken over all tensors of an update together.
"""

from __future__ import annotations

import torch

__all__ = ["add_noise", "clip_update", "update_norm"]


def update_norm(named: dict[str, torch.Tensor]) -> float:
    """The L2 norm of all tensors of ``named`` taken together."""
    total = sum(float(t.detach().float().pow(2).sum()) for t in named.values())
    return float(total**0.5)


def clip_update(named: dict[str, torch.Tensor], clip_norm: float) -> tuple[dict[str, torch.Tensor], float]:
    """``named`` scaled down (never up) to L2 norm at most ``clip_norm``, and its norm before clipping."""
    if clip_norm <= 0:
        raise ValueError(f"clip_norm must be > 0, got {clip_norm}")
    norm = update_norm(named)
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return {name: t.detach().float() * scale for name, t in named.items()}, norm


def add_noise(
    named: dict[str, torch.Tensor], std: float, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """``named`` plus i.i.d. N(0, std^2) noise drawn from ``generator`` (fp32; a copy, inputs untouched)."""
    if std < 0:
        raise ValueError(f"noise std must be >= 0, got {std}")
    if std == 0:
        return {name: t.detach().float().clone() for name, t in named.items()}
    return {
        name: t.detach().float() + std * torch.randn(t.shape, generator=generator, dtype=torch.float32)
        for name, t in named.items()
    }
