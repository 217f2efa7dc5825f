"""The compression kinds: what each ``compression.kind`` puts on the wire, in one registry.

=================  ===========================================================================
kind               what travels (see :mod:`farsync.compress.codecs` for each layout)
=================  ===========================================================================
``none``           fp32 values
``fp16``           block-scaled fp16 values (one fp32 scale per ``block_size`` values)
``bf16``           bfloat16 values
``int8``, ``int4`` blockwise absmax codes with one fp32 scale per ``block_size`` values
``uint8_lookup``   INTELLECT-1's uint8 codes and 256-entry table
``topk``           the ``topk_fraction`` largest magnitudes with their int32 indices
``lowrank``        PowerSGD P and Q factors at ``bits`` (16: block-scaled fp16; 8, 4: blockwise),
                   tensors with ``ndim < 2`` as fp32 (:mod:`farsync.compress.lowrank`)
=================  ===========================================================================

A kind means the same bytes whichever collective carries it (ring, butterfly or all-gather) and whether
or not robust aggregation is on: :func:`wire_codec` is the codec of a kind's values, or of its factors.

The list of kinds: ``farsync.config.COMPRESSION_KINDS`` is the list users see and the config validates
against; the config and this package are independent leaves and cannot import each other, so this registry
(:data:`KINDS`, its keys) is kept equal to it by a test, and :func:`wire_codec` rejects anything else.
"""

from __future__ import annotations

from collections.abc import Callable

from farsync.compress.codecs import WireCodec, make_codec
from farsync.compress.lowrank import factor_codec

__all__ = ["KINDS", "wire_codec"]

_Builder = Callable[[int, int, float], WireCodec]
"""``build(bits, block_size, topk_fraction) -> codec``."""

_REGISTRY: dict[str, _Builder] = {
    "none": lambda bits, block, fraction: make_codec("fp32"),
    "fp16": lambda bits, block, fraction: make_codec("fp16", block),
    "bf16": lambda bits, block, fraction: make_codec("bf16"),
    "int8": lambda bits, block, fraction: make_codec("int8", block),
    "int4": lambda bits, block, fraction: make_codec("int4", block),
    "uint8_lookup": lambda bits, block, fraction: make_codec("uint8_lookup"),
    "topk": lambda bits, block, fraction: make_codec("topk", topk_fraction=fraction),
    "lowrank": lambda bits, block, fraction: factor_codec(bits, block),
}

KINDS: tuple[str, ...] = tuple(_REGISTRY)
"""Every compression kind, in the config's order."""


def wire_codec(kind: str, *, bits: int = 8, block_size: int = 64, topk_fraction: float = 0.01) -> WireCodec:
    """The codec ``kind``'s values (``lowrank``: its factors, at ``bits``) travel in.

    Raises ``ValueError`` naming the kind, or the bad setting, and what is allowed.
    """
    build = _REGISTRY.get(kind)
    if build is None:
        raise ValueError(f"compression kind={kind!r} is unknown; allowed: {', '.join(KINDS)}")
    return build(bits, block_size, topk_fraction)
