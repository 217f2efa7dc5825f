"""Resumable batch iterators for token shards and in-memory arrays, and validation windows.

This module owns how a worker draws its minibatches. Each iterator has its own ``torch.Generator``,
so workers never share random state, and ``state_dict`` / ``load_state_dict`` let a restarted worker
continue with exactly the batches it would have drawn next.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

__all__ = ["ArrayBatches", "TokenBatches", "eval_batches"]


def _new_generator(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def _check_tokens(tokens: Tensor, context_length: int) -> None:
    if tokens.ndim != 1:
        raise ValueError(f"token shard must be 1-D, got shape {tuple(tokens.shape)}")
    if context_length < 1:
        raise ValueError(f"context_length must be >= 1, got {context_length}")
    if tokens.numel() < context_length + 1:
        raise ValueError(
            f"token shard of {tokens.numel()} tokens is too short for context_length {context_length} "
            f"(needs at least {context_length + 1})"
        )


class TokenBatches(Iterator[tuple[Tensor, Tensor]]):
    """Infinite stream of ``(x, y)`` int64 ``[batch_size, context_length]`` windows from a 1-D shard.

    Window starts are drawn uniformly with replacement; ``y`` is ``x`` shifted left by one token.
    """

    def __init__(self, tokens: Tensor, batch_size: int, context_length: int, seed: int) -> None:
        _check_tokens(tokens, context_length)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.context_length = context_length
        # A strided view of every (context_length + 1)-window; indexing it copies only the chosen rows.
        self._windows = tokens.unfold(0, context_length + 1, 1)
        self._generator = _new_generator(seed)
        self._batches_drawn = 0

    @property
    def batches_drawn(self) -> int:
        """Number of batches returned so far (including those before a resume)."""
        return self._batches_drawn

    def __iter__(self) -> TokenBatches:
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        starts = torch.randint(0, self._windows.shape[0], (self.batch_size,), generator=self._generator)
        windows = self._windows[starts].long()
        self._batches_drawn += 1
        return windows[:, :-1], windows[:, 1:]

    def state_dict(self) -> dict[str, Any]:
        """Random state and progress, enough to resume the stream exactly."""
        return {"generator_state": self._generator.get_state(), "batches_drawn": self._batches_drawn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict` on an iterator over the same shard."""
        self._generator.set_state(state["generator_state"])
        self._batches_drawn = int(state["batches_drawn"])


class ArrayBatches(Iterator[tuple[Tensor, Tensor]]):
    """Infinite epoch-based minibatches of ``(x, y)``, shuffled without replacement each epoch.

    Every item appears exactly once per epoch; the last batch of an epoch is smaller when
    ``batch_size`` does not divide the dataset. ``batch_size=None`` means full-batch: every step
    returns the whole set (one step per epoch).
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int | None, seed: int) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y must have the same length, got {x.shape[0]} and {y.shape[0]}")
        if x.shape[0] == 0:
            raise ValueError("cannot draw batches from an empty dataset")
        if batch_size is not None and not 1 <= batch_size <= x.shape[0]:
            raise ValueError(f"batch_size {batch_size} must be in [1, dataset size {x.shape[0]}]")
        self.x = x
        self.y = y
        self.batch_size = batch_size
        self._generator = _new_generator(seed)
        self._permutation = torch.empty(0, dtype=torch.long)
        self._position = 0
        self._epoch = 0
        self._batches_drawn = 0

    @property
    def epoch(self) -> int:
        """Number of complete passes over the dataset so far."""
        return self._epoch

    @property
    def batches_drawn(self) -> int:
        """Number of batches returned so far (including those before a resume)."""
        return self._batches_drawn

    def __iter__(self) -> ArrayBatches:
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        self._batches_drawn += 1
        if self.batch_size is None:
            self._epoch += 1
            return self.x, self.y
        size = self.x.shape[0]
        if self._position == 0:
            self._permutation = torch.randperm(size, generator=self._generator)
        chosen = self._permutation[self._position : self._position + self.batch_size]
        self._position += chosen.numel()
        if self._position >= size:
            self._position = 0
            self._epoch += 1
        return self.x[chosen], self.y[chosen]

    def state_dict(self) -> dict[str, Any]:
        """Random state, current epoch order and progress, enough to resume exactly."""
        return {
            "generator_state": self._generator.get_state(),
            "permutation": self._permutation.clone(),
            "position": self._position,
            "epoch": self._epoch,
            "batches_drawn": self._batches_drawn,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict` on an iterator over the same arrays."""
        self._generator.set_state(state["generator_state"])
        self._permutation = state["permutation"].clone()
        self._position = int(state["position"])
        self._epoch = int(state["epoch"])
        self._batches_drawn = int(state["batches_drawn"])


def eval_batches(
    tokens: Tensor, batch_size: int, context_length: int, max_batches: int | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """Deterministic validation batches of non-overlapping windows, each target token scored once.

    Window ``i`` covers inputs ``tokens[i*T : (i+1)*T]``. When ``max_batches`` limits how many windows
    are used, they are spread evenly over the whole shard rather than taken from its start. Arguments
    are checked at call time, not on the first ``next``.
    """
    _check_tokens(tokens, context_length)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be >= 1, got {max_batches}")
    num_windows = (tokens.numel() - 1) // context_length
    window_ids = torch.arange(num_windows)
    if max_batches is not None and num_windows > max_batches * batch_size:
        window_ids = torch.linspace(0, num_windows - 1, max_batches * batch_size).round().long()
    windows = tokens[: num_windows * context_length + 1].unfold(0, context_length + 1, context_length)
    return _iterate_windows(windows, window_ids, batch_size)


def _iterate_windows(windows: Tensor, window_ids: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    for first in range(0, window_ids.numel(), batch_size):
        rows = windows[window_ids[first : first + batch_size]].long()
        yield rows[:, :-1], rows[:, 1:]
