"""The butterfly shard exchange of BTARD: scatter shards all-to-all, reduce each shard where it lands,
all-gather the reduced shards.

BTARD (Gorbunov et al. 2021, "Secure Distributed Training at Scale", arXiv 2106.11257, Section 3) makes
robust aggregation serverless: the flat update of ``d`` values is cut into ``n`` shards, worker ``j`` owns
shard ``j``, every worker sends its shard ``j`` to worker ``j`` (one all-to-all), each owner combines the
``n`` versions of its shard with any rule it likes, and the combined shards are all-gathered. Each worker
sends ``(n-1)/n * S`` bytes in each of the two collectives, so about ``2 S`` whatever ``n``: the same as a
ring all-reduce, but every value passes through one owner that sees all ``n`` versions of it.

This module owns the mechanics only (shard layout, the two collectives); what an owner does with its stack
of shards is the caller's function. Each shard travels as one message of a
:class:`~farsync.compress.codecs.WireCodec` (the same codec a ring would use for the same kind), whose size
depends only on the shard's length, so every all-to-all chunk has the same size.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from farsync.comm.communicator import Communicator
from farsync.compress.codecs import Fp32Codec, WireCodec, as_bytes, from_bytes

__all__ = ["ShardLayout", "ShardRule", "butterfly_reduce"]

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
    codec = codec if codec is not None else Fp32Codec()
    gather_codec = gather_codec if gather_codec is not None else codec
    n, size = comm.world_size, layout.shard_size
    received = comm.all_to_all([codec.encode(shard) for shard in layout.split(vector)]).wait()
    stack = torch.stack([codec.decode(raw, size) for raw in received])
    reduced, side = rule(stack)
    reduced_raw = gather_codec.encode(reduced)
    side_raw = as_bytes(side.detach().float())
    packets = comm.all_gather(torch.cat([reduced_raw, side_raw])).wait()
    shards, sides = [], []
    for packet in packets:
        shards.append(gather_codec.decode(packet[: reduced_raw.numel()], size))
        sides.append(from_bytes(packet, reduced_raw.numel(), side.numel(), torch.float32))
    logger.debug("butterfly: %d shards of %d values over %d workers", n, size, n)
    return layout.join(shards), sides
