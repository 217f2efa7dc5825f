"""Wire codecs for ring collectives: how one chunk of a float32 vector becomes one message of bytes.

A ring all-reduce (:mod:`farsync.collectives.quantized_ring`) sends every chunk as a flat ``uint8`` message and
accumulates what it receives in float32. A :class:`WireCodec` fixes the message layout. Every layout is a
function of the chunk's length alone, so a receiver knows how many bytes to expect without a header.

==============  =====================================================  ==========================
codec           layout of a message of ``n`` values, ``b`` blocks       bytes
==============  =====================================================  ==========================
``fp32``        values float32[n]                                      ``4n``
``int8``        scales float32[b], codes int8[n]                       ``4b + n``
``int4``        scales float32[b], codes uint8[ceil(n/2)] (2 per byte) ``4b + ceil(n/2)``
``fp16``        scales float32[b], values/scale float16[n]             ``4b + 2n``
``bf16``        values bfloat16[n]                                     ``2n``
``uint8_lookup`` table float32[256], codes uint8[n]                    ``1024 + n``
==============  =====================================================  ==========================

``int8``/``int4`` are the blockwise absmax codes of :mod:`farsync.compress.quantize`; ``uint8_lookup`` is the
INTELLECT-1 scheme of :mod:`farsync.compress.intellect` (Jaghouar et al. 2024, arXiv 2412.01152).

fp16 overflow: a plain fp16 cast overflows to Inf above 65504, which a partial sum of large
pseudo-gradients can reach. The ``fp16`` codec therefore divides each block by its absmax (an fp32 scale
sent with it), so every fp16 value lies in [-1, 1]; nothing overflows and the relative precision is fp16's
2**-11 of the block's largest value. ``bf16`` has float32's range and needs no scale.

Float32 fields come first so that every field starts at a multiple of its element size. Messages are
blockwise for codecs with ``block_size > 1``: a ring cuts chunks on block boundaries, so quantizing a chunk
is the same as quantizing the whole vector, and re-encoding decoded values is exact up to rounding (the
absmax element of a block maps to the largest code again), which error feedback relies on.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F

from farsync.compress.intellect import uint8_lookup_decode, uint8_lookup_encode
from farsync.compress.quantize import dequantize_blockwise, quantize_blockwise, quantized_num_bytes

__all__ = [
    "CODEC_KINDS",
    "BlockwiseCodec",
    "Bf16Codec",
    "Fp32Codec",
    "ScaledHalfCodec",
    "Uint8LookupCodec",
    "WireCodec",
    "as_bytes",
    "from_bytes",
    "make_codec",
]

logger = logging.getLogger(__name__)

CODEC_KINDS = ("fp32", "int8", "int4", "fp16", "bf16", "uint8_lookup")
_SCALE_BYTES = 4
_NUM_LOOKUP_BINS = 256


def as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """The raw bytes of ``tensor`` as a flat ``uint8`` tensor (a view when already contiguous)."""
    return tensor.contiguous().reshape(-1).view(torch.uint8)


def from_bytes(message: torch.Tensor, start: int, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """``numel`` values of ``dtype`` read from ``message[start:]`` (copied, so any alignment works)."""
    size = numel * torch.empty(0, dtype=dtype).element_size()
    return message[start : start + size].clone().view(dtype)


class WireCodec(ABC):
    """Turns a float32 1-D tensor into one ``uint8`` message and back. Pure and deterministic."""

    name: str
    block_size: int = 1
    """Chunks of a ring are cut on multiples of this many values."""

    @abstractmethod
    def num_bytes(self, numel: int) -> int:
        """Bytes of the message for ``numel`` values (depends on nothing else)."""

    @abstractmethod
    def encode(self, values: torch.Tensor) -> torch.Tensor:
        """A flat ``uint8`` message of exactly ``num_bytes(values.numel())`` bytes."""

    @abstractmethod
    def decode(self, message: torch.Tensor, numel: int) -> torch.Tensor:
        """The float32 values of a message made by :meth:`encode` from ``numel`` values."""

    def round_trip(self, values: torch.Tensor) -> torch.Tensor:
        """What a receiver of ``values`` reconstructs."""
        return self.decode(self.encode(values), values.numel())


class Fp32Codec(WireCodec):
    """Uncompressed float32 (exact); the reference the compressed codecs are measured against."""

    name = "fp32"

    def num_bytes(self, numel: int) -> int:
        return 4 * numel

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        return as_bytes(values.detach().to(torch.float32, copy=True))

    def decode(self, message: torch.Tensor, numel: int) -> torch.Tensor:
        return from_bytes(message, 0, numel, torch.float32)


class BlockwiseCodec(WireCodec):
    """Blockwise absmax int8 or int4 codes with one float32 scale per block."""

    def __init__(self, bits: int, block_size: int = 64) -> None:
        quantized_num_bytes(0, bits, block_size)  # validates bits and block_size with a clear error
        self.bits, self.block_size = bits, block_size
        self.name = f"int{bits}"

    def num_bytes(self, numel: int) -> int:
        return quantized_num_bytes(numel, self.bits, self.block_size)

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        codes, scales = quantize_blockwise(values.reshape(-1), self.bits, self.block_size)
        return torch.cat([as_bytes(scales), as_bytes(codes)])

    def decode(self, message: torch.Tensor, numel: int) -> torch.Tensor:
        num_blocks = math.ceil(numel / self.block_size)
        scales = from_bytes(message, 0, num_blocks, torch.float32)
        codes = message[_SCALE_BYTES * num_blocks :]
        if self.bits == 8:
            codes = codes.view(torch.int8)
        return dequantize_blockwise(codes, scales, self.bits, self.block_size, numel)


class ScaledHalfCodec(WireCodec):
    """fp16 values divided by their block's absmax (sent as float32), so no value can overflow fp16."""

    name = "fp16"

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

    def decode(self, message: torch.Tensor, numel: int) -> torch.Tensor:
        num_blocks = math.ceil(numel / self.block_size)
        scales = from_bytes(message, 0, num_blocks, torch.float32)
        halves = from_bytes(message, _SCALE_BYTES * num_blocks, numel, torch.float16).to(torch.float32)
        return (self._blocks(halves) * scales[:, None]).reshape(-1)[:numel]


