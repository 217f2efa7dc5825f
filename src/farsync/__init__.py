"""farsync: train one model across far-apart, poorly connected machines.

The public API: everything the CLI runs, reachable from Python without a run config. Wrap your own loop with
an algorithm, give it a communicator and, if you like, a reducer::

    import farsync
    comm = farsync.connect()                           # torchrun job, or world size 1
    reducer = farsync.make_reducer(comm, compression=farsync.CompressionConfig(kind="int8"))
    with farsync.diloco(model, optimizer, comm, num_inner_steps=50, overlap="eager", reducer=reducer):
        ...                                            # your loop, unchanged: optimizer.step() is hooked

* Algorithms: :func:`diloco` (one entry point with options: outer optimizer, H, ``overlap`` delayed/eager,
  Streaming ``num_fragments``, a reducer), :func:`dilocox` (the DiLoCoX preset), and the classes themselves:
  :class:`DDP`, :class:`DiLoCo`, :class:`OverlappedDiLoCo`, :class:`StreamingDiLoCo`, :class:`DiLoCoX`,
  :class:`FedAvg`, :class:`Gossip`.
* Reducers: :func:`make_reducer` composes compression, robust aggregation and privacy from their config
  sections; each layer also has its own builder (:func:`build_compressed_reducer`,
  :func:`build_robust_reducer`, :func:`build_private_reducer`) and class.
* Communication: :func:`connect`, :class:`Communicator`, :func:`make_group`, :func:`open_store`, the byte
  ledger, clock and link model.
* Whole runs: :func:`load_config` and the config sections; :class:`TrainingLoop` with :func:`build_algorithm`
  and :func:`build_reducer` (the CLI's own mapping of a run config to objects).
* RL post-training: :func:`run_rl` (``farsync rl``: GRPO with decoupled inference workers, a user's reward
  function ``(prompt, completion) -> float``) with :class:`RLConfig`; the pieces are in :mod:`farsync.rl`.
"""

from farsync.algorithms import (
    DDP,
    Algorithm,
    DiLoCo,
    DiLoCoX,
    FedAvg,
    Gossip,
    OverlappedDiLoCo,
    StreamingDiLoCo,
    algorithm_class,
    diloco,
    dilocox,
    params_sha256,
)
from farsync.comm import ByteLedger, Clock, Communicator, LinkModel, make_group, open_store
from farsync.comm.connect import connect
from farsync.config import (
    AggregationConfig,
    AlgorithmConfig,
    CompressionConfig,
    ConfigError,
    GossipConfig,
    NetworkConfig,
    PrivacyConfig,
    RLConfig,
    RunConfig,
    TrainConfig,
    load_config,
)
from farsync.reducers.adaptive_lowrank import AdaptiveLowRankReducer
from farsync.reducers.base import MeanReducer, Reducer
from farsync.reducers.compressed import GatherReducer, LowRankReducer, RingReducer, build_compressed_reducer
from farsync.reducers.private import PrivateReducer, build_private_reducer
from farsync.reducers.robust import RobustReducer, build_robust_reducer
from farsync.rl.runner import run_rl
from farsync.train import TrainingLoop, WorkerContext, WorkerResult
from farsync.train.build import build_algorithm, build_reducer, make_reducer

__all__ = [
    "DDP",
    "AdaptiveLowRankReducer",
    "AggregationConfig",
    "Algorithm",
    "AlgorithmConfig",
    "ByteLedger",
    "Clock",
    "Communicator",
    "CompressionConfig",
    "ConfigError",
    "DiLoCo",
    "DiLoCoX",
    "FedAvg",
    "GatherReducer",
    "Gossip",
    "GossipConfig",
    "LinkModel",
    "LowRankReducer",
    "MeanReducer",
    "NetworkConfig",
    "OverlappedDiLoCo",
    "PrivacyConfig",
    "RLConfig",
    "PrivateReducer",
    "Reducer",
    "RingReducer",
    "RobustReducer",
    "RunConfig",
    "StreamingDiLoCo",
    "TrainConfig",
    "TrainingLoop",
    "WorkerContext",
    "WorkerResult",
    "algorithm_class",
    "build_algorithm",
    "build_compressed_reducer",
    "build_private_reducer",
    "build_reducer",
    "build_robust_reducer",
    "connect",
    "diloco",
    "dilocox",
    "load_config",
    "make_group",
    "make_reducer",
    "open_store",
    "params_sha256",
    "run_rl",
]

__version__ = "0.1.0"
