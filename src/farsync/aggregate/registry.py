"""Lookup of aggregation rules by name, composed with a pre-aggregation, with parameters validated once.

``build_aggregator`` turns a rule name from configuration into an ``Aggregator``: a function from a stack of
``n`` updates of shape ``[n, d]`` to one update of shape ``[d]``, optionally preceded by a pre-aggregation
(:mod:`farsync.aggregate.preaggregate`: ``rule(preaggregate(stack))``). Parameters that do not depend on
``n`` are checked here, before training starts; those that do (Krum's ``n > 2f + 2``, Multi-Krum's
``m <= n``, NNM's ``f < n``) are checked when the aggregator is called, or, with ``clamp_f``, lowered to what
the rows allow (for callers whose number of rows varies, such as a reducer that leaves workers out). Every
rule accepts any ``[n, d]``, so a caller may apply it to the whole flattened model or shard by shard.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from farsync.aggregate._checks import (
    check_beta,
    check_byzantine_count,
    check_count,
    check_positive,
    check_stack,
)
from farsync.aggregate.centered_clip import RADII, centered_clip, clipping_radius
from farsync.aggregate.krum import krum, multi_krum
from farsync.aggregate.mean import mean
from farsync.aggregate.median import median
from farsync.aggregate.preaggregate import PREAGGREGATIONS, bucketing, nearest_neighbor_mixing
from farsync.aggregate.trimmed_mean import trimmed_mean

__all__ = ["PREAGGREGATIONS", "RADII", "RULES", "Aggregator", "build_aggregator", "max_tolerated"]

Aggregator = Callable[[torch.Tensor], torch.Tensor]
"""A rule: takes a stack of shape ``[n, d]`` and returns the aggregate of shape ``[d]``."""

RULES = ("mean", "median", "trimmed_mean", "krum", "multi_krum", "centered_clip")
"""Names accepted by :func:`build_aggregator`."""


def max_tolerated(rule: str, n: int) -> int:
    """The largest ``f`` that ``rule`` accepts with ``n`` rows: ``(n - 3) // 2`` for Krum, else ``(n - 1) // 2``.

    May be negative for Krum with fewer than 3 rows (no ``f`` works).
    """
    return (n - 3) // 2 if rule in ("krum", "multi_krum") else (n - 1) // 2


def build_aggregator(
    rule: str,
    *,
    beta: float = 0.1,
    f: int = 1,
    m: int = 1,
    tau: float = 1.0,
    num_iters: int = 20,
    tol: float = 1e-6,
    radius: str = "fixed",
    preaggregation: str = "none",
    bucket_size: int = 2,
    generator: torch.Generator | None = None,
    clamp_f: bool = False,
    start: torch.Tensor | None = None,
) -> Aggregator:
    """Return the aggregator named ``rule``, after ``preaggregation``, with its parameters bound.

    Only the parameters in use are read and validated: ``beta`` (trimmed_mean), ``f`` (krum, multi_krum,
    the ``"neighbors"`` radius and ``"nnm"``), ``m`` (multi_krum), ``tau``, ``radius``, ``num_iters`` and
    ``tol`` (centered_clip), ``bucket_size`` and ``generator`` (``"bucketing"``; default: seeded with 0).
    With ``clamp_f``, ``f`` is lowered at call time to :func:`max_tolerated` for the rows the rule sees
    (Krum falls back to the median when no ``f`` fits). ``start`` (centered_clip only, shape ``[d]``) is
    where the iterations begin instead of the coordinate-wise median: the previous round's aggregate for
    CenteredClip with history (Karimireddy, He and Jaggi 2021, arXiv 2012.10333, Algorithm 2), which
    pairs it with few iterations (``num_iters`` 1 to 3). An unknown name or an impossible parameter raises
    ``ValueError`` naming the parameter, the value and what is allowed.
    """
    reads_f = rule in ("krum", "multi_krum") or preaggregation == "nnm"
    if reads_f or (rule == "centered_clip" and radius == "neighbors"):
        check_byzantine_count(f)
    if start is not None and rule != "centered_clip":
        raise ValueError(f"start is a centered_clip option; rule {rule!r} takes none")
    core = _rule(rule, beta=beta, f=f, m=m, tau=tau, num_iters=num_iters, tol=tol, radius=radius, start=start)
    rule_f = functools.partial(_with_f, rule, core, f, clamp_f)
    if preaggregation == "none":
        return rule_f
    if preaggregation == "nnm":
        return functools.partial(_after_nnm, rule_f, f, clamp_f)
    if preaggregation == "bucketing":
        check_count("bucket_size", bucket_size)
        source = generator if generator is not None else torch.Generator().manual_seed(0)
        return functools.partial(_after_bucketing, rule_f, bucket_size, source)
    raise ValueError(f"preaggregation must be one of {', '.join(PREAGGREGATIONS)}; got {preaggregation!r}")


_Core = Callable[[torch.Tensor, int], torch.Tensor]
"""A rule taking the stack and the ``f`` to use for it."""


def _rule(
    rule: str,
    *,
    beta: float,
    f: int,
    m: int,
    tau: float,
    num_iters: int,
    tol: float,
    radius: str,
    start: torch.Tensor | None,
) -> _Core:
    if rule == "mean":
        return lambda stack, _f: mean(stack)
    if rule == "median":
        return lambda stack, _f: median(stack)
    if rule == "trimmed_mean":
        check_beta(beta)
        return lambda stack, _f: trimmed_mean(stack, beta)
    if rule == "krum":
        return krum
    if rule == "multi_krum":
        check_count("m", m)
        return lambda stack, f_used: multi_krum(stack, f_used, m)
    if rule == "centered_clip":
        check_positive("tau", tau)
        check_count("num_iters", num_iters)
        check_positive("tol", tol, allow_zero=True)
        if radius not in RADII:
            raise ValueError(f"radius must be one of {', '.join(RADII)}; got {radius!r}")
        return functools.partial(
            _centered_clip, tau=tau, radius=radius, num_iters=num_iters, tol=tol, start=start
        )
    raise ValueError(f"rule must be one of {', '.join(RULES)}; got {rule!r}")


def _centered_clip(
    stack: torch.Tensor,
    f: int,
    *,
    tau: float,
    radius: str,
    num_iters: int,
    tol: float,
    start: torch.Tensor | None,
) -> torch.Tensor:
    init = median(stack) if start is None else start
    scaled = clipping_radius(stack, tau, radius, f)
    if scaled <= 0:
        return median(stack)  # every row coincides: that row is the answer, wherever the start was
    return centered_clip(stack, tau=scaled, num_iters=num_iters, tol=tol, init=init)


def _with_f(rule: str, core: _Core, f: int, clamp_f: bool, stack: torch.Tensor) -> torch.Tensor:
    n, _ = check_stack(stack)
    if not clamp_f:
        return core(stack, f)
    allowed = max_tolerated(rule, n)
    if allowed < 0:
        return median(stack)
    return core(stack, min(f, allowed))


def _after_nnm(rule_f: Aggregator, f: int, clamp_f: bool, stack: torch.Tensor) -> torch.Tensor:
    n, _ = check_stack(stack)
    mixing_f = min(f, max_tolerated("nnm", n)) if clamp_f else f
    return rule_f(nearest_neighbor_mixing(stack, mixing_f))


def _after_bucketing(
    rule_f: Aggregator, bucket_size: int, generator: torch.Generator, stack: torch.Tensor
) -> torch.Tensor:
    return rule_f(bucketing(stack, bucket_size, generator))
