"""Building process groups explicitly, without ``init_process_group``.

A group is made from a store prefix, so the same TCPStore can host many groups over a run's life (one per
membership in elastic runs, one per stage or replica in pipelined runs).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:  # torch.distributed re-exports these only at runtime; the stubs live in torch._C
    from torch._C._distributed_c10d import Store, TCPStore

__all__ = ["backend_for", "host_store", "is_loopback", "make_group", "open_store"]


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA tensors, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def open_store(host: str, port: int, world_size: int, is_master: bool, timeout_s: float = 60.0) -> TCPStore:
    """Connects to (or hosts) the TCPStore that every group of the run is built on."""
    return dist.TCPStore(  # type: ignore[attr-defined]
        host,
        port,
        world_size,
        is_master,
        timeout=datetime.timedelta(seconds=timeout_s),
        wait_for_workers=False,
    )


def make_group(
    store: Store,
    prefix: str,
    rank: int,
    world_size: int,
    *,
    device: torch.device | None = None,
    timeout_s: float = 60.0,
) -> dist.ProcessGroup | None:
    """A new group of ``world_size`` members on ``store`` under ``prefix``; ``None`` at world size 1."""
    if world_size == 1:
        return None
    prefixed = dist.PrefixStore(prefix, store)  # type: ignore[attr-defined]
    timeout = datetime.timedelta(seconds=timeout_s)
    if device is not None and backend_for(device) == "nccl":
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        # The backends are used directly as groups (they implement the same collectives).
        return dist.ProcessGroupNCCL(prefixed, rank, world_size, options)  # type: ignore[return-value]
    if os.environ.get("GLOO_SOCKET_IFNAME") is None and os.environ.get("FARSYNC_LOOPBACK", "1") == "1":
        # Single-host runs: keep gloo on loopback so it never picks another interface.
        device_gloo = dist.ProcessGroupGloo.create_device(hostname="127.0.0.1")
        options = dist.ProcessGroupGloo._Options()  # type: ignore[attr-defined]
        options._devices = [device_gloo]
        options._timeout = timeout
        return dist.ProcessGroupGloo(prefixed, rank, world_size, options)  # type: ignore[return-value]
    return dist.ProcessGroupGloo(prefixed, rank, world_size, timeout)  # type: ignore[return-value]


def host_store(host: str, port: int, timeout_s: float = 60.0) -> TCPStore:
    """Hosts the run's TCPStore listening on ``host`` only (port 0: a free one).

    TCPStore's own server listens on every interface whatever host it is given, so the listening socket
    is bound here, on the named address, and handed to the store (which owns and closes it).
    """
    family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    listener = socket.socket(family, kind, protocol)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(1024)
        bound_port = int(listener.getsockname()[1])
    except OSError:
        listener.close()
        raise
    return dist.TCPStore(  # type: ignore[attr-defined]
        host,
        bound_port,
        1,
        True,
        timeout=datetime.timedelta(seconds=timeout_s),
        wait_for_workers=False,
        master_listen_fd=listener.detach(),
    )


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` resolves to is a loopback address (unresolvable: False)."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses)
