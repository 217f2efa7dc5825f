"""Wiring: the one place that turns a run config into a reducer, an algorithm and a link model.

Reducers: :func:`make_reducer` composes the reducer chain from the sections it needs (compression,
aggregation, privacy); :func:`build_reducer` is the same for a whole run plus the runner's wrappers.
Algorithms: every ``algorithm.name`` has one small builder in :data:`ALGORITHM_BUILDERS` that calls the
class with exactly the arguments it takes, read from the sections it needs (H and the outer optimizer from
``algorithm``, DDP's and gossip's record period from ``train.report_every``, DiLoCoX's compression from
``compression``). A new algorithm adds one builder here; nothing inspects constructor signatures.

From Python, without a run config, the same objects come from the classes and the presets
(:func:`farsync.diloco`, :func:`farsync.dilocox`) and from :func:`make_reducer`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from farsync.algorithms.base import Algorithm
from farsync.algorithms.ddp import DDP
from farsync.algorithms.diloco import DiLoCo
from farsync.algorithms.dilocox import DiLoCoX
from farsync.algorithms.fedavg import FedAvg
from farsync.algorithms.gossip import Gossip
from farsync.algorithms.overlap import OverlappedDiLoCo
from farsync.algorithms.streaming import StreamingDiLoCo
from farsync.comm.communicator import Communicator
from farsync.comm.cost import LinkModel
from farsync.config import (
    AggregationConfig,
    AlgorithmConfig,
    CompressionConfig,
    ConfigError,
    NetworkConfig,
    PrivacyConfig,
    RunConfig,
)
from farsync.reducers.base import MeanReducer, Reducer
from farsync.reducers.compressed import build_compressed_reducer
from farsync.reducers.private import build_private_reducer
from farsync.reducers.robust import build_robust_reducer

__all__ = [
    "ALGORITHM_BUILDERS",
    "AlgorithmBuilder",
    "ReducerWrapper",
    "build_algorithm",
    "build_reducer",
    "link_for_group",
    "make_reducer",
]

logger = logging.getLogger(__name__)

ReducerWrapper = Callable[[RunConfig, Communicator, Reducer], Reducer]
"""``wrap(config, comm, inner) -> reducer``: a layer a runner puts around the configured reducer."""


def link_for_group(network: NetworkConfig, members: list[int]) -> LinkModel | None:
    """The link a group of ``members`` runs at: the slowest member's rate and the largest latency.

    ``None`` when emulation is off (the real link is what it is).
    """
    if network.emulation == "off":
        return None
    rates = [network.worker_bandwidth.get(str(m), network.bandwidth) for m in members]
    latencies = [network.worker_latency.get(str(m), network.latency) for m in members]
    return LinkModel(bandwidth_bps=min(rates), latency_s=max(latencies))


def make_reducer(
    comm: Communicator,
    *,
    compression: CompressionConfig | None = None,
    aggregation: AggregationConfig | None = None,
    privacy: PrivacyConfig | None = None,
    seed: int = 0,
) -> Reducer:
    """The reducer chain for these sections over ``comm``: fp32 mean unless a section asks for more.

    Layers, innermost first (a section left at its defaults adds nothing):

    1. ``compression`` (``kind`` other than ``"none"``, or ``adaptive``): quantized ring, low-rank or
       compressed all-gather (:func:`~farsync.reducers.compressed.build_compressed_reducer`);
    2. ``aggregation`` (``rule`` other than ``"mean"``, ``max_norm`` or ``outlier_ratio`` set): robust
       aggregation over the butterfly, replacing the compressed reducer and encoding its shards with
       ``compression`` instead (:func:`~farsync.reducers.robust.build_robust_reducer`);
    3. ``privacy`` (``mode`` other than ``"off"``): clipping and Gaussian noise drawn from ``seed``
       (:func:`~farsync.reducers.private.build_private_reducer`).
    """
    compression = compression if compression is not None else CompressionConfig()
    aggregation = aggregation if aggregation is not None else AggregationConfig()
    privacy = privacy if privacy is not None else PrivacyConfig()
    reducer: Reducer = MeanReducer(comm)
    if compression.kind != "none" or compression.adaptive:
        reducer = build_compressed_reducer(compression, comm, reducer)
    if aggregation.needs_robust_reducer:
        reducer = build_robust_reducer(aggregation, comm, reducer, compression=compression)
    if privacy.mode != "off":
        reducer = build_private_reducer(privacy, comm, reducer, seed=seed)
    return reducer


def build_reducer(config: RunConfig, comm: Communicator, wrappers: Sequence[ReducerWrapper] = ()) -> Reducer:
    """The run's reducer: :func:`make_reducer` of its sections, then ``wrappers``, outermost, in order.

    The wrappers are what the runner composes in (attack simulation from :mod:`farsync.sim` when
    ``byzantine.workers`` is set; the core never imports it).
    """
    reducer = make_reducer(
        comm,
        compression=config.compression,
        aggregation=config.aggregation,
        privacy=config.privacy,
        seed=config.seed,
    )
    for wrap in wrappers:
        reducer = wrap(config, comm, reducer)
    return reducer


AlgorithmBuilder = Callable[
    [RunConfig, nn.Module, torch.optim.Optimizer, Communicator, Reducer, Any], Algorithm
]
"""``build(config, model, optimizer, comm, reducer, task) -> algorithm``; ``task`` may be None."""


def _ddp(
    config: RunConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    comm: Communicator,
    reducer: Reducer,
    task: Any,
) -> Algorithm:
    return DDP(model, optimizer, comm, reducer=reducer, report_every=config.train.report_every)


def _diloco(
    config: RunConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    comm: Communicator,
    reducer: Reducer,
    task: Any,
) -> Algorithm:
    cls = OverlappedDiLoCo if config.algorithm.delay else DiLoCo
    return cls(model, optimizer, comm, config.algorithm, reducer=reducer)


def _fedavg(
    config: RunConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    comm: Communicator,
    reducer: Reducer,
    task: Any,
) -> Algorithm:
    num_samples = task.num_samples if task is not None else 1
    return FedAvg(model, optimizer, comm, config.algorithm, reducer=reducer, num_samples=num_samples)


def _dilocox(
    config: RunConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    comm: Communicator,
    reducer: Reducer,
    task: Any,
) -> Algorithm:
    return DiLoCoX(model, optimizer, comm, config.algorithm, reducer=reducer, compression=config.compression)


def _streaming(
    config: RunConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    comm: Communicator,
    reducer: Reducer,
    task: Any,
) -> Algorithm:
    return StreamingDiLoCo(model, optimizer, comm, config.algorithm, reducer=reducer)


def _gossip(
    config: RunConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    comm: Communicator,
    reducer: Reducer,
    task: Any,
) -> Algorithm:
    if config.privacy.mode != "off":
        raise ConfigError(
            "privacy.mode", config.privacy.mode, "gossip has no differential privacy yet; use 'off'"
        )
    return Gossip(
        model,
        optimizer,
        comm,
        config.gossip,
        num_steps=config.train.num_steps,
        seed=config.seed,
        report_every=config.train.report_every,
        reducer=reducer,
        evaluate=task.evaluate if task is not None else None,
    )


ALGORITHM_BUILDERS: dict[str, AlgorithmBuilder] = {
    "ddp": _ddp,
    "diloco": _diloco,
    "fedavg": _fedavg,
    "dilocox": _dilocox,
    "streaming": _streaming,
    "gossip": _gossip,
}
"""``algorithm.name`` -> the builder of its algorithm (``algorithm.delay = 1`` picks the overlapped DiLoCo)."""

_REPORTS_BY_STEPS = ("ddp", "gossip")


def build_algorithm(
    config: RunConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    comm: Communicator,
    reducer: Reducer,
    task: Any = None,
) -> Algorithm:
    """The configured algorithm, attached to nothing yet (the worker enters it as a context manager)."""
    name = config.algorithm.name
    builder = ALGORITHM_BUILDERS.get(name)
    if builder is None:
        raise ConfigError("algorithm.name", name, "allowed: " + ", ".join(ALGORITHM_BUILDERS))
    h = config.algorithm.num_inner_steps
    if name in _REPORTS_BY_STEPS and h != AlgorithmConfig().num_inner_steps and comm.rank == 0:
        logger.warning(
            "algorithm.num_inner_steps = %d is H, which %s does not use; its round records come every "
            "train.report_every = %d steps",
            h,
            name,
            config.train.report_every,
        )
    return builder(config, model, optimizer, comm, reducer, task)
