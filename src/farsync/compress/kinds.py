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
``sparseloco``     per tensor: chunked top-k offsets and 2-bit values with a 4-entry table
                   (:mod:`farsync.compress.sparseloco`; SparseLoCo, arXiv 2508.15706)
``sparseloco_dct`` the same over each chunk's DCT-II coefficients (DeMo's chunks, arXiv 2411.19870)
=================  ===========================================================================

The two sparse kinds are laid out per tensor (their chunks follow a tensor's shape), not over a flat
vector, so they have no :class:`~farsync.compress.codecs.WireCodec`: :func:`wire_codec` refuses them and
:func:`sparse_codec` builds theirs. They travel only by all-gather, never through a ring or the butterfly.

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
from farsync.compress.sparseloco import SparseLoCoCodec

__all__ = ["KINDS", "SPARSE_KINDS", "sparse_codec", "wire_codec"]

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

SPARSE_KINDS: dict[str, str] = {"sparseloco": "none", "sparseloco_dct": "dct"}
"""The per-tensor sparse kinds and the chunk transform of each."""

KINDS: tuple[str, ...] = (*_REGISTRY, *SPARSE_KINDS)
"""Every compression kind, in the config's order."""


def wire_codec(kind: str, *, bits: int = 8, block_size: int = 64, topk_fraction: float = 0.01) -> WireCodec:
    """The codec ``kind``'s values (``lowrank``: its factors, at ``bits``) travel in.

    Raises ``ValueError`` naming the kind, or the bad setting, and what is allowed.
    """
    build = _REGISTRY.get(kind)
    if kind in SPARSE_KINDS:
        raise ValueError(
            f"compression kind={kind!r} is laid out per tensor and has no flat-vector codec; use sparse_codec"
        )
    if build is None:
        raise ValueError(f"compression kind={kind!r} is unknown; allowed: {', '.join(KINDS)}")
    return build(bits, block_size, topk_fraction)


def sparse_codec(kind: str, *, topk_fraction: float = 0.01, chunk_size: int = 64) -> SparseLoCoCodec:
    """The per-tensor codec of a sparse kind (``sparseloco`` or ``sparseloco_dct``)."""
    transform = SPARSE_KINDS.get(kind)
    if transform is None:
        raise ValueError(f"compression kind={kind!r} is not sparse; sparse kinds: {', '.join(SPARSE_KINDS)}")
    return SparseLoCoCodec(topk_fraction, chunk_size, "dct" if transform == "dct" else "none")
