"""Learning-rate schedules of the inner optimizer."""

from __future__ import annotations

import math
from collections.abc import Callable

from farsync.config import TrainConfig

__all__ = ["lr_lambda"]


def lr_lambda(train: TrainConfig) -> Callable[[int], float]:
    """Linear warm-up for ``warmup_steps``, then cosine decay to ``min_lr_ratio`` at ``num_steps``."""

    def factor(step: int) -> float:
        if step < train.warmup_steps:
            return (step + 1) / train.warmup_steps
        span = max(train.num_steps - train.warmup_steps, 1)
        progress = min((step - train.warmup_steps) / span, 1.0)
        return train.min_lr_ratio + (1 - train.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
