"""Resuming a run under new settings: what may change, and resharding to another number of workers.

A checkpoint (:mod:`farsync.train.checkpoint`) holds, per worker, the loop's whole state. For the synchronous
algorithms (DDP, DiLoCo with ``delay = 0``, FedAvg with one client per worker) part of it is *global*:
identical on every worker after a round boundary, so any worker's copy is everyone's:

* the model weights (DiLoCo loads the fp32 global weights into the model at every outer step), the outer
  optimizer (global weights and Nesterov momentum), the inner step and round counters, the learning-rate
  schedule, the byte ledger and time counters (the figures the run reports per worker);
* for DDP also the inner AdamW moments (every worker applies the same averaged gradient).

The rest is *per worker* and cannot carry over to a different set of workers: the inner optimizer moments
(DiLoCo family), the data position and random state (the data is resharded into the new number of shards,
because a shard is a pure function of seed, rank and worker count), and the reducer's state (error-feedback
residuals, low-rank warm starts, robust-aggregation strikes, attack history). :func:`resume_state` builds a
new worker's state from the old worker of the same pipeline stage (rank 0 without pipelines), with the
per-worker parts taken from the new worker's own fresh state, and lists what it reset in the ``resume``
record. This follows what elastic training does when a worker joins (torchft heals joiners from a peer's
global state, inner optimizer state starting from zero).

Not reshardable (:func:`reshard_refusal` says why): ``gossip`` (every worker holds its own model, there is no
global state), ``streaming`` (workers hold different weights between fragment syncs), ``delay = 1`` and
``dilocox`` (the overlap keeps each worker's own previous pseudo-gradient), federated clients (no resume at
all yet) and differential privacy (the accountant's record belongs to the run as it was).

:func:`resume_conflict` names the first setting a resumed run may not change because the checkpoint's
tensors or its state layout depend on it (model shape, algorithm, reducer chain).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farsync.config import ConfigError, RunConfig
from farsync.train.checkpoint import CheckpointError, find_checkpoint, load_worker_state

__all__ = [
    "FROZEN_KEYS",
    "Resumed",
    "reset_on_reshard",
    "reshard_refusal",
    "reshard_state",
    "resume_conflict",
    "resume_state",
]

logger = logging.getLogger(__name__)


def _always(config: RunConfig) -> bool:
    del config
    return True


def _gpt(config: RunConfig) -> bool:
    return config.model.kind in ("gpt", "hf")


def _hf(config: RunConfig) -> bool:
    return config.model.kind == "hf"


def _text(config: RunConfig) -> bool:
    return config.data.kind in ("text", "local")


def _overlapped(config: RunConfig) -> bool:
    return config.algorithm.name == "dilocox" or config.algorithm.delay == 1


FROZEN_KEYS: dict[str, Callable[[RunConfig], bool]] = {
    "model.kind": _always,
    "model.num_layers": _gpt,
    "model.width": lambda config: config.model.kind in ("gpt", "mlp"),
    "model.num_heads": _gpt,
    "model.context_length": _gpt,
    "data.kind": _always,
    "data.path": lambda config: config.data.kind == "npz",
    "algorithm.name": _always,
    "algorithm.delay": _always,
    "algorithm.overlap": _overlapped,
    "algorithm.num_fragments": lambda config: config.algorithm.name == "streaming",
    "compression.rank": lambda config: config.compression.kind == "lowrank" or config.compression.adaptive,
    "privacy.mode": _always,
    "parallel.num_stages": _always,
    "parallel.num_shards": _always,
    "model.architecture": _hf,
    "model.hf_path": _hf,
    "model.num_kv_heads": _hf,
    "model.intermediate_size": _hf,
    "model.tie_embeddings": _hf,
    "data.tokenizer": _text,
    "data.vocab_size": lambda config: config.data.tokenizer == "bpe",
}
"""Settings a resumed run must keep (when the predicate holds for the checkpointed run): the checkpoint's
tensor shapes or state layout depend on them."""

_GLOBAL_LOOP_KEYS = ("step", "model", "scheduler", "ledger", "compute_s", "train_s")


def _value(config: RunConfig, key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _layers(config: RunConfig) -> dict[tuple[str, ...], bool]:
    """The optional reducer layers whose state a checkpoint holds: the keys that switch each on -> on."""
    aggregation = config.aggregation
    robust = aggregation.rule != "mean" or aggregation.max_norm > 0 or aggregation.outlier_ratio > 0
    return {
        ("aggregation.rule", "aggregation.max_norm", "aggregation.outlier_ratio"): robust,
        ("byzantine.workers",): bool(config.byzantine.workers),
    }


def resume_conflict(checkpointed: RunConfig, resumed: RunConfig) -> ConfigError | None:
    """The first setting of ``resumed`` that the checkpoint written under ``checkpointed`` cannot take."""
    for key, applies in FROZEN_KEYS.items():
        before, after = _value(checkpointed, key), _value(resumed, key)
        if applies(checkpointed) and before != after:
            return ConfigError(
                key, after, f"cannot change on --resume (the checkpoint was written with {before!r})"
            )
    after_layers = _layers(resumed)
    for keys, on in _layers(checkpointed).items():
        if on != after_layers[keys]:
            key = next(k for k in keys if _value(checkpointed, k) != _value(resumed, k))
            return ConfigError(
                key,
                _value(resumed, key),
                f"cannot change on --resume from {_value(checkpointed, key)!r}: it switches a reducer layer "
                f"{'on' if after_layers[keys] else 'off'}, and the checkpoint holds the layers' state",
            )
    return None


def reshard_refusal(config: RunConfig) -> str | None:
    """Why a run with ``config`` cannot resume with another number of workers (None: it can)."""
    name = config.algorithm.name
    if name == "gossip":
        return "gossip keeps one model per worker and no global state to reshard"
    if name == "streaming":
        return "streaming DiLoCo's workers hold different weights between fragment syncs"
    if name == "dilocox" or config.algorithm.delay:
        return "the one-step-delay overlap keeps each worker's own previous pseudo-gradient"
    if name == "fedavg" and config.federated.num_clients > 0:
        return "federated runs with clients cannot resume from checkpoints yet"
    if config.privacy.mode != "off":
        return "the privacy accountant's record belongs to the run as it was"
    if config.parallel.num_shards > 1:
        return "a sharded replica's checkpoint holds each rank's own shards"
    return None


def reset_on_reshard(config: RunConfig) -> list[str]:
    """What a resharded resume starts afresh on every worker, in words (for the ``resume`` record)."""
    reset = [] if config.algorithm.name == "ddp" else ["inner optimizer moments"]
    reset.append("data positions and random state")
    compression = config.compression
    if compression.error_feedback or compression.kind == "lowrank" or compression.adaptive:
        reset.append("error-feedback residuals and low-rank warm starts")
    aggregation = config.aggregation
    if aggregation.rule != "mean" or aggregation.max_norm > 0 or aggregation.outlier_ratio > 0:
        reset.append("robust-aggregation strikes")
    if config.byzantine.workers:
        reset.append("attack history")
    return reset


def reshard_state(
    source: dict[str, Any], fresh: dict[str, Any], *, keep_inner_optimizer: bool
) -> dict[str, Any]:
    """A new worker's loop state: the global parts of ``source`` (an old worker's checkpoint) over ``fresh``
    (the new worker's own state before resuming), which supplies everything per worker."""
    state = dict(fresh)
    for key in _GLOBAL_LOOP_KEYS:
        state[key] = source[key]
    algorithm = dict(source["algorithm"])
    algorithm["reducer"] = fresh["algorithm"].get("reducer", {})
    state["algorithm"] = algorithm
    if keep_inner_optimizer:
        state["optimizer"] = source["optimizer"]
    else:  # no moments, but the old param groups: their learning rate is where the schedule has got to
        state["optimizer"] = {"state": {}, "param_groups": source["optimizer"]["param_groups"]}
    return state


@dataclass
class Resumed:
    """What a worker loads and the ``resume`` record it reports (without the step, known after loading)."""

    state: dict[str, Any]
    record: dict[str, Any]


def resume_state(
    root: Path, *, rank: int, world_size: int, config: RunConfig, fresh: Callable[[], dict[str, Any]]
) -> Resumed:
    """Worker ``rank``'s state from the newest usable checkpoint under ``root``, resharded when the
    checkpoint was written by another number of workers. ``fresh`` returns the worker's state as built.

    Raises :class:`~farsync.train.checkpoint.CheckpointError` when there is no usable checkpoint or the run
    cannot be resharded (the launcher checks both before starting workers).
    """
    found = find_checkpoint(root)
    if found is None:
        raise CheckpointError(f"no usable checkpoint under {root / 'checkpoints'}")
    if found.num_workers == world_size:
        return Resumed(load_worker_state(found.directory, rank), {"kind": "resume", "round": found.round})
    refusal = reshard_refusal(config)
    if refusal is not None:
        raise CheckpointError(
            f"the checkpoint of round {found.round} was written by {found.num_workers} workers, this run has "
            f"{world_size}, and {refusal}"
        )
    source = load_worker_state(found.directory, rank % config.parallel.num_stages)
    state = reshard_state(source, fresh(), keep_inner_optimizer=config.algorithm.name == "ddp")
    reset = reset_on_reshard(config)
    if rank == 0:
        logger.warning(
            "resharding the checkpoint of round %d from %d to %d workers; reset on every worker: %s",
            found.round,
            found.num_workers,
            world_size,
            ", ".join(reset),
        )
    record = {
        "kind": "resume",
        "round": found.round,
        "resharded_from": found.num_workers,
        "num_workers": world_size,
        "reset": reset,
    }
    return Resumed(state, record)
