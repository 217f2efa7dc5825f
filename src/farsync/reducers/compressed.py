"""Compressed reducers: the weighted mean of the workers' updates with fewer bytes on the wire.

:func:`build_compressed_reducer` is what :func:`farsync.train.build.build_reducer` calls when
``compression.kind != "none"`` or ``compression.adaptive``. It replaces the fp32
:class:`~farsync.reducers.base.MeanReducer` (kept as ``inner`` so layer-walking helpers can see it):

===================  ==========================================================  =============================
``compression.kind`` reducer                                                     bytes a worker sends
===================  ==========================================================  =============================
int8, int4           :class:`RingReducer`: quantized ring all-reduce, fp32 sums  ``~2(n-1)/n x`` encoded size
fp16, bf16           :class:`RingReducer` with the block-scaled fp16 / bf16 codec ``~2(n-1)/n x`` encoded size
uint8_lookup, topk   :class:`GatherReducer`: all-gather of encoded messages      ``(n-1) x`` message
lowrank              :class:`LowRankReducer`: PowerSGD P/Q all-reduce, factors   ``~2(n-1)/n x`` P, Q, 1-D
                     at ``compression.bits`` (16: fp16, 8/4: blockwise)
sparseloco(_dct)     :class:`~farsync.reducers.sparseloco.SparseLoCoReducer`:    ``(n-1) x`` message
                     chunked top-k, 2-bit values, decaying error feedback
adaptive = true      :class:`~farsync.reducers.adaptive_lowrank.AdaptiveLowRankReducer` (DiLoCoX)
===================  ==========================================================  =============================

Every kind's encoding is :func:`farsync.compress.wire_codec` (its values' codec, or its factors' for
``lowrank``); a summable codec goes through the ring, the others through the all-gather. The robust
reducer (:mod:`farsync.reducers.robust`) puts the same codec on the wire for the same kind.

Weights: every reducer returns ``sum_i w_i u_i / sum_i w_i``; a worker with weight 0 is left out (it sends
zeros that count for nothing). In the ring the weights travel in one extra quantization block holding
``w_i`` alone (its code is exact up to rounding), or in a 4-byte fp32 all-reduce for codecs without blocks.
A worker whose update holds NaN or Inf is left out the same way, with a warning naming it.

fp16 sums can overflow (65504): the fp16 ring codec scales every block by its absmax, and the ring adds in
fp32, so no partial sum is ever cast to fp16 unscaled (see :mod:`farsync.compress.codecs`).

Error feedback (``compression.error_feedback``): each worker keeps a residual per parameter name
(:class:`~farsync.compress.residuals.Residuals`, in ``state_dict``). Ring reducers first round-trip the
corrected update through the wire codec, so the residual is exactly what this worker's own encoding lost (the
ring then re-encodes those values without further loss on the first hop; later hops re-encode partial sums,
whose error is shared and not fed back). Gather reducers keep ``corrected - decode(encode(corrected))``.
Low-rank reducers keep the projection residual (:mod:`farsync.collectives.lowrank_allreduce`).

All reducers leave every worker with bitwise-identical results, and report ``metrics()`` for
``metrics.jsonl``: ``compression_bits``, ``compression_rank`` (low-rank), ``compressed_bytes`` (this
worker's encoded message) and ``compression_bytes_sent`` (its wire bytes in the last reduce).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from farsync.collectives.lowrank_allreduce import LowRankAllReduce
from farsync.collectives.quantized_ring import quantized_ring_all_reduce
from farsync.comm.communicator import Communicator
from farsync.compress.codecs import Fp32Codec, WireCodec, as_bytes, from_bytes
from farsync.compress.kinds import wire_codec
from farsync.compress.residuals import Residuals
from farsync.config import CompressionConfig, ConfigError
from farsync.reducers.base import MeanReducer, Reducer, flatten, unflatten

__all__ = [
    "GatherReducer",
    "LowRankReducer",
    "RingReducer",
    "build_compressed_reducer",
    "left_out_if_not_finite",
]

logger = logging.getLogger(__name__)


def left_out_if_not_finite(
    named: dict[str, torch.Tensor], weight: float, rank: int
) -> tuple[dict[str, torch.Tensor], float]:
    """``(named, weight)``, or zeros with weight 0 and a warning naming ``rank`` if any value is NaN/Inf."""
    bad = [name for name, t in named.items() if not bool(torch.isfinite(t).all())]
    if not bad and math.isfinite(weight):
        return named, weight
    logger.warning("worker %d: update has NaN/Inf in %s; left out of this reduce", rank, ", ".join(bad[:3]))
    return {name: torch.zeros_like(t, dtype=torch.float32) for name, t in named.items()}, 0.0


class _CompressedReducer(Reducer):
    """Shared bookkeeping: the replaced inner reducer, the residuals and the metrics of the last reduce."""

    def __init__(self, comm: Communicator, inner: Reducer | None, error_feedback: bool) -> None:
        super().__init__(comm)
        self.inner = inner
        self.residuals: Residuals | None = Residuals() if error_feedback else None
        self._metrics: dict[str, Any] = {}
        self._sent_before = 0

    def _begin(self) -> None:
        self._sent_before = self.comm.ledger.bytes_sent(self.comm.channel)

    def _end(self, **values: Any) -> None:
        sent = self.comm.ledger.bytes_sent(self.comm.channel) - self._sent_before
        self._metrics = {**values, "compression_bytes_sent": sent}

    def _corrected(self, named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.residuals is None:
            return {name: t.detach().to(torch.float32) for name, t in named.items()}
        return self.residuals.corrected(named)

    def metrics(self) -> dict[str, Any]:
        """What the last reduce chose and sent (empty before the first)."""
        return dict(self._metrics)

    def state_dict(self) -> dict[str, object]:
        return {"residuals": self.residuals.state_dict() if self.residuals is not None else {}}

    def load_state_dict(self, state: dict[str, object]) -> None:
        if self.residuals is not None:
            residuals = state.get("residuals", {})
            self.residuals.load_state_dict(residuals if isinstance(residuals, dict) else {})


class RingReducer(_CompressedReducer):
    """Weighted mean through :func:`~farsync.collectives.quantized_ring.quantized_ring_all_reduce` with ``codec``."""

    def __init__(
        self,
        comm: Communicator,
        codec: WireCodec,
        *,
        inner: Reducer | None = None,
        error_feedback: bool = False,
        num_pieces: int = 4,
    ) -> None:
        super().__init__(comm, inner, error_feedback)
        self.codec, self.num_pieces = codec, num_pieces

    def reduce(self, named: dict[str, torch.Tensor], weight: float = 1.0) -> dict[str, torch.Tensor]:
        self._begin()
        named, weight = left_out_if_not_finite(named, weight, self.comm.rank)
        corrected = self._corrected(named)
        vector = flatten(corrected) if corrected else torch.zeros(0)
        sent = self.codec.round_trip(vector) if self.residuals is not None else vector
        if self.residuals is not None:
            self.residuals.keep_unsent(corrected, unflatten(sent, corrected) if weight > 0 else None)
        total, weight_sum = self._weighted_sum(sent, weight)
        mean = total / weight_sum if weight_sum > 0 else torch.zeros_like(total)
        self._end(compression_bits=self.codec.bits, compressed_bytes=self.codec.num_bytes(vector.numel()))
        return {name: t.clone() for name, t in unflatten(mean, named).items()}

    def _weighted_sum(self, values: torch.Tensor, weight: float) -> tuple[torch.Tensor, float]:
        block = self.codec.block_size
        if block > 1:
            # The weight gets a block of its own: its code is exact up to rounding and it cannot coarsen
            # the scale of any other value.
            padded = math.ceil(values.numel() / block) * block
            packed = values.new_zeros(padded + block)
            packed[: values.numel()] = values * weight
            packed[padded] = weight
            total = self._ring(packed)
            return total[: values.numel()], float(total[padded])
        weight_sum = self.comm.all_reduce(values.new_tensor([weight]), op="sum").wait()
        return self._ring(values * weight), float(weight_sum[0])

    def _ring(self, vector: torch.Tensor) -> torch.Tensor:
        return quantized_ring_all_reduce(
            self.comm, vector, codec=self.codec, op="sum", num_pieces=self.num_pieces
        )


class GatherReducer(_CompressedReducer):
    """Weighted mean by all-gathering every worker's encoded update, then decoding and averaging locally.

    For codecs whose messages cannot be summed on the way (``codec.summable`` false: the INTELLECT-1 lookup
    table, top-k indices). Message: ``weight`` float32, then every parameter's message in order. A tensor is
    sent as fp32 when that is no larger than its encoding (small tensors under ``uint8_lookup``'s table).
    """

    def __init__(
        self,
        comm: Communicator,
        codec: WireCodec,
        *,
        inner: Reducer | None = None,
        error_feedback: bool = False,
    ) -> None:
        super().__init__(comm, inner, error_feedback)
        self.codec = codec
        self._fp32 = Fp32Codec()

    def _codec_for(self, numel: int) -> WireCodec:
        return self._fp32 if self._fp32.num_bytes(numel) <= self.codec.num_bytes(numel) else self.codec

    def reduce(self, named: dict[str, torch.Tensor], weight: float = 1.0) -> dict[str, torch.Tensor]:
        self._begin()
        named, weight = left_out_if_not_finite(named, weight, self.comm.rank)
        corrected = self._corrected(named)
        encoded = {name: self._codec_for(t.numel()).encode(t) for name, t in corrected.items()}
        if self.residuals is not None:
            sent = {name: self._decode_one(encoded[name], t) for name, t in corrected.items()}
            self.residuals.keep_unsent(corrected, sent if weight > 0 else None)
        device = next(iter(corrected.values())).device if corrected else torch.device("cpu")
        weight_bytes = as_bytes(torch.tensor([weight], dtype=torch.float32, device=device))
        message = torch.cat([weight_bytes, *encoded.values()])
        gathered = self.comm.all_gather(message).wait()
        totals = {name: torch.zeros_like(t, dtype=torch.float32) for name, t in corrected.items()}
        weight_sum = 0.0
        for peer_message in gathered:  # rank order, the same on every worker
            peer_weight, decoded = self._decode(peer_message, corrected)
            weight_sum += peer_weight
            for name, value in decoded.items():
                totals[name] += peer_weight * value
        scale = 1.0 / weight_sum if weight_sum > 0 else 0.0
        self._end(compression_bits=self.codec.bits, compressed_bytes=message.numel())
        return {name: totals[name] * scale for name in named}

    def _decode_one(self, message: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self._codec_for(like.numel()).decode(message, like.numel()).reshape(like.shape)

    def _decode(
        self, message: torch.Tensor, like: dict[str, torch.Tensor]
    ) -> tuple[float, dict[str, torch.Tensor]]:
        weight = float(from_bytes(message, 0, 1, torch.float32)[0])
        offset, decoded = 4, {}
        for name, tensor in like.items():
            size = self._codec_for(tensor.numel()).num_bytes(tensor.numel())
            decoded[name] = self._decode_one(message[offset : offset + size], tensor)
            offset += size
        return weight, decoded


class LowRankReducer(_CompressedReducer):
    """Weighted mean through :class:`~farsync.collectives.lowrank_allreduce.LowRankAllReduce` at a fixed rank and bits."""

    def __init__(
        self,
        comm: Communicator,
        *,
        rank: int,
        bits: int,
        block_size: int = 64,
        inner: Reducer | None = None,
        error_feedback: bool = False,
        num_pieces: int = 4,
    ) -> None:
        super().__init__(comm, inner, error_feedback=False)
        self.engine = LowRankAllReduce(
            comm,
            rank=rank,
            bits=bits,
            block_size=block_size,
            error_feedback=error_feedback,
            num_pieces=num_pieces,
        )
        self.residuals = self.engine.residuals

    def reduce(self, named: dict[str, torch.Tensor], weight: float = 1.0) -> dict[str, torch.Tensor]:
        self._begin()
        named, weight = left_out_if_not_finite(named, weight, self.comm.rank)
        out = self.engine.reduce(named, weight)
        self._record()
        return out

    def _record(self, **extra: Any) -> None:
        last = self.engine.last
        assert last is not None
        self._end(
            compression_rank=last.rank,
            compression_bits=last.bits,
            compressed_bytes=last.message_bytes,
            **extra,
        )

    def state_dict(self) -> dict[str, object]:
        return {"lowrank": self.engine.state_dict()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        lowrank = state.get("lowrank", {})
        self.engine.load_state_dict(lowrank if isinstance(lowrank, dict) else {})


def build_compressed_reducer(
    compression: CompressionConfig, comm: Communicator, inner: Reducer | None = None
) -> Reducer:
    """The reducer for ``compression`` (see the module docstring) over ``comm``.

    ``inner`` is the fp32 reducer it replaces (default: a :class:`~farsync.reducers.base.MeanReducer`), kept so
    layer-walking helpers see it; ``kind = "none"`` without ``adaptive`` returns ``inner`` itself.
    """
    inner = inner if inner is not None else MeanReducer(comm)
    kind, ef = compression.kind, compression.error_feedback
    if compression.adaptive:
        if kind not in ("lowrank", "none"):
            raise ConfigError(
                "compression.adaptive",
                True,
                f"adapts low-rank rank and bits; needs compression.kind = 'lowrank' (got {kind!r})",
            )
        from farsync.reducers.adaptive_lowrank import AdaptiveLowRankReducer

        return AdaptiveLowRankReducer(comm, compression, inner=inner)
    if kind == "none":
        logger.info("compression.kind = 'none': nothing to compress, keeping %s", type(inner).__name__)
        return inner
    if kind in ("sparseloco", "sparseloco_dct"):
        from farsync.reducers.sparseloco import SparseLoCoReducer

        return SparseLoCoReducer(
            comm,
            fraction=compression.topk_fraction,
            chunk_size=compression.chunk_size,
            error_decay=compression.error_decay,
            transform="dct" if kind == "sparseloco_dct" else "none",
            inner=inner,
        )
    if kind == "lowrank":
        return LowRankReducer(
            comm,
            rank=compression.rank,
            bits=compression.bits,
            block_size=compression.block_size,
            inner=inner,
            error_feedback=ef,
        )
    codec = wire_codec(
        kind,
        bits=compression.bits,
        block_size=compression.block_size,
        topk_fraction=compression.topk_fraction,
    )
    if codec.summable:
        return RingReducer(comm, codec, inner=inner, error_feedback=ef)
    return GatherReducer(comm, codec, inner=inner, error_feedback=ef)
