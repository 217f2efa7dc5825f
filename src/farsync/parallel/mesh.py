"""The replicas x stages grid of a pipelined run and the two process groups each worker belongs to.

DiLoCoX (Qi et al. 2025, arXiv 2506.21263) makes every DiLoCo replica a pipeline of ``S`` stages. With
``num_workers = R x S`` global rank ``r`` sits at replica ``r // S``, stage ``r % S``, and joins

* its replica's **pipeline group** (the S stages of one replica, a fast link inside a cluster): activations
  and activation gradients flow here;
* its stage's **sync group** (stage ``s`` of every replica, the slow link between clusters): the outer
  DiLoCo step of stage ``s``'s layers is averaged here, and nowhere else.

Both groups are built explicitly with :func:`farsync.comm.groups.make_group` on prefixes of the run's
store, never through the default group, so the same code runs as threads (tests, benchmarks) or processes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from farsync.comm.cost import LinkModel
from farsync.comm.groups import make_group
from farsync.config import NetworkConfig

if TYPE_CHECKING:  # torch.distributed re-exports Store only at runtime; the stub lives in torch._C
    from torch._C._distributed_c10d import Store

__all__ = ["Mesh", "MeshGroups", "build_mesh_groups", "intra_link"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mesh:
    """A grid of ``num_replicas`` DiLoCo replicas, each a pipeline of ``num_stages`` stages."""

    num_replicas: int
    """R: replicas that synchronise with each other over the slow link."""
    num_stages: int
    """S: pipeline stages inside one replica."""

    @classmethod
    def for_world(cls, world_size: int, num_stages: int) -> Mesh:
        """The grid for ``world_size`` workers in pipelines of ``num_stages``; a ValueError names the mismatch."""
        if num_stages < 1 or world_size % num_stages != 0:
            raise ValueError(
                f"num_workers = {world_size}: must be a multiple of parallel.num_stages ({num_stages})"
            )
        return cls(num_replicas=world_size // num_stages, num_stages=num_stages)

    @property
    def world_size(self) -> int:
        return self.num_replicas * self.num_stages

    def coordinate(self, rank: int) -> tuple[int, int]:
        """``(replica, stage)`` of global ``rank``."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside the grid of {self.world_size} workers")
        return divmod(rank, self.num_stages)

    def rank_of(self, replica: int, stage: int) -> int:
        return replica * self.num_stages + stage

    def pipeline_members(self, replica: int) -> list[int]:
        """Global ranks of ``replica``'s stages, in stage order."""
        return [self.rank_of(replica, stage) for stage in range(self.num_stages)]

    def sync_members(self, stage: int) -> list[int]:
        """Global ranks holding ``stage`` in every replica, in replica order."""
        return [self.rank_of(replica, stage) for replica in range(self.num_replicas)]


@dataclass
class MeshGroups:
    """One worker's two groups (``None`` where the group has a single member)."""

    pipeline: dist.ProcessGroup | None
    """The replica's stages; this worker's rank in it is its stage index."""
    sync: dist.ProcessGroup | None
    """The same stage in every replica; this worker's rank in it is its replica index."""


def build_mesh_groups(
    store: Store,
    prefix: str,
    mesh: Mesh,
    rank: int,
    *,
    device: torch.device | None = None,
    timeout_s: float = 60.0,
) -> MeshGroups:
    """Builds ``rank``'s pipeline group, then its sync group.

    Every worker builds its pipeline group first: a group's constructor waits for all its members, and with
    the same order everywhere no worker waits on a group whose members are still waiting on another one.
    """
    replica, stage = mesh.coordinate(rank)
    pipeline = make_group(
        store,
        f"{prefix}/pipeline/replica{replica}",
        stage,
        mesh.num_stages,
        device=device,
        timeout_s=timeout_s,
    )
    sync = make_group(
        store, f"{prefix}/sync/stage{stage}", replica, mesh.num_replicas, device=device, timeout_s=timeout_s
    )
    logger.debug("rank %d: replica %d, stage %d: groups built", rank, replica, stage)
    return MeshGroups(pipeline=pipeline, sync=sync)


def intra_link(network: NetworkConfig) -> LinkModel | None:
    """The link inside a replica (``network.intra_bandwidth``, no added latency); ``None`` when emulation is off."""
    if network.emulation == "off":
        return None
    return LinkModel(bandwidth_bps=network.intra_bandwidth)
