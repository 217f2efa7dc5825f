"""Lookup of aggregation rules by name, with their parameters validated once.

``build_aggregator`` turns a rule name from configuration into an ``Aggregator``: a function from a stack of
``n`` updates of shape ``[n, d]`` to one update of shape ``[d]``. Parameters that do not depend on ``n`` are
checked here, before training starts; those that do (Krum's ``n > 2f + 2``, Multi-Krum's ``m <= n``) are
checked when the aggregator is called. Every rule accepts any ``[n, d]``, so a caller may apply it to the
whole flattened model or shard by shard.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from farsync.aggregate._checks import check_beta, check_byzantine_count, check_count, check_positive
from farsync.aggregate.centered_clip import centered_clip
from farsync.aggregate.krum import krum, multi_krum
from farsync.aggregate.mean import mean
from farsync.aggregate.median import median
from farsync.aggregate.trimmed_mean import trimmed_mean

__all__ = ["RULES", "Aggregator", "build_aggregator"]

Aggregator = Callable[[torch.Tensor], torch.Tensor]
"""A rule: takes a stack of shape ``[n, d]`` and returns the aggregate of shape ``[d]``."""

RULES = ("mean", "median", "trimmed_mean", "krum", "multi_krum", "centered_clip")
"""Names accepted by :func:`build_aggregator`."""


def build_aggregator(
    rule: str,
    *,
    beta: float = 0.1,
    f: int = 1,
    m: int = 1,
    tau: float = 1.0,
    num_iters: int = 20,
    tol: float = 1e-6,
) -> Aggregator:
    """Return the aggregator named ``rule`` with its parameters bound.

    Only the parameters the rule uses are read and validated: ``beta`` (trimmed_mean), ``f`` (krum,
    multi_krum), ``m`` (multi_krum), ``tau``, ``num_iters`` and ``tol`` (centered_clip). An unknown rule or
    an impossible parameter raises ``ValueError`` naming the parameter, the value and what is allowed.
    """
    if rule == "mean":
        return mean
    if rule == "median":
        return median
    if rule == "trimmed_mean":
        check_beta(beta)
        return functools.partial(trimmed_mean, beta=beta)
    if rule == "krum":
        check_byzantine_count(f)
        return functools.partial(krum, f=f)
    if rule == "multi_krum":
        check_byzantine_count(f)
        check_count("m", m)
        return functools.partial(multi_krum, f=f, m=m)
    if rule == "centered_clip":
        check_positive("tau", tau)
        check_count("num_iters", num_iters)
        check_positive("tol", tol, allow_zero=True)
        return functools.partial(centered_clip, tau=tau, num_iters=num_iters, tol=tol)
    raise ValueError(f"rule must be one of {', '.join(RULES)}; got {rule!r}")