class Bf16Codec(WireCodec):
    """bfloat16 values: float32's range (no overflow), 8 significant bits."""

    name = "bf16"

    def num_bytes(self, numel: int) -> int:
        return 2 * numel

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        return as_bytes(values.detach().reshape(-1).to(torch.bfloat16))

    def decode(self, message: torch.Tensor, numel: int) -> torch.Tensor:
        return from_bytes(message, 0, numel, torch.bfloat16).to(torch.float32)


class Uint8LookupCodec(WireCodec):
    """INTELLECT-1's uint8 codes with a 256-entry float32 table of bin means, one table per message."""

    name = "uint8_lookup"

    def num_bytes(self, numel: int) -> int:
        return _SCALE_BYTES * _NUM_LOOKUP_BINS + numel

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        codes, table = uint8_lookup_encode(values)
        return torch.cat([as_bytes(table), codes])

    def decode(self, message: torch.Tensor, numel: int) -> torch.Tensor:
        table = from_bytes(message, 0, _NUM_LOOKUP_BINS, torch.float32)
        codes = message[_SCALE_BYTES * _NUM_LOOKUP_BINS : _SCALE_BYTES * _NUM_LOOKUP_BINS + numel]
        return uint8_lookup_decode(codes, table)


def make_codec(kind: str, block_size: int = 64) -> WireCodec:
    """The codec ``kind`` (one of :data:`CODEC_KINDS`); ``block_size`` applies to int8, int4 and fp16."""
    if kind == "fp32":
        return Fp32Codec()
    if kind in ("int8", "int4"):
        return BlockwiseCodec(int(kind[3:]), block_size)
    if kind == "fp16":
        return ScaledHalfCodec(block_size)
    if kind == "bf16":
        return Bf16Codec()
    if kind == "uint8_lookup":
        return Uint8LookupCodec()
    raise ValueError(f"codec kind={kind!r} is unknown; allowed: {', '.join(CODEC_KINDS)}")
