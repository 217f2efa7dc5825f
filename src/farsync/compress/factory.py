"""Build a compressor from a kind name and a few numbers, validating them once.

Kinds (``KINDS``):

* ``"none"``: :class:`Identity` (fp32).  ``"fp16"`` / ``"bf16"``: :class:`Cast`.
* ``"int8"`` / ``"int4"``: :class:`BlockQuantize` with ``block_size``.
* ``"uint8_lookup"``: :class:`Uint8Lookup` (INTELLECT-1).  ``"topk"``: :class:`TopK` with ``topk_fraction``.
* ``"lowrank"``: :class:`LowRank` with ``rank``, fp32 factors.
* ``"lowrank_int8"`` / ``"lowrank_int4"``: ``LowRank`` with its P and Q blockwise quantized.
* ``"lowrank_quantized"``: ``LowRank`` with factors at ``bits`` (16: fp16; 8, 4: blockwise). This is the
  kind a :class:`~farsync.compress.adaptive.CompressionPlan` maps to, and the only kind that reads ``bits``.

In every low-rank kind, tensors with ``ndim < 2`` are sent as fp32. ``error_feedback=True`` wraps the
result in :class:`ErrorFeedback`.
"""

from __future__ import annotations

import torch

from farsync.compress.base import Compressor, Identity
from farsync.compress.cast import Cast
from farsync.compress.compose import Chain
from farsync.compress.error_feedback import ErrorFeedback
from farsync.compress.intellect import Uint8Lookup
from farsync.compress.lowrank import LowRank
from farsync.compress.quantize import BlockQuantize
from farsync.compress.topk import TopK

__all__ = ["KINDS", "build_compressor"]

KINDS: tuple[str, ...] = (
    "none",
    "fp16",
    "bf16",
    "int8",
    "int4",
    "uint8_lookup",
    "topk",
    "lowrank",
    "lowrank_int8",
    "lowrank_int4",
    "lowrank_quantized",
)
_ALLOWED_BITS = (4, 8, 16)
_FACTOR_KEYS = ("p", "q")


def _validate(kind: str, bits: int, rank: int, topk_fraction: float, block_size: int) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is unknown; allowed: {', '.join(KINDS)}")
    if bits not in _ALLOWED_BITS:
        raise ValueError(f"bits={bits} is not allowed; allowed: {_ALLOWED_BITS}")
    if rank < 1:
        raise ValueError(f"rank={rank} is not allowed; must be an integer >= 1")
    if not 0.0 < topk_fraction <= 1.0:
        raise ValueError(f"topk_fraction={topk_fraction} is not allowed; must be in (0, 1]")
    if block_size < 1:
        raise ValueError(f"block_size={block_size} is not allowed; must be an integer >= 1")


def _lowrank_with_bits(rank: int, bits: int, block_size: int) -> Compressor:
    factor_codec: Compressor = Cast(torch.float16) if bits == 16 else BlockQuantize(bits, block_size)
    return Chain(LowRank(rank), factor_codec, only_keys=_FACTOR_KEYS)


def _build(kind: str, bits: int, rank: int, topk_fraction: float, block_size: int) -> Compressor:
    if kind == "none":
        return Identity()
    if kind in ("fp16", "bf16"):
        return Cast(torch.float16 if kind == "fp16" else torch.bfloat16)
    if kind in ("int8", "int4"):
        return BlockQuantize(int(kind[3:]), block_size)
    if kind == "uint8_lookup":
        return Uint8Lookup()
    if kind == "topk":
        return TopK(topk_fraction)
    if kind == "lowrank":
        return LowRank(rank)
    if kind in ("lowrank_int8", "lowrank_int4"):
        return _lowrank_with_bits(rank, int(kind[-1]), block_size)
    return _lowrank_with_bits(rank, bits, block_size)


def build_compressor(
    kind: str,
    *,
    bits: int = 8,
    rank: int = 4,
    topk_fraction: float = 0.01,
    block_size: int = 64,
    error_feedback: bool = False,
) -> Compressor:
    """Make the compressor ``kind`` (see module docstring); raises ``ValueError`` naming any bad argument.

    All arguments are validated whatever the kind, so a bad value in a config is caught even when the
    current kind does not read it.
    """
    _validate(kind, bits, rank, topk_fraction, block_size)
    compressor = _build(kind, bits, rank, topk_fraction, block_size)
    return ErrorFeedback(compressor) if error_feedback else compressor
