"""Top-k sparsification: send only the largest-magnitude fraction of the values.

Aji and Heafield 2017, "Sparse Communication for Distributed Gradient Descent" (arXiv 1704.05021); pair it
with error feedback (:class:`~farsync.compress.residuals.Residuals`) so the dropped values are sent later.
The wire format is :class:`~farsync.compress.codecs.TopKCodec`'s; this module owns how many values are kept.
"""

from __future__ import annotations

__all__ = ["topk_count"]


def topk_count(numel: int, fraction: float) -> int:
    """Values kept out of ``numel``: ``round(fraction * numel)``, at least 1 (if any) and at most ``numel``."""
    if numel == 0:
        return 0
    return min(numel, max(1, round(fraction * numel)))
