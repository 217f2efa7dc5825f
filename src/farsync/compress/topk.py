"""Top-k sparsification: send only the largest-magnitude fraction of the values.

Aji and Heafield 2017, "Sparse Communication for Distributed Gradient Descent" (arXiv 1704.05021); pair it
with :class:`~farsync.compress.error_feedback.ErrorFeedback` so the dropped values are sent later.

Wire format for ``n`` values and ``k = topk_count(n, fraction)``: ``values`` float32[k] and ``indices``
int32[k] into the flattened tensor  ->  8k bytes.
"""

from __future__ import annotations

import math

import torch

from farsync.compress.base import Compressor, Encoded

__all__ = ["TopK", "topk_count"]


def topk_count(numel: int, fraction: float) -> int:
    """Values kept out of ``numel``: ``round(fraction * numel)``, at least 1 (if any) and at most ``numel``."""
    if numel == 0:
        return 0
    return min(numel, max(1, round(fraction * numel)))


class TopK(Compressor):
    """Keeps the ``k`` entries of largest absolute value (ties broken by ``torch.topk``); zeros the rest."""

    name = "topk"

    def __init__(self, fraction: float) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction={fraction} must be in (0, 1]")
        self.fraction = fraction

    def encode(self, name: str, tensor: torch.Tensor) -> Encoded:
        flat = tensor.detach().reshape(-1).to(torch.float32)
        k = topk_count(flat.numel(), self.fraction)
        _, indices = torch.topk(flat.abs(), k, sorted=False)
        payload = {"values": flat[indices].clone(), "indices": indices.to(torch.int32)}
        return Encoded(payload=payload, shape=tensor.shape, dtype=tensor.dtype)

    def decode(self, encoded: Encoded) -> torch.Tensor:
        values = encoded.payload["values"].to(torch.float32)
        dense = values.new_zeros(math.prod(encoded.shape))
        dense[encoded.payload["indices"].to(torch.int64)] = values
        return dense.reshape(encoded.shape)
