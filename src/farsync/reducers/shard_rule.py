"""The configured aggregation applied by one butterfly owner to its stack of shards.

:class:`ShardAggregator` turns the ``aggregation`` section into a function of an owner's ``[n, shard]``
stack and the senders' weights: it keeps the accepted senders (weight > 0), then applies the configured
pre-aggregation and rule from :mod:`farsync.aggregate`. Everything that depends on how many senders are
left is settled here, per call, because exclusions change it from round to round:

- ``aggregation.f = -1`` means as many Byzantine workers as the rule tolerates among the senders left
  (``(n - 1) // 2``, ``(n - 3) // 2`` for Krum); an explicit ``f`` is lowered to that bound when exclusions
  leave too few senders (Krum falls back to the median below 3).
- Multi-Krum's ``m`` is lowered to the number of rows the rule sees (buckets, with bucketing).
- ``aggregation.clip_start = "previous"``: CenteredClip starts from ``previous``, the caller's copy of this
  shard of the last round's aggregate (the median while there is none yet, in the first round).
- Every owner seeds its bucketing generator from the round (:meth:`ShardAggregator.reseed`), so in a round
  every shard is bucketed with the same permutation (the buckets are the same groups of workers as if the
  whole vectors were bucketed) and a peer re-computing an owner's shard draws the same buckets.

``aggregation.rule = "robust"`` is resolved here into :data:`farsync.config.ROBUST_PRESET`.

Weights: ``mean`` without pre-aggregation is the weighted mean (FedAvg's sample counts, like
:class:`~farsync.reducers.base.MeanReducer`). Every other configuration gives each accepted worker the
same weight: weights are self-reported, and a Byzantine worker claiming a huge count would otherwise buy
itself the majority that every rule's guarantee assumes it lacks.
"""

from __future__ import annotations

import math

import torch

from farsync.aggregate import Aggregator, build_aggregator, weighted_mean
from farsync.config import AggregationConfig

__all__ = ["ShardAggregator"]


class ShardAggregator:
    """The configured pre-aggregation and rule on one owner's stack, restricted to the accepted senders.

    Args:
        config: the ``aggregation`` section.
        adaptive_tau: overrides ``config.adaptive_tau`` (CenteredClip's radius relative to the spread).
        seed: seeds the bucketing permutation (the same on every owner, see the module docstring).
    """

    def __init__(self, config: AggregationConfig, adaptive_tau: bool | None = None, *, seed: int = 0) -> None:
        preset = config.rule == "robust"
        config = config.resolved()
        adaptive_tau = None if preset else adaptive_tau  # the preset decides the radius
        self.config = config
        adaptive = config.adaptive_tau if adaptive_tau is None else adaptive_tau
        self.radius = config.tau_scale if adaptive else "fixed"
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self._build(f=max(config.f, 0), m=config.m)  # every parameter is checked once, before any round

    def reseed(self, round_index: int) -> None:
        """Restart the bucketing permutation for ``round_index``: every call in a round draws the same one,
        whoever computes it (the owner, or a peer verifying the owner)."""
        self.generator.manual_seed(self.seed * 1_000_003 + round_index)

    def __call__(
        self, stack: torch.Tensor, weights: torch.Tensor, previous: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Aggregate the rows of ``stack`` with positive ``weights`` (zeros when there are none).

        ``previous`` (shape ``[shard]``) is this shard's aggregate of the last round, the start of
        CenteredClip with ``clip_start = "previous"``; ignored otherwise, and ``None`` starts from the median.
        """
        keep = weights > 0
        if not bool(keep.any()):
            return stack.new_zeros(stack.shape[1])
        rows, kept_weights = stack[keep], weights[keep]
        config = self.config
        if config.rule == "mean" and config.preaggregation == "none":
            return weighted_mean(rows, kept_weights)
        count = rows.shape[0]
        seen = math.ceil(count / config.bucket_size) if config.preaggregation == "bucketing" else count
        # f = count is always above the bound, so clamping turns it into "as many as the rule allows".
        f = count if config.f < 0 else config.f
        start = previous if self.uses_history else None
        return self._build(f=f, m=min(config.m, seen), start=start)(rows)

    @property
    def uses_history(self) -> bool:
        """Whether the rule starts from the previous round's aggregate (CenteredClip with history)."""
        return self.config.rule == "centered_clip" and self.config.clip_start == "previous"

    def _build(self, *, f: int, m: int, start: torch.Tensor | None = None) -> Aggregator:
        config = self.config
        return build_aggregator(
            config.rule,
            beta=config.beta,
            f=f,
            m=m,
            tau=config.tau,
            num_iters=config.num_iters,
            radius=self.radius,
            preaggregation=config.preaggregation,
            bucket_size=config.bucket_size,
            generator=self.generator,
            clamp_f=True,
            start=start,
        )
