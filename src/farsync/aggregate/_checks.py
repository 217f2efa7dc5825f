"""Argument checks shared by the aggregation rules and their registry.

Every rule validates its inputs through these helpers so that a bad stack or parameter is reported the same
way everywhere: a ``ValueError`` naming the parameter, the value received and what is allowed.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "check_beta",
    "check_byzantine_count",
    "check_count",
    "check_positive",
    "check_stack",
]


def check_stack(stack: torch.Tensor) -> tuple[int, int]:
    """Check that ``stack`` is a floating-point ``[n, d]`` tensor with ``n >= 1``; return ``(n, d)``."""
    if not isinstance(stack, torch.Tensor):
        raise ValueError(f"stack must be a torch.Tensor of shape [n, d], got {type(stack).__name__}")
    if stack.dim() != 2:
        raise ValueError(f"stack must have shape [n, d] (2 dimensions), got shape {tuple(stack.shape)}")
    if stack.shape[0] < 1:
        raise ValueError("stack must hold at least one update (n >= 1), got n=0")
    if not stack.is_floating_point():
        raise ValueError(f"stack must have a floating-point dtype, got {stack.dtype}")
    return int(stack.shape[0]), int(stack.shape[1])


def check_beta(beta: float) -> None:
    """Check the trimming fraction of the trimmed mean: ``0 <= beta < 0.5``."""
    if not isinstance(beta, int | float) or isinstance(beta, bool) or not 0.0 <= beta < 0.5:
        raise ValueError(f"beta must be a float in [0, 0.5), got {beta!r}")


def check_byzantine_count(f: int) -> None:
    """Check the assumed number of Byzantine updates: an integer ``f >= 0``."""
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise ValueError(f"f must be an integer >= 0 (number of Byzantine updates tolerated), got {f!r}")


def check_count(name: str, value: int, minimum: int = 1) -> None:
    """Check that ``value`` is an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    """Check that ``value`` is a finite real number, ``> 0`` (or ``>= 0`` with ``allow_zero``)."""
    bound_ok = value >= 0 if allow_zero else value > 0
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not bound_ok
    ):
        allowed = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
