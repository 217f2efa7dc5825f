"""Models: the byte-level GPT (with pipeline stages) and small classifiers.

This package owns model definitions only; training loops, data and communication live elsewhere.
"""

from __future__ import annotations

from torch import nn

from farsync.models.classifier import CNN, MLP
from farsync.models.gpt import GPT, GPTConfig, GPTStage, gpt_stage

__all__ = ["CNN", "GPT", "GPTConfig", "GPTStage", "MLP", "count_parameters", "gpt_stage"]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters in ``model`` (only those with ``requires_grad`` if asked)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
