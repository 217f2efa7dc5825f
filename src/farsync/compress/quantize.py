"""Blockwise absmax quantization to signed 8-, 4- or 2-bit integers.

The flattened tensor is cut into blocks of ``block_size`` values (the last block is zero-padded). Each block
gets ``scale = absmax / (2**(bits-1) - 1)`` and each value becomes ``round(x / scale)``, a symmetric signed
integer in ``[-qmax, qmax]``; so the reconstruction error of every element is at most ``scale / 2``.
The scheme follows the block-wise quantization of Dettmers et al. 2022, "8-bit Optimizers via Block-wise
Quantization" (arXiv 2110.02861), with a uniform rather than dynamic code book.

Wire format for ``n`` values and ``b = ceil(n / block_size)`` blocks:

* 8 bits: ``codes`` int8[n], ``scales`` float32[b]  ->  n + 4b bytes.
* 4 bits: ``codes`` uint8[ceil(n / 2)] holding two values per byte (element 2i in the low nibble, 2i+1 in
  the high nibble, each stored as ``value + 8``), ``scales`` float32[b]  ->  ceil(n / 2) + 4b bytes.
* 2 bits: ``codes`` uint8[ceil(n / 4)] holding four values per byte (element 4i + j in bits 2j..2j+1, each
  stored as ``value + 1``; ``qmax = 1``, so the codes are the ternary -1, 0, +1 times the block's absmax),
  ``scales`` float32[b]  ->  ceil(n / 4) + 4b bytes.

Scales are float32, not float16: pseudo-gradients can be small enough (absmax below ~1e-5) that an fp16
scale would underflow and zero a whole block, and fp32 scales keep the ``scale / 2`` bound exact.

The pure functions :func:`quantize_blockwise` and :func:`dequantize_blockwise` work on 1-D chunks so that a
ring all-reduce can requantize each chunk it forwards.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "dequantize_blockwise",
    "pack_int2",
    "pack_int4",
    "quantize_blockwise",
    "quantized_num_bytes",
    "unpack_int2",
    "unpack_int4",
]

_ALLOWED_BITS = (2, 4, 8)
_SCALE_BYTES = 4
_INT4_OFFSET = 8
_INT2_OFFSET = 1


def _check(bits: int, block_size: int) -> None:
    if bits not in _ALLOWED_BITS:
        raise ValueError(f"bits={bits} is not supported; allowed: {_ALLOWED_BITS}")
    if block_size < 1:
        raise ValueError(f"block_size={block_size} must be >= 1")


def _qmax(bits: int) -> int:
    return int(2 ** (bits - 1) - 1)


def quantized_num_bytes(numel: int, bits: int, block_size: int) -> int:
    """Bytes on the wire for ``numel`` values: codes plus one float32 scale per block."""
    _check(bits, block_size)
    num_blocks = math.ceil(numel / block_size)
    code_bytes = numel if bits == 8 else math.ceil(numel * bits / 8)
    return code_bytes + _SCALE_BYTES * num_blocks


def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """Pack int8 values in ``[-8, 7]`` two per uint8 byte (first value in the low nibble)."""
    nibbles = (values.to(torch.int16) + _INT4_OFFSET).to(torch.uint8)
    if nibbles.numel() % 2:
        nibbles = F.pad(nibbles, (0, 1), value=_INT4_OFFSET)
    pairs = nibbles.view(-1, 2)
    return pairs[:, 0] | (pairs[:, 1] << 4)


def unpack_int4(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: ``numel`` int8 values."""
    low = packed & 0x0F
    high = packed >> 4
    nibbles = torch.stack([low, high], dim=1).reshape(-1)[:numel]
    return (nibbles.to(torch.int16) - _INT4_OFFSET).to(torch.int8)


def pack_int2(values: torch.Tensor) -> torch.Tensor:
    """Pack int8 values in ``[-1, 1]`` four per uint8 byte (first value in the lowest two bits)."""
    codes = (values.to(torch.int16) + _INT2_OFFSET).to(torch.uint8)
    if codes.numel() % 4:
        codes = F.pad(codes, (0, 4 - codes.numel() % 4), value=_INT2_OFFSET)
    quads = codes.view(-1, 4)
    return quads[:, 0] | (quads[:, 1] << 2) | (quads[:, 2] << 4) | (quads[:, 3] << 6)


def unpack_int2(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_int2`: ``numel`` int8 values."""
    codes = torch.stack([(packed >> shift) & 0x03 for shift in (0, 2, 4, 6)], dim=1).reshape(-1)[:numel]
    return (codes.to(torch.int16) - _INT2_OFFSET).to(torch.int8)


def quantize_blockwise(x: torch.Tensor, bits: int, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a 1-D tensor; returns ``(codes, scales)`` in the wire format of the module docstring.

    An all-zero block gets scale 0 and codes 0. Non-finite inputs are not checked: they make their block NaN.
    """
    _check(bits, block_size)
    if x.ndim != 1:
        raise ValueError(f"x must be 1-D, got shape {tuple(x.shape)}")
    values = x.detach().to(torch.float32)
    numel = values.numel()
    num_blocks = math.ceil(numel / block_size)
    blocks = F.pad(values, (0, num_blocks * block_size - numel)).view(num_blocks, block_size)
    qmax = _qmax(bits)
    scales = blocks.abs().amax(dim=1) / qmax if num_blocks else values.new_zeros(0)
    # Dividing by 1 where the block is all zeros gives code 0 without a 0/0.
    safe_scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    codes = torch.round(blocks / safe_scales[:, None]).clamp_(-qmax, qmax).to(torch.int8)
    codes = codes.reshape(-1)[:numel]
    if bits == 4:
        return pack_int4(codes), scales
    if bits == 2:
        return pack_int2(codes), scales
    return codes.contiguous(), scales


def dequantize_blockwise(
    codes: torch.Tensor, scales: torch.Tensor, bits: int, block_size: int, numel: int
) -> torch.Tensor:
    """Reconstruct ``numel`` float32 values from :func:`quantize_blockwise` output."""
    _check(bits, block_size)
    if bits == 8:
        integers = codes[:numel]
    else:
        integers = unpack_int4(codes, numel) if bits == 4 else unpack_int2(codes, numel)
    num_blocks = scales.numel()
    padded = F.pad(integers.to(torch.float32), (0, num_blocks * block_size - numel))
    values = padded.view(num_blocks, block_size) * scales.to(torch.float32)[:, None]
    return values.reshape(-1)[:numel]
