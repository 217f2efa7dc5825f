"""Robust aggregation rules: pure functions from a stack of updates ``[n, d]`` to one update ``[d]``.

Nothing here touches the network; callers gather the updates, stack them and pick a rule, usually through
:func:`build_aggregator`.
"""

from farsync.aggregate.centered_clip import RADII, centered_clip, centered_clip_with_steps, clipping_radius
from farsync.aggregate.krum import krum, krum_scores, multi_krum
from farsync.aggregate.mean import mean, weighted_mean
from farsync.aggregate.median import median
from farsync.aggregate.preaggregate import PREAGGREGATIONS, bucketing, nearest_neighbor_mixing
from farsync.aggregate.registry import RULES, Aggregator, build_aggregator, max_tolerated
from farsync.aggregate.trimmed_mean import num_trimmed, trimmed_mean

__all__ = [
    "PREAGGREGATIONS",
    "RADII",
    "RULES",
    "Aggregator",
    "bucketing",
    "build_aggregator",
    "centered_clip",
    "centered_clip_with_steps",
    "clipping_radius",
    "krum",
    "krum_scores",
    "mean",
    "max_tolerated",
    "median",
    "multi_krum",
    "nearest_neighbor_mixing",
    "num_trimmed",
    "trimmed_mean",
    "weighted_mean",
]
