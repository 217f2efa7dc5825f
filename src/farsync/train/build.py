"""Wiring: turn config sections into a reducer, an algorithm and a link model.

Each later capability registers here in one place: a reducer kind (compressed, robust, private) or an
algorithm name. Builders receive only the config sections they need.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from farsync.algorithms.base import Algorithm
from farsync.algorithms.registry import algorithm_class
from farsync.comm.communicator import Communicator
from farsync.comm.cost import LinkModel
from farsync.config import NetworkConfig, RunConfig
from farsync.reducers.base import MeanReducer, Reducer

__all__ = ["ReducerWrapper", "build_algorithm", "build_reducer", "link_for_group"]

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


def build_reducer(config: RunConfig, comm: Communicator, wrappers: Sequence[ReducerWrapper] = ()) -> Reducer:
    """The reducer for the outer synchronisation: fp32 mean unless configured otherwise.

    Layers, innermost first, each a wrapper or replacement with the signature
    ``build(config, comm, inner) -> Reducer``:

    1. compression (``compression.kind``): quantized ring, low-rank or compressed all-gather;
    2. robust aggregation (``aggregation.rule`` / ``max_norm`` / ``outlier_ratio``): butterfly shard exchange;
    3. privacy (``privacy.mode``): clipping and Gaussian noise;
    4. ``wrappers``, outermost, in order: what the runner composes in (attack simulation from
       :mod:`farsync.sim` when ``byzantine.workers`` is set; the core never imports it).
    """
    reducer: Reducer = MeanReducer(comm)
    if config.compression.kind != "none" or config.compression.adaptive:
        from farsync.reducers.compressed import build_compressed_reducer

        reducer = build_compressed_reducer(config, comm, reducer)
    aggregation = config.aggregation
    if aggregation.rule != "mean" or aggregation.max_norm > 0 or aggregation.outlier_ratio > 0:
        from farsync.reducers.robust import build_robust_reducer

        reducer = build_robust_reducer(config, comm, reducer)
    if config.privacy.mode != "off":
        from farsync.reducers.private import build_private_reducer

        reducer = build_private_reducer(config, comm, reducer)
    for wrap in wrappers:
        reducer = wrap(config, comm, reducer)
    return reducer


def build_algorithm(
    config: RunConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    comm: Communicator,
    reducer: Reducer,
    task: Any = None,
) -> Algorithm:
    """The configured algorithm, attached to nothing yet (the worker enters it as a context manager)."""
    cls = algorithm_class(config.algorithm.name, delay=config.algorithm.delay)
    parameters = inspect.signature(cls.__init__).parameters
    kwargs: dict[str, Any] = {"reducer": reducer}
    if "config" in parameters:
        kwargs["config"] = config.algorithm
    if "round_length" in parameters:
        kwargs["round_length"] = config.algorithm.num_inner_steps
    if "num_samples" in parameters and task is not None:
        kwargs["num_samples"] = task.num_samples
    if "run_config" in parameters:
        kwargs["run_config"] = config
    if "task" in parameters:
        kwargs["task"] = task
    return cls(model, optimizer, comm, **kwargs)
