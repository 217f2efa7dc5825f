"""Pseudo-gradient compressors: pure encode/decode, no network.

Every compressor implements :class:`Compressor` (``encode(name, tensor) -> Encoded``, ``decode(encoded)``).
Cross-cutting behaviour is a wrapper (:class:`ErrorFeedback`) or a composition (:class:`Chain`); pure
functions used by the collectives in ``comm/`` are exported alongside.
"""

from farsync.compress.adaptive import CompressionPlan, energy_rank, estimate_lowrank_bytes, plan_compression
from farsync.compress.base import Compressor, Encoded, Identity
from farsync.compress.cast import Cast
from farsync.compress.compose import Chain
from farsync.compress.error_feedback import ErrorFeedback
from farsync.compress.factory import KINDS, build_compressor
from farsync.compress.intellect import Uint8Lookup, uint8_lookup_decode, uint8_lookup_encode
from farsync.compress.lowrank import LowRank, effective_rank, initial_q, matrix_view, orthogonalize
from farsync.compress.quantize import (
    BlockQuantize,
    dequantize_blockwise,
    pack_int4,
    quantize_blockwise,
    quantized_num_bytes,
    unpack_int4,
)
from farsync.compress.topk import TopK, topk_count

__all__ = [
    "KINDS",
    "BlockQuantize",
    "Cast",
    "Chain",
    "CompressionPlan",
    "Compressor",
    "Encoded",
    "ErrorFeedback",
    "Identity",
    "LowRank",
    "TopK",
    "Uint8Lookup",
    "build_compressor",
    "dequantize_blockwise",
    "effective_rank",
    "energy_rank",
    "estimate_lowrank_bytes",
    "initial_q",
    "matrix_view",
    "orthogonalize",
    "pack_int4",
    "plan_compression",
    "quantize_blockwise",
    "quantized_num_bytes",
    "topk_count",
    "uint8_lookup_decode",
    "uint8_lookup_encode",
    "unpack_int4",
]
