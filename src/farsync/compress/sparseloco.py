"""SparseLoCo's message: chunked top-k of a tensor, the kept values in 2 bits, packed indices.

Sarfi et al. 2025, "Communication Efficient LLM Pre-training with SparseLoCo" (arXiv 2508.15706). What one
worker sends for one tensor ``x`` (its error-feedback buffer, see :mod:`farsync.reducers.sparseloco`):

1. **Chunks** (:mod:`farsync.compress.chunking`): tiles of at most ``chunk_size x chunk_size`` (runs of at
   most ``chunk_size`` for a 1-D tensor); with ``transform = "dct"`` each chunk first goes to the orthonormal
   DCT-II domain (DeMo's chunks, Peng et al. 2024, arXiv 2411.19870).
2. **Top-k per chunk**: the ``k = topk_count(chunk_len, fraction)`` largest magnitudes of every chunk
   (``round(fraction * chunk_len)``, at least 1): the paper's 1-3% densities are ``k`` = 41 to 123 of a 4,096
   value tile (its configurations use 32, 64 and 128).
3. **2-bit values** (:func:`quantize_statistical`, the quantizer of the paper's code release): over all kept
   values of the tensor, ``shift = mean``, ``sigma`` the unbiased standard deviation,
   ``scale = 6 sigma / 4`` and ``code = clamp(round((v - shift) / scale) + 2, 0, 3)``; the receiver maps a
   code to its bin's mean (``table[code]``, the mean of the kept values that got that code; 0-count bins
   send ``shift``), so the four table entries are the only floats sent.

Wire layout of one tensor with ``C`` chunks of ``L`` values and ``k`` kept per chunk
(``b = max(1, ceil(log2 L))`` bits per index, an offset inside its chunk):

==========  =======================================================  ==============================
field       content                                                  bytes
==========  =======================================================  ==============================
table       float32[4], the value of codes 0..3                       16
indices     ``C k`` offsets, ``b`` bits each, packed little-endian    ``ceil(C k b / 8)``
codes       ``C k`` codes, 2 bits each, packed little-endian          ``ceil(C k / 4)``
==========  =======================================================  ==============================

So a 64 x 64 tile with ``k = 64`` (1.56%) costs ``64 (12 + 2) / 8 = 112`` bytes instead of 16,384 in fp32
(146x); the size depends on the shape alone (no header). A message of the wrong length, an offset outside
its chunk or a non-finite table entry raises ``ValueError`` from :meth:`SparseLoCoCodec.decode`.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import torch

from farsync.compress.chunking import ChunkLayout, chunk_layout
from farsync.compress.codecs import as_bytes, from_bytes
from farsync.compress.topk import topk_count

__all__ = [
    "NUM_BINS",
    "RANGE_SIGMAS",
    "SparseLoCoCodec",
    "dequantize_statistical",
    "pack_bits",
    "quantize_statistical",
    "unpack_bits",
]

logger = logging.getLogger(__name__)

NUM_BINS = 4
"""2-bit codes."""
RANGE_SIGMAS = 6.0
"""The code range in standard deviations of the kept values (the paper's code release: 6)."""
_TABLE_BYTES = 4 * NUM_BINS
_VALUE_BITS = 2

Transform = Literal["none", "dct"]


def quantize_statistical(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes, table)``: 2-bit codes (uint8, 0..3) and the float32 value of each code (module docstring)."""
    flat = values.detach().reshape(-1).to(torch.float32)
    table = flat.new_zeros(NUM_BINS)
    if flat.numel() == 0:
        return torch.zeros(0, dtype=torch.uint8, device=flat.device), table
    shift = flat.mean()
    centered = flat - shift
    sigma = centered.norm() / math.sqrt(flat.numel() - 1) if flat.numel() > 1 else centered.new_zeros(())
    scale = RANGE_SIGMAS * sigma / NUM_BINS
    if not bool(torch.isfinite(scale)) or float(scale) == 0.0:
        scale = torch.ones((), device=flat.device)
    codes = (centered / scale + NUM_BINS // 2).round().clamp(0, NUM_BINS - 1).to(torch.int64)
    sums = table.index_add(0, codes, centered)
    counts = table.index_add(0, codes, torch.ones_like(centered))
    table = torch.where(counts > 0, sums / counts.clamp(min=1), torch.zeros_like(sums)) + shift
    return codes.to(torch.uint8), table


def dequantize_statistical(codes: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The float32 values of ``codes`` under ``table``."""
    return table[codes.to(torch.int64)]


def pack_bits(values: torch.Tensor, width: int) -> torch.Tensor:
    """Non-negative integers below ``2**width``, ``width`` bits each, little-endian, into ``uint8`` bytes."""
    if values.numel() == 0:
        return torch.zeros(0, dtype=torch.uint8, device=values.device)
    shifts = torch.arange(width, device=values.device)
    bits = (values.reshape(-1, 1).to(torch.int64) >> shifts) & 1
    flat = bits.reshape(-1)
    padded = torch.nn.functional.pad(flat, (0, (-flat.numel()) % 8))
    weights = 1 << torch.arange(8, device=values.device)
    return (padded.reshape(-1, 8) * weights).sum(dim=1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, width: int, count: int) -> torch.Tensor:
    """The ``count`` integers (int64) :func:`pack_bits` packed at ``width`` bits."""
    if count == 0:
        return torch.zeros(0, dtype=torch.int64, device=packed.device)
    bits = (packed.to(torch.int64).reshape(-1, 1) >> torch.arange(8, device=packed.device)) & 1
    bits = bits.reshape(-1)[: count * width].reshape(count, width)
    return (bits << torch.arange(width, device=packed.device)).sum(dim=1)


class SparseLoCoCodec:
    """One tensor's SparseLoCo message and back (module docstring); pure and deterministic.

    Args:
        fraction: share of each chunk kept (``k = topk_count(chunk_len, fraction)``).
        chunk_size: side of a tile (the run length of a 1-D tensor); 64 in the paper.
        transform: ``"none"`` (SparseLoCo) or ``"dct"`` (top-k of each chunk's DCT-II coefficients).
    """

    def __init__(self, fraction: float, chunk_size: int = 64, transform: Transform = "none") -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction={fraction} must be in (0, 1]")
        if chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size} must be >= 1")
        if transform not in ("none", "dct"):
            raise ValueError(f"transform={transform!r} is unknown; allowed: 'none', 'dct'")
        self.fraction, self.chunk_size, self.transform = fraction, chunk_size, transform
        self._layouts: dict[tuple[int, ...], ChunkLayout] = {}

    def layout(self, shape: tuple[int, ...] | torch.Size) -> ChunkLayout:
        key = tuple(int(s) for s in shape)
        if key not in self._layouts:
            self._layouts[key] = chunk_layout(key, self.chunk_size)
        return self._layouts[key]

    def kept_per_chunk(self, shape: tuple[int, ...] | torch.Size) -> int:
        """``k`` for a tensor of ``shape``."""
        return topk_count(self.layout(shape).chunk_len, self.fraction)

    @staticmethod
    def _index_bits(chunk_len: int) -> int:
        return max(1, math.ceil(math.log2(chunk_len))) if chunk_len > 1 else 1

    def _sizes(self, shape: tuple[int, ...] | torch.Size) -> tuple[int, int, int]:
        """(number of kept values, index bytes, code bytes)."""
        layout = self.layout(shape)
        kept = layout.num_chunks * self.kept_per_chunk(shape)
        index_bytes = math.ceil(kept * self._index_bits(layout.chunk_len) / 8)
        return kept, index_bytes, math.ceil(kept * _VALUE_BITS / 8)

    def num_bytes(self, shape: tuple[int, ...] | torch.Size) -> int:
        """Bytes of the message for a tensor of ``shape`` (depends on nothing else)."""
        if math.prod(shape) == 0:
            return 0
        _, index_bytes, code_bytes = self._sizes(shape)
        return _TABLE_BYTES + index_bytes + code_bytes

    def encode(self, tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(message, sent)``: the ``uint8`` message and what a receiver decodes from it (float32, the
        tensor's shape), which error feedback subtracts from the buffer."""
        layout = self.layout(tensor.shape)
        if layout.numel == 0:
            return torch.zeros(0, dtype=torch.uint8, device=tensor.device), torch.zeros_like(tensor)
        chunks = layout.to_chunks(tensor)
        if self.transform == "dct":
            chunks = layout.dct(chunks)
        k = self.kept_per_chunk(tensor.shape)
        _, offsets = torch.topk(chunks.abs(), k, dim=1, sorted=False)
        kept = torch.gather(chunks, 1, offsets)
        codes, table = quantize_statistical(kept)
        message = torch.cat(
            [
                as_bytes(table),
                pack_bits(offsets.reshape(-1), self._index_bits(layout.chunk_len)),
                pack_bits(codes.reshape(-1), _VALUE_BITS),
            ]
        )
        sent = self._rebuild(layout, offsets, dequantize_statistical(codes, table).reshape(offsets.shape))
        return message, sent

    def decode(self, message: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """The float32 tensor of ``shape`` a message made by :meth:`encode` carries."""
        expected = self.num_bytes(shape)
        if message.numel() != expected:
            raise ValueError(
                f"sparseloco message for shape {tuple(shape)} must have {expected} bytes, got {message.numel()}"
            )
        layout = self.layout(shape)
        if layout.numel == 0:
            return torch.zeros(tuple(shape), device=message.device)
        kept, index_bytes, code_bytes = self._sizes(shape)
        table = from_bytes(message, 0, NUM_BINS, torch.float32)
        if not bool(torch.isfinite(table).all()):
            raise ValueError("sparseloco message has a non-finite value table")
        start = _TABLE_BYTES
        offsets = unpack_bits(message[start : start + index_bytes], self._index_bits(layout.chunk_len), kept)
        if kept and int(offsets.max()) >= layout.chunk_len:
            raise ValueError(f"sparseloco message has an offset >= its chunk length {layout.chunk_len}")
        codes = unpack_bits(message[start + index_bytes :], _VALUE_BITS, kept)
        k = self.kept_per_chunk(shape)
        values = dequantize_statistical(codes, table).reshape(layout.num_chunks, k)
        return self._rebuild(layout, offsets.reshape(layout.num_chunks, k), values)

    def _rebuild(self, layout: ChunkLayout, offsets: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        chunks = values.new_zeros(layout.num_chunks, layout.chunk_len)
        chunks.scatter_(1, offsets, values)
        if self.transform == "dct":
            chunks = layout.idct(chunks)
        return layout.from_chunks(chunks)

    def __repr__(self) -> str:
        return (
            f"SparseLoCoCodec(fraction={self.fraction}, chunk_size={self.chunk_size}, "
            f"transform={self.transform!r})"
        )
