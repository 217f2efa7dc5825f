"""Training algorithms: one module each, all behind :class:`~farsync.algorithms.base.Algorithm`."""

from farsync.algorithms.base import Algorithm, params_sha256
from farsync.algorithms.ddp import DDP
from farsync.algorithms.diloco import DiLoCo
from farsync.algorithms.fedavg import FedAvg
from farsync.algorithms.registry import ALGORITHMS, algorithm_class

__all__ = ["ALGORITHMS", "DDP", "Algorithm", "DiLoCo", "FedAvg", "algorithm_class", "params_sha256"]
