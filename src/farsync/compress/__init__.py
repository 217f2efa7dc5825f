"""Compression of pseudo-gradients: pure encode/decode, no network.

One stack, used by every collective that compresses:

* :mod:`~farsync.compress.codecs`: the one codec interface, :class:`WireCodec` (a float32 vector to one
  ``uint8`` message of exactly :meth:`~WireCodec.num_bytes` bytes and back), and a codec per value format;
* :mod:`~farsync.compress.lowrank`: PowerSGD's factors and the one low-rank message layout;
* :mod:`~farsync.compress.residuals`: the one error-feedback residual store;
* :mod:`~farsync.compress.adaptive`: the one link-aware planner of a round's mode, compression and H (DiLoCoX);
* :mod:`~farsync.compress.kinds`: the compression kinds and the codec each puts on the wire;
* :mod:`~farsync.compress.sparseloco` and :mod:`~farsync.compress.chunking`: SparseLoCo's per-tensor message
  (chunked top-k, optionally of DCT-II coefficients, 2-bit values, packed offsets).

The numeric kernels (blockwise quantization, the INTELLECT-1 lookup table, top-k counts) are exported
alongside.
"""

from farsync.compress.adaptive import (
    PlanInputs,
    PlannerPolicy,
    RoundPlan,
    energy_rank,
    energy_ranks,
    plan_round,
)
from farsync.compress.chunking import ChunkLayout, chunk_layout, dct_basis
from farsync.compress.codecs import (
    CODEC_KINDS,
    Bf16Codec,
    BlockwiseCodec,
    Fp32Codec,
    ScaledHalfCodec,
    TopKCodec,
    Uint8LookupCodec,
    WireCodec,
    as_bytes,
    from_bytes,
    make_codec,
)
from farsync.compress.intellect import uint8_lookup_decode, uint8_lookup_encode
from farsync.compress.kinds import KINDS, SPARSE_KINDS, sparse_codec, wire_codec
from farsync.compress.lowrank import (
    FACTOR_BITS,
    LowRankCodec,
    WarmStart,
    effective_rank,
    factor_codec,
    initial_q,
    lowrank_message_bytes,
    lowrank_sizes,
    matrix_view,
    orthogonalize,
)
from farsync.compress.quantize import (
    dequantize_blockwise,
    pack_int2,
    pack_int4,
    quantize_blockwise,
    quantized_num_bytes,
    unpack_int2,
    unpack_int4,
)
from farsync.compress.residuals import Residuals
from farsync.compress.sparseloco import SparseLoCoCodec, quantize_statistical
from farsync.compress.topk import topk_count

__all__ = [
    "CODEC_KINDS",
    "FACTOR_BITS",
    "KINDS",
    "SPARSE_KINDS",
    "Bf16Codec",
    "ChunkLayout",
    "BlockwiseCodec",
    "Fp32Codec",
    "LowRankCodec",
    "PlanInputs",
    "PlannerPolicy",
    "Residuals",
    "RoundPlan",
    "ScaledHalfCodec",
    "SparseLoCoCodec",
    "TopKCodec",
    "Uint8LookupCodec",
    "WarmStart",
    "WireCodec",
    "as_bytes",
    "chunk_layout",
    "dct_basis",
    "dequantize_blockwise",
    "effective_rank",
    "energy_rank",
    "energy_ranks",
    "factor_codec",
    "from_bytes",
    "initial_q",
    "lowrank_message_bytes",
    "lowrank_sizes",
    "make_codec",
    "matrix_view",
    "orthogonalize",
    "pack_int2",
    "pack_int4",
    "plan_round",
    "quantize_blockwise",
    "quantize_statistical",
    "quantized_num_bytes",
    "sparse_codec",
    "topk_count",
    "uint8_lookup_decode",
    "uint8_lookup_encode",
    "unpack_int2",
    "unpack_int4",
    "wire_codec",
]
