"""The butterfly shard exchange of BTARD: scatter shards all-to-all, reduce each shard where it lands,
all-gather the reduced shards.

BTARD (Gorbunov et al. 2021, "Secure Distributed Training at Scale", arXiv 2106.11257, Section 3) makes
robust aggregation serverless: the flat update of ``d`` values is cut into ``n`` shards, worker ``j`` owns
shard ``j``, every worker sends its shard ``j`` to worker ``j`` (one all-to-all), each owner combines the
``n`` versions of its shard with any rule it likes, and the combined shards are all-gathered. Each worker
sends ``(n-1)/n * S`` bytes in each of the two collectives, so about ``2 S`` whatever ``n``: the same as a
ring all-reduce, but every value passes through one owner that sees all ``n`` versions of it.

This module owns the mechanics only (shard layout, wire encoding, the two collectives); what an owner does
with its stack of shards is the caller's function. Shards travel as raw bytes so that any compressor's
payload (several tensors of mixed dtypes) fits in one collective; see :class:`WireCodec`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from farsync.comm.communicator import Communicator
from farsync.compress.base import Compressor, Encoded, Identity

__all__ = ["ShardLayout", "WireCodec", "butterfly_reduce"]

logger = logging.getLogger(__name__)

ShardRule = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""An owner's rule: the ``[n, shard_size]`` stack of its shard from every sender (row = sender rank) ->
the reduced shard ``[shard_size]`` and a float32 side vector (same length on every worker) that is
all-gathered with it, e.g. the owner's per-sender verdicts."""


@dataclass(frozen=True)
class ShardLayout:
    """How a flat vector of ``numel`` values is cut into ``num_shards`` equal shards (zero-padded at the end).

    Equal shards keep every all-to-all chunk the same size; the zero padding is identical on every worker,
    so every rule in :mod:`farsync.aggregate` maps it to zero and it never changes the result.
    """

    numel: int
    num_shards: int

    @property
    def shard_size(self) -> int:
        return max(1, math.ceil(self.numel / self.num_shards))

    def split(self, vector: torch.Tensor) -> list[torch.Tensor]:
        """``vector`` (``numel`` values) as ``num_shards`` shards of ``shard_size``."""
        if vector.numel() != self.numel:
            raise ValueError(f"vector has {vector.numel()} values, layout expects {self.numel}")
        padded = vector.new_zeros(self.shard_size * self.num_shards)
        padded[: self.numel] = vector.reshape(-1)
        size = self.shard_size
        return [padded[j * size : (j + 1) * size] for j in range(self.num_shards)]

    def join(self, shards: list[torch.Tensor]) -> torch.Tensor:
        """The inverse of :meth:`split`: concatenate and drop the padding."""
        return torch.cat([s.reshape(-1) for s in shards])[: self.numel]


def _as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    flat = tensor.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8) if flat.dtype != torch.bool else flat.to(torch.uint8)


def _from_bytes(raw: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if like.dtype == torch.bool:
        return raw.to(torch.bool).reshape(like.shape)
    return raw.view(like.dtype).reshape(like.shape)


class WireCodec:
    """Encodes a shard with a :class:`~farsync.compress.base.Compressor` and packs the payload into bytes.

    Every compressor in :mod:`farsync.compress` produces payloads whose shapes depend only on the input's
    shape and the settings, so a receiver decodes a peer's bytes with the layout of its own encoding of a
    shard of the same shape (the ``template``). The byte ledger therefore counts exactly the compressed
    payload. With :class:`~farsync.compress.base.Identity` (the default) a shard travels as plain fp32.
    """

    def __init__(self, compressor: Compressor | None = None) -> None:
        self.compressor = compressor if compressor is not None else Identity()

    def encode(self, name: str, shard: torch.Tensor) -> tuple[torch.Tensor, Encoded]:
        """The shard's bytes on the wire and its :class:`Encoded` (the template for decoding peers)."""
        encoded = self.compressor.encode(name, shard)
        raw = (
            torch.cat([_as_bytes(t) for t in encoded.payload.values()])
            if encoded.payload
            else torch.empty(0, dtype=torch.uint8)
        )
        return raw, encoded

    def decode(self, raw: torch.Tensor, template: Encoded) -> torch.Tensor:
        """A peer's shard from its bytes, laid out like ``template``; float32."""
        payload: dict[str, torch.Tensor] = {}
        offset = 0
        for key, like in template.payload.items():
            size = like.numel() * like.element_size() if like.dtype != torch.bool else like.numel()
            payload[key] = _from_bytes(raw[offset : offset + size].clone(), like)
            offset += size
        if offset != raw.numel():
            raise ValueError(f"received {raw.numel()} bytes, the shard layout needs {offset}")
        return self.compressor.decode(dataclasses.replace(template, payload=payload)).reshape(-1).float()


def butterfly_reduce(
    comm: Communicator,
    vector: torch.Tensor,
    layout: ShardLayout,
    rule: ShardRule,
    *,
    codec: WireCodec | None = None,
    gather_codec: WireCodec | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One butterfly round over ``comm``'s group; returns the reduced vector and every owner's side vector.

    ``vector`` must follow ``layout`` (``layout.num_shards == comm.world_size``). ``codec`` encodes what goes
    into the all-to-all, ``gather_codec`` the reduced shards (both default to fp32). The owners' side
    vectors travel uncompressed as fp32 next to their shards. At world size 1 the rule still runs (on a
    stack of one) and nothing is sent.
    """
    if layout.num_shards != comm.world_size:
        raise ValueError(f"layout has {layout.num_shards} shards for a group of {comm.world_size}")
    codec = codec if codec is not None else WireCodec()
    gather_codec = gather_codec if gather_codec is not None else codec
    rank, n = comm.rank, comm.world_size
    encoded = [codec.encode(f"shard{j}", shard) for j, shard in enumerate(layout.split(vector))]
    received = comm.all_to_all([raw for raw, _ in encoded]).wait()
    template = encoded[rank][1]
    stack = torch.stack([codec.decode(raw, template) for raw in received])
    reduced, side = rule(stack)
    reduced_raw, reduced_template = gather_codec.encode("reduced", reduced)
    side_raw = _as_bytes(side.detach().float())
    packets = comm.all_gather(torch.cat([reduced_raw, side_raw])).wait()
    shards, sides = [], []
    for packet in packets:
        shards.append(gather_codec.decode(packet[: reduced_raw.numel()], reduced_template))
        sides.append(packet[reduced_raw.numel() :].clone().view(torch.float32))
    logger.debug("butterfly: %d shards of %d values over %d workers", n, layout.shard_size, n)
    return layout.join(shards), sides
