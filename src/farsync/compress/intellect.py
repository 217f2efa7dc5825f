"""The uint8 lookup-table scheme INTELLECT-1 used for its pseudo-gradient all-reduce.

Jaghouar et al. 2024, "INTELLECT-1 Technical Report" (arXiv 2412.01152), send each pseudo-gradient as one
byte per value plus a 256-entry table. Values are binned uniformly around their mean with bin width
``scale = 6 * std / 256`` (so the 256 bins span mean +- 3 std; values outside fall in the edge bins), and the
table entry for a bin is the mean of the original values that fell into it. Decoding is ``table[codes]``.
Using the in-bin mean rather than the bin centre removes the bias of the edge bins and lowers the error of
the interior ones.

Wire format for ``n`` values: ``codes`` uint8[n], ``table`` float32[256]  ->  n + 1024 bytes. The fixed
table makes this scheme poor for tensors much smaller than ~10k values.
"""

from __future__ import annotations

import torch

__all__ = ["uint8_lookup_decode", "uint8_lookup_encode"]

_NUM_BINS = 256
_RANGE_IN_STD = 6.0


def uint8_lookup_encode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode ``x`` (any shape, flattened) into ``(codes uint8[n], table float32[256])``.

    A constant tensor (std 0) puts every value in bin 128 whose table entry is the constant. Table entries of
    empty bins hold the bin centre; they are never read when decoding.
    """
    values = x.detach().reshape(-1).to(torch.float32)
    if values.numel() == 0:
        return values.new_zeros(0, dtype=torch.uint8), values.new_zeros(_NUM_BINS)
    mean = values.mean()
    # Population std (correction=0) so a single value gives std 0 instead of NaN.
    scale = values.std(correction=0) * (_RANGE_IN_STD / _NUM_BINS)
    safe_scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    bins = torch.floor((values - mean) / safe_scale) + _NUM_BINS // 2
    codes = bins.clamp_(0, _NUM_BINS - 1).to(torch.uint8)

    indices = codes.to(torch.int64)
    # float64 sums: a bin can hold millions of values and float32 accumulation would drift.
    sums = torch.zeros(_NUM_BINS, dtype=torch.float64, device=values.device)
    sums.index_add_(0, indices, values.to(torch.float64))
    counts = torch.bincount(indices, minlength=_NUM_BINS).to(torch.float64)
    offsets = torch.arange(_NUM_BINS, dtype=torch.float64, device=values.device) - (_NUM_BINS // 2 - 0.5)
    centres = mean.to(torch.float64) + offsets * scale.to(torch.float64)
    table = torch.where(counts > 0, sums / counts.clamp(min=1), centres).to(torch.float32)
    return codes, table


def uint8_lookup_decode(codes: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Decode: ``table[codes]`` as float32 (1-D)."""
    return table.to(torch.float32)[codes.to(torch.int64)]
