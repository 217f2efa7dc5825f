"""Wire codecs: the one interface between a float32 vector and the bytes that carry it.

Every collective that compresses (the quantized ring, the butterfly shard exchange, the all-gather of
encoded updates, the low-rank factors) turns a flat float32 vector into one ``uint8`` message with a
:class:`WireCodec` and back. A message's size is a function of the vector's length alone
(:meth:`WireCodec.num_bytes`), so a receiver knows how many bytes to expect without a header and the byte
ledger counts exactly what the codec produced.

================  =====================================================  ==========================
codec             layout of a message of ``n`` values, ``b`` blocks       bytes
================  =====================================================  ==========================
``fp32``          values float32[n]                                      ``4n``
``int8``          scales float32[b], codes int8[n]                       ``4b + n``
``int4``          scales float32[b], codes uint8[ceil(n/2)] (2 per byte) ``4b + ceil(n/2)``
``int2``          scales float32[b], codes uint8[ceil(n/4)] (4 per byte) ``4b + ceil(n/4)``
``fp16``          scales float32[b], values/scale float16[n]             ``4b + 2n``
``bf16``          values bfloat16[n]                                     ``2n``
``uint8_lookup``  table float32[256], codes uint8[n]                     ``1024 + n``
``topk``          values float32[k], indices int32[k], k = topk_count    ``8k``
================  =====================================================  ==========================

``int8``/``int4``/``int2`` are the blockwise absmax codes of :mod:`farsync.compress.quantize` (Dettmers et al. 2022,
arXiv 2110.02861); ``uint8_lookup`` is the INTELLECT-1 scheme of :mod:`farsync.compress.intellect`
(Jaghouar et al. 2024, arXiv 2412.01152); ``topk`` is top-k sparsification (Aji and Heafield 2017, arXiv
1704.05021), see :mod:`farsync.compress.topk`.

fp16 overflow: a plain fp16 cast overflows to Inf above 65504, which a partial sum of large
pseudo-gradients can reach. The ``fp16`` codec therefore divides each block by its absmax (an fp32 scale
sent with it), so every fp16 value lies in [-1, 1]; nothing overflows and the relative precision is fp16's
2**-11 of the block's largest value. ``bf16`` has float32's range and needs no scale.

Float32 fields come first so that every field starts at a multiple of its element size. Codecs with
``block_size > 1`` are blockwise: a ring cuts chunks on block boundaries, so quantizing a chunk is the same
as quantizing the whole vector, and re-encoding decoded values is exact up to rounding (the absmax element
of a block maps to the largest code again), which error feedback relies on.

``summable`` tells a reducer whether partial sums may be decoded, added and re-encoded hop by hop (a ring
all-reduce). Codecs whose message depends on the whole message's statistics (``uint8_lookup``'s table) or
that keep a data-dependent subset (``topk``) are not: the reducers all-gather each worker's own message
instead.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F

from farsync.compress.intellect import uint8_lookup_decode, uint8_lookup_encode
from farsync.compress.quantize import dequantize_blockwise, quantize_blockwise, quantized_num_bytes
from farsync.compress.topk import topk_count

__all__ = [
    "CODEC_KINDS",
    "Bf16Codec",
    "BlockwiseCodec",
    "Fp32Codec",
    "ScaledHalfCodec",
    "TopKCodec",
    "Uint8LookupCodec",
    "WireCodec",
    "as_bytes",
    "from_bytes",
    "make_codec",
]

logger = logging.getLogger(__name__)

_SCALE_BYTES = 4
_NUM_LOOKUP_BINS = 256


def as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """The raw bytes of ``tensor`` as a flat ``uint8`` tensor (a view when already contiguous)."""
    flat = tensor.contiguous().reshape(-1)
    return flat.to(torch.uint8) if flat.dtype == torch.bool else flat.view(torch.uint8)


def from_bytes(message: torch.Tensor, start: int, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """``numel`` values of ``dtype`` read from ``message[start:]`` (copied, so any alignment works)."""
    size = numel * torch.empty(0, dtype=dtype).element_size()
    return message[start : start + size].clone().view(dtype)


class WireCodec(ABC):
    """Turns a float32 1-D tensor into one ``uint8`` message and back. Pure and deterministic.

    A malformed message (a peer's bytes of the wrong length) raises ``ValueError`` from :meth:`decode`.
    """

    name: str
    bits: int
    """Nominal bits per value (for metrics): 32, 16, 8 or 4."""
    block_size: int = 1
    """Chunks of a ring are cut on multiples of this many values."""
    lossless: bool = False
    """True when :meth:`round_trip` returns its input exactly."""
    summable: bool = True
    """True when a ring may re-encode partial sums hop by hop (module docstring)."""

    @abstractmethod
    def num_bytes(self, numel: int) -> int:
        """Bytes of the message for ``numel`` values (depends on nothing else)."""

    @abstractmethod
    def encode(self, values: torch.Tensor) -> torch.Tensor:
        """A flat ``uint8`` message of exactly ``num_bytes(values.numel())`` bytes."""

    @abstractmethod
    def _decode(self, message: torch.Tensor, numel: int) -> torch.Tensor:
        """The float32 values of a message of the right length."""

    def decode(self, message: torch.Tensor, numel: int) -> torch.Tensor:
        """The float32 values (1-D) of a message made by :meth:`encode` from ``numel`` values."""
        expected = self.num_bytes(numel)
        if message.numel() != expected:
            raise ValueError(
                f"{self.name} message for {numel} values must have {expected} bytes, got {message.numel()}"
            )
        return self._decode(message, numel)

    def round_trip(self, values: torch.Tensor) -> torch.Tensor:
        """What a receiver of ``values`` reconstructs (1-D float32)."""
        return self.decode(self.encode(values), values.numel())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, block_size={self.block_size})"


class Fp32Codec(WireCodec):
    """Uncompressed float32 (exact); the reference the compressed codecs are measured against."""

    name, bits, lossless = "fp32", 32, True

    def num_bytes(self, numel: int) -> int:
        return 4 * numel

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        return as_bytes(values.detach().reshape(-1).to(torch.float32, copy=True))

    def _decode(self, message: torch.Tensor, numel: int) -> torch.Tensor:
        return from_bytes(message, 0, numel, torch.float32)


class BlockwiseCodec(WireCodec):
    """Blockwise absmax int8, int4 or int2 (ternary) codes with one float32 scale per block."""

    def __init__(self, bits: int, block_size: int = 64) -> None:
        quantized_num_bytes(0, bits, block_size)  # validates bits and block_size with a clear error
        self.bits, self.block_size = bits, block_size
        self.name = f"int{bits}"

    def num_bytes(self, numel: int) -> int:
        return quantized_num_bytes(numel, self.bits, self.block_size)

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        codes, scales = quantize_blockwise(values.reshape(-1), self.bits, self.block_size)
        return torch.cat([as_bytes(scales), as_bytes(codes)])

    def _decode(self, message: torch.Tensor, numel: int) -> torch.Tensor:
        num_blocks = math.ceil(numel / self.block_size)
        scales = from_bytes(message, 0, num_blocks, torch.float32)
        codes = message[_SCALE_BYTES * num_blocks :]
        if self.bits == 8:
            codes = codes.view(torch.int8)
        return dequantize_blockwise(codes, scales, self.bits, self.block_size, numel)


class ScaledHalfCodec(WireCodec):
    """fp16 values divided by their block's absmax (sent as float32), so no value can overflow fp16."""

    name, bits = "fp16", 16

    def __init__(self, block_size: int = 64) -> None:
        if block_size < 1:
            raise ValueError(f"block_size={block_size} must be >= 1")
        self.block_size = block_size

    def num_bytes(self, numel: int) -> int:
        return _SCALE_BYTES * math.ceil(numel / self.block_size) + 2 * numel

    def _blocks(self, values: torch.Tensor) -> torch.Tensor:
        numel = values.numel()
        num_blocks = math.ceil(numel / self.block_size)
        return F.pad(values, (0, num_blocks * self.block_size - numel)).view(num_blocks, self.block_size)

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        flat = values.detach().reshape(-1).to(torch.float32)
        blocks = self._blocks(flat)
        scales = blocks.abs().amax(dim=1) if blocks.numel() else flat.new_zeros(0)
        safe = torch.where(scales > 0, scales, torch.ones_like(scales))
        halves = (blocks / safe[:, None]).to(torch.float16).reshape(-1)[: flat.numel()]
        return torch.cat([as_bytes(scales), as_bytes(halves)])

    def _decode(self, message: torch.Tensor, numel: int) -> torch.Tensor:
        num_blocks = math.ceil(numel / self.block_size)
        scales = from_bytes(message, 0, num_blocks, torch.float32)
        halves = from_bytes(message, _SCALE_BYTES * num_blocks, numel, torch.float16).to(torch.float32)
        return (self._blocks(halves) * scales[:, None]).reshape(-1)[:numel]


class Bf16Codec(WireCodec):
    """bfloat16 values: float32's range (no overflow), 8 significant bits."""

    name, bits = "bf16", 16

    def num_bytes(self, numel: int) -> int:
        return 2 * numel

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        return as_bytes(values.detach().reshape(-1).to(torch.bfloat16))

    def _decode(self, message: torch.Tensor, numel: int) -> torch.Tensor:
        return from_bytes(message, 0, numel, torch.bfloat16).to(torch.float32)


class Uint8LookupCodec(WireCodec):
    """INTELLECT-1's uint8 codes with a 256-entry float32 table of bin means, one table per message."""

    name, bits, summable = "uint8_lookup", 8, False

    def num_bytes(self, numel: int) -> int:
        return _SCALE_BYTES * _NUM_LOOKUP_BINS + numel

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        codes, table = uint8_lookup_encode(values)
        return torch.cat([as_bytes(table), codes])

    def _decode(self, message: torch.Tensor, numel: int) -> torch.Tensor:
        table = from_bytes(message, 0, _NUM_LOOKUP_BINS, torch.float32)
        codes = message[_SCALE_BYTES * _NUM_LOOKUP_BINS :]
        return uint8_lookup_decode(codes, table)


class TopKCodec(WireCodec):
    """The ``k`` largest magnitudes as float32 values plus int32 indices; every other value decodes to 0."""

    name, bits, summable = "topk", 32, False

    def __init__(self, fraction: float) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction={fraction} must be in (0, 1]")
        self.fraction = fraction

    def num_bytes(self, numel: int) -> int:
        return 8 * topk_count(numel, self.fraction)

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        flat = values.detach().reshape(-1).to(torch.float32)
        k = topk_count(flat.numel(), self.fraction)
        _, indices = torch.topk(flat.abs(), k, sorted=False)
        return torch.cat([as_bytes(flat[indices].clone()), as_bytes(indices.to(torch.int32))])

    def _decode(self, message: torch.Tensor, numel: int) -> torch.Tensor:
        k = topk_count(numel, self.fraction)
        kept = from_bytes(message, 0, k, torch.float32)
        indices = from_bytes(message, 4 * k, k, torch.int32).to(torch.int64)
        dense = kept.new_zeros(numel)
        dense[indices] = kept
        return dense


CODEC_KINDS = ("fp32", "fp16", "bf16", "int8", "int4", "int2", "uint8_lookup", "topk")


def make_codec(kind: str, block_size: int = 64, *, topk_fraction: float = 0.01) -> WireCodec:
    """The codec ``kind`` (one of :data:`CODEC_KINDS`); ``block_size`` applies to int8, int4, int2 and fp16."""
    if kind == "fp32":
        return Fp32Codec()
    if kind in ("int8", "int4", "int2"):
        return BlockwiseCodec(int(kind[3:]), block_size)
    if kind == "fp16":
        return ScaledHalfCodec(block_size)
    if kind == "bf16":
        return Bf16Codec()
    if kind == "uint8_lookup":
        return Uint8LookupCodec()
    if kind == "topk":
        return TopKCodec(topk_fraction)
    raise ValueError(f"codec kind={kind!r} is unknown; allowed: {', '.join(CODEC_KINDS)}")
