"""farsync: train one model across far-apart, poorly connected machines.

The public API: wrap your own loop with an algorithm, get a communicator, configure runs.

    import farsync
    comm = farsync.connect()                      # torchrun job, or world size 1
    with farsync.DiLoCo(model, optimizer, comm, farsync.AlgorithmConfig(num_inner_steps=50)):
        ...                                       # your loop, unchanged: optimizer.step() is hooked
"""

from farsync.algorithms import DDP, Algorithm, DiLoCo, FedAvg, algorithm_class, params_sha256
from farsync.comm import ByteLedger, Clock, Communicator, LinkModel, make_group, open_store
from farsync.comm.connect import connect
from farsync.config import (
    AlgorithmConfig,
    CompressionConfig,
    ConfigError,
    NetworkConfig,
    RunConfig,
    load_config,
)
from farsync.reducers.base import MeanReducer, Reducer

__all__ = [
    "DDP",
    "Algorithm",
    "AlgorithmConfig",
    "ByteLedger",
    "Clock",
    "Communicator",
    "CompressionConfig",
    "ConfigError",
    "DiLoCo",
    "FedAvg",
    "LinkModel",
    "MeanReducer",
    "NetworkConfig",
    "Reducer",
    "RunConfig",
    "algorithm_class",
    "connect",
    "load_config",
    "make_group",
    "open_store",
    "params_sha256",
]

__version__ = "0.1.0"
