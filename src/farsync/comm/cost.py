"""The wire model: how many bytes each collective puts on a worker's link, and how long that takes.

Every collective in farsync is charged as the bandwidth-optimal algorithm a real slow-link deployment would
use (Patarasuk and Yuan 2009, "Bandwidth optimal all-reduce algorithms for clusters of workstations"):

=================  =================================  ===============================================
collective         bytes a worker sends               time on a link of rate ``b`` and latency ``l``
=================  =================================  ===============================================
all-reduce (ring)  ``2 (n-1)/n * S``                  ``2 (n-1) * (l + S / (n b))``
all-gather (ring)  ``(n-1) * s`` (s = own part)       ``(n-1) * (l + s / b)``
reduce-scatter     ``(n-1)/n * S``                    ``(n-1) * (l + S / (n b))``
all-to-all         ``(n-1)/n * S``                    ``(n-1) * (l + S / (n b))``
broadcast (pipe)   ``S`` (root), ``S`` (forwarders)   ``l * (n-1) + S / b``
send / recv        ``S``                              ``l + S / b``
=================  =================================  ===============================================

``S`` is the payload in bytes, ``n`` the group size and ``b`` in bytes per second. Each worker sends and
receives on its own full-duplex link; a collective moves at the pace of its slowest member, so the group's
rate is the minimum of its members' rates and its latency the maximum. At ``n = 1`` nothing is sent and the
time is zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Collective", "LinkModel", "wire_bytes", "wire_time"]


class Collective(StrEnum):
    ALL_REDUCE = "all_reduce"
    ALL_GATHER = "all_gather"
    REDUCE_SCATTER = "reduce_scatter"
    ALL_TO_ALL = "all_to_all"
    BROADCAST = "broadcast"
    SEND = "send"
    RECV = "recv"


@dataclass(frozen=True)
class LinkModel:
    """A worker's link: rate in bits per second and one-way latency in seconds."""

    bandwidth_bps: float
    latency_s: float = 0.0

    @property
    def bytes_per_s(self) -> float:
        return self.bandwidth_bps / 8.0


def wire_bytes(collective: Collective, payload_bytes: int, group_size: int) -> int:
    """Bytes one worker sends for ``collective`` over a payload of ``payload_bytes`` (see the table above).

    For all-gather the payload is the worker's own part; for the others it is the full tensor.
    """
    n = group_size
    if n <= 1:
        return 0
    if collective is Collective.ALL_REDUCE:
        return (2 * (n - 1) * payload_bytes) // n
    if collective is Collective.ALL_GATHER:
        return (n - 1) * payload_bytes
    if collective in (Collective.REDUCE_SCATTER, Collective.ALL_TO_ALL):
        return ((n - 1) * payload_bytes) // n
    if collective is Collective.RECV:
        return 0
    return payload_bytes  # broadcast (root or forwarder) and send


def wire_time(collective: Collective, payload_bytes: int, group_size: int, link: LinkModel) -> float:
    """Seconds ``collective`` takes on ``link`` (see the table above)."""
    n = group_size
    if n <= 1:
        return 0.0
    rate, latency = link.bytes_per_s, link.latency_s
    if collective is Collective.ALL_REDUCE:
        return 2 * (n - 1) * (latency + payload_bytes / (n * rate))
    if collective is Collective.ALL_GATHER:
        return (n - 1) * (latency + payload_bytes / rate)
    if collective in (Collective.REDUCE_SCATTER, Collective.ALL_TO_ALL):
        return (n - 1) * (latency + payload_bytes / (n * rate))
    if collective is Collective.BROADCAST:
        return latency * (n - 1) + payload_bytes / rate
    return latency + payload_bytes / rate  # send / recv
