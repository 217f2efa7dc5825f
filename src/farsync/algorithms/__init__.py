"""Training algorithms: one module each, all behind :class:`~farsync.algorithms.base.Algorithm`.

:mod:`~farsync.algorithms.presets` gives the DiLoCo family one entry point with options (:func:`diloco`) and
the DiLoCoX preset (:func:`dilocox`); the classes themselves take explicit arguments or their config section.
"""

from farsync.algorithms.base import Algorithm, params_sha256
from farsync.algorithms.ddp import DDP
from farsync.algorithms.diloco import DiLoCo
from farsync.algorithms.dilocox import DiLoCoX
from farsync.algorithms.fedavg import FedAvg
from farsync.algorithms.gossip import Gossip
from farsync.algorithms.overlap import OverlappedDiLoCo
from farsync.algorithms.presets import diloco, dilocox
from farsync.algorithms.registry import ALGORITHMS, algorithm_class
from farsync.algorithms.streaming import StreamingDiLoCo

__all__ = [
    "ALGORITHMS",
    "DDP",
    "Algorithm",
    "DiLoCo",
    "DiLoCoX",
    "FedAvg",
    "Gossip",
    "OverlappedDiLoCo",
    "StreamingDiLoCo",
    "algorithm_class",
    "diloco",
    "dilocox",
    "params_sha256",
]
