"""Run a function on several ranks as threads, each with its own gloo group on one shared TCPStore.

This is how farsync's multi-rank tests run (fast, in one process); ``run_processes`` exists where realism
matters (separate interpreters, real kills).
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import torch.distributed as dist

from farsync.comm.groups import make_group, open_store

if TYPE_CHECKING:  # torch.distributed re-exports Store only at runtime
    from torch._C._distributed_c10d import Store

__all__ = ["run_ranks"]

T = TypeVar("T")


def run_ranks(
    fn: Callable[[int, int, dist.ProcessGroup | None, Store], T],
    world_size: int,
    *,
    prefix: str = "test",
    timeout_s: float = 60.0,
) -> list[T]:
    """Calls ``fn(rank, world_size, group, store)`` on ``world_size`` threads; returns results in rank order.

    The first exception from any rank is re-raised (with the rank named) after all threads finish.
    """
    master = open_store("127.0.0.1", 0, world_size, is_master=True, timeout_s=timeout_s)
    port = master.port
    results: list[Any] = [None] * world_size
    errors: list[tuple[int, BaseException, str]] = []

    def target(rank: int) -> None:
        try:
            store = master if rank == 0 else open_store("127.0.0.1", port, world_size, False, timeout_s)
            group = make_group(store, prefix, rank, world_size, timeout_s=timeout_s)
            results[rank] = fn(rank, world_size, group, store)
        except BaseException as error:  # noqa: BLE001 - reported below with the rank
            errors.append((rank, error, traceback.format_exc()))

    threads = [threading.Thread(target=target, args=(r,), daemon=True) for r in range(world_size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout_s * 2)
    if errors:
        rank, error, trace = errors[0]
        raise RuntimeError(f"rank {rank} failed: {error!r}\n{trace}") from error
    return results
