"""Algorithm names -> classes, imported lazily so each algorithm stays in its own module."""

from __future__ import annotations

import importlib
from typing import Any

from farsync.algorithms.base import Algorithm

__all__ = ["ALGORITHMS", "algorithm_class"]

ALGORITHMS: dict[str, str] = {
    "ddp": "farsync.algorithms.ddp:DDP",
    "diloco": "farsync.algorithms.diloco:DiLoCo",
    "fedavg": "farsync.algorithms.fedavg:FedAvg",
    "dilocox": "farsync.algorithms.dilocox:DiLoCoX",
    "streaming": "farsync.algorithms.streaming:StreamingDiLoCo",
    "gossip": "farsync.algorithms.gossip:Gossip",
}

# algorithm.delay = 1: the one-step-delay overlapped class of an algorithm that has one.
OVERLAPPED: dict[str, str] = {"diloco": "farsync.algorithms.overlap:OverlappedDiLoCo"}


def algorithm_class(name: str, delay: int = 0) -> type[Algorithm]:
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm.name = {name!r}: allowed: {', '.join(ALGORITHMS)}")
    target = OVERLAPPED.get(name, ALGORITHMS[name]) if delay else ALGORITHMS[name]
    module_name, class_name = target.split(":")
    cls: Any = getattr(importlib.import_module(module_name), class_name)
    return cls  # type: ignore[no-any-return]
