"""``farsync.connect()``: a communicator for a user's own script, from torchrun's environment.

Under ``torchrun`` (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set) it joins the run's store and builds an
explicit gloo (CPU) or NCCL (CUDA) group; without those variables it returns a world-size-1 communicator,
so the same script runs alone on a laptop.
"""

from __future__ import annotations

import os

import torch

from farsync.comm.clock import Clock
from farsync.comm.communicator import Communicator
from farsync.comm.cost import LinkModel
from farsync.comm.groups import make_group, open_store
from farsync.config import parse_bandwidth, parse_duration

__all__ = ["connect"]


def connect(
    *,
    device: torch.device | None = None,
    bandwidth: str | float | None = None,
    latency: str | float = 0.0,
    emulation: str = "sleep",
    timeout_s: float = 300.0,
) -> Communicator:
    """Joins the torchrun job (or stands alone).

    ``bandwidth`` (bits/s, or a string such as "100Mbit") turns on link emulation with ``latency`` (seconds,
    or a string such as "20ms"); both are read by the config's parsers, so they accept what the config does.
    """
    link = None
    if bandwidth is not None:
        link = LinkModel(parse_bandwidth(bandwidth, "bandwidth"), parse_duration(latency, "latency"))
    clock = Clock(emulation if link is not None else "off")  # type: ignore[arg-type]
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Communicator(None, 0, 1, clock=clock, link=link)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = open_store(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size,
        is_master=rank == 0 and not agent_store,
        timeout_s=timeout_s,
    )
    group = make_group(store, "user", rank, world_size, device=device, timeout_s=timeout_s)
    return Communicator(group, rank, world_size, clock=clock, link=link)
