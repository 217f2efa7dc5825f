"""The gather path: every worker's own encoded message, all-gathered and decoded by every worker.

Some encodings cannot be summed on the way (top-k indices, the INTELLECT-1 lookup table, one worker's own
low-rank factors), and robust aggregation needs every worker's update separately. Then each worker sends
its whole message to every other (an all-gather: ``(n - 1)`` times the message per worker) and every worker
decodes all ``n`` messages itself, in rank order, so every worker computes the same result.

:func:`gather_messages` carries messages whose sizes may differ between workers (a faulty or malicious
worker's): the sizes are all-gathered first (8 bytes per worker) and every message is padded to the
largest. :func:`gather_shard_reduce` is the butterfly's contract (:func:`~farsync.collectives.butterfly.
butterfly_reduce`) over the gather path: every worker applies the owners' rule to every shard, so no second
collective is needed; a message that cannot be decoded counts as NaN, which the robust rules reject.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from farsync.collectives.butterfly import ShardLayout, ShardRule
from farsync.comm.communicator import Communicator

__all__ = ["gather_messages", "gather_shard_reduce"]

logger = logging.getLogger(__name__)


def gather_messages(comm: Communicator, message: torch.Tensor) -> list[torch.Tensor]:
    """Every worker's ``uint8`` ``message`` in rank order, each at its sender's own length."""
    if comm.world_size == 1:
        return [message]
    sizes = comm.all_gather(torch.tensor([message.numel()], dtype=torch.int64, device=message.device)).wait()
    lengths = [int(size[0]) for size in sizes]
    padded = message.new_zeros(max(lengths))
    padded[: message.numel()] = message
    gathered = comm.all_gather(padded).wait()
    return [raw[:length] for raw, length in zip(gathered, lengths, strict=True)]


def gather_shard_reduce(
    comm: Communicator,
    message: torch.Tensor,
    decode: Callable[[torch.Tensor], torch.Tensor],
    layout: ShardLayout,
    rule: ShardRule,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The reduced vector and every shard's side vector, like the butterfly, from all-gathered messages.

    ``decode(message)`` must return ``layout.numel`` float32 values or raise ``ValueError`` (then the
    sender's values are NaN for every shard).
    """
    if layout.num_shards != comm.world_size:
        raise ValueError(f"layout has {layout.num_shards} shards for a group of {comm.world_size}")
    vectors = []
    for sender, raw in enumerate(gather_messages(comm, message)):
        try:
            vectors.append(decode(raw).reshape(-1).to(torch.float32))
        except ValueError as error:
            logger.warning(
                "worker %d: message from worker %d cannot be decoded: %s", comm.rank, sender, error
            )
            vectors.append(torch.full((layout.numel,), float("nan"), device=message.device))
    per_sender = [layout.split(vector) for vector in vectors]
    shards, sides = [], []
    for shard in range(layout.num_shards):
        reduced, side = rule(torch.stack([split[shard] for split in per_sender]))
        shards.append(reduced)
        sides.append(side.detach().to(torch.float32))
    return layout.join(shards), sides
