"""Pre-aggregation: maps from a stack of updates to another stack, applied before any rule.

A robust rule's guarantee degrades with the honest updates' spread relative to their mean; both steps here
shrink that spread among the honest rows while keeping a Byzantine row's influence bounded, so they compose
with every rule in :mod:`farsync.aggregate` (``rule(preaggregate(stack))``).

- Nearest-neighbour mixing (NNM; Allouah, Farhadkhani, Guerraoui, Gupta, Pinot and Stephan 2023, "Fixing by
  Mixing: A Recipe for Optimal Byzantine ML under Heterogeneity", AISTATS 2023, arXiv 2302.01772) replaces
  every row by the average of its ``n - f`` nearest rows (itself included). An honest row's neighbours are
  mostly honest, so the mixed honest rows are close to the honest mean; each Byzantine row enters at most a
  fraction ``f / (n - f)`` of any mixture. The authors prove that NNM followed by a robust rule (trimmed
  mean, median, Krum, CenteredClip, ...) reaches the optimal error for any ``f < n / 2``.
- Bucketing (Karimireddy, He and Jaggi 2022, "Byzantine-Robust Learning on Heterogeneous Datasets via
  Bucketing", ICLR 2022, arXiv 2006.09365) shuffles the rows and averages them in buckets of ``s``. It
  divides the honest variance by ``s`` but can contaminate up to ``f`` of the ``n / s`` buckets, so it needs
  ``f * s < n / 2``: with 7 of 16 Byzantine workers, no bucket size above 1 keeps an honest majority.
"""

from __future__ import annotations

import math

import torch

from farsync.aggregate._checks import check_byzantine_count, check_count, check_stack

__all__ = ["PREAGGREGATIONS", "bucketing", "nearest_neighbor_mixing"]

PREAGGREGATIONS = ("none", "nnm", "bucketing")
"""Names accepted by ``aggregation.preaggregation`` and :func:`farsync.aggregate.build_aggregator`."""


def nearest_neighbor_mixing(stack: torch.Tensor, f: int) -> torch.Tensor:
    """Every row of ``stack`` (shape ``[n, d]``) replaced by the mean of its ``n - f`` nearest rows.

    Distances are Euclidean; a row is its own nearest neighbour. Ties are broken towards lower row
    indices so the result does not depend on the sort's implementation. ``f`` must be below ``n``
    (``f = 0`` returns the mean in every row). Returns shape ``[n, d]``.
    """
    n, _ = check_stack(stack)
    check_byzantine_count(f)
    if f >= n:
        raise ValueError(f"f must be < n={n} (each row averages its n - f nearest rows), got f={f}")
    # Differences formed explicitly (cdist without the |a|^2 + |b|^2 - 2ab shortcut), as in krum_scores: honest rows are close,
    # exactly where the expanded form cancels. Accumulated in float64 so near ties are ordered exactly.
    wide = stack.to(torch.float64)
    distances = torch.cdist(wide, wide, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
    order = distances.sort(dim=1, stable=True).indices[:, : n - f]
    return stack[order].mean(dim=1)


def bucketing(stack: torch.Tensor, bucket_size: int, generator: torch.Generator) -> torch.Tensor:
    """Rows of ``stack`` (shape ``[n, d]``) shuffled with ``generator`` and averaged in buckets of ``s``.

    Returns shape ``[ceil(n / s), d]``; the last bucket holds the remaining ``n mod s`` rows when ``s`` does
    not divide ``n``. ``bucket_size = 1`` only shuffles. Pass a generator seeded identically wherever the
    same stack must give the same buckets (every owner of a shard, every replay of a run).
    """
    n, _ = check_stack(stack)
    check_count("bucket_size", bucket_size)
    permutation = torch.randperm(n, generator=generator, device=generator.device).to(stack.device)
    shuffled = stack[permutation]
    num_buckets = math.ceil(n / bucket_size)
    return torch.stack(
        [shuffled[b * bucket_size : (b + 1) * bucket_size].mean(dim=0) for b in range(num_buckets)]
    )
