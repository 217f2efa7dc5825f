"""DiLoCoX: DiLoCo with one-step-delay overlap and adaptive pseudo-gradient compression.

Qi et al. 2025, "DiLoCoX: A Low-Communication Large-Scale Training Framework for Decentralized Cluster"
(arXiv 2506.21263) train over slow links by combining

(a) the one-step-delay overlap of communication and local training (:mod:`farsync.algorithms.overlap`:
    the all-reduce of round t runs during round t+1 and its outer step is applied one round late), and
(b) adaptive compression of the pseudo-gradient: low-rank factors whose rank keeps a fraction of the
    pseudo-gradient's energy, quantized, with the bit width and rank chosen so that a round's message fits
    in the time of H inner steps on the measured link, and error feedback carrying what was lost to the
    next round;
(c) pipeline stages with a dual optimizer (``parallel.num_stages``, built elsewhere).

``algorithm.name = "dilocox"`` always overlaps (``delay`` is taken as 1; ``overlap`` picks the delayed or
eager variant). Its compression defaults: when the run's ``[compression]`` section is left at its defaults
(``kind = "none"``, ``adaptive = false``) the reducer is built as ``kind = "lowrank"``, ``adaptive = true``,
``error_feedback = true`` with the section's ``rank`` (upper bound), ``bits``, ``energy_fraction`` and
``block_size``. Any explicit compression setting is used as given (e.g. ``error_feedback = false`` for the
ablation). Before each all-reduce the compressed reducer's ``time_budget_s`` is set to H x the measured
inner-step time, which is what lets it adapt to the link.

Failure: as DiLoCo; a non-finite pseudo-gradient is left out with a warning naming the worker. If the
compressed reducer is not available in this installation the fp32 mean reducer is used, with a warning.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import ClassVar

import torch
from torch import nn

from farsync.algorithms.overlap import OverlappedDiLoCo
from farsync.comm.communicator import Communicator
from farsync.config import AlgorithmConfig, CompressionConfig, RunConfig
from farsync.reducers.base import MeanReducer, Reducer

__all__ = ["DiLoCoX", "dilocox_compression"]

logger = logging.getLogger(__name__)


def dilocox_compression(compression: CompressionConfig) -> CompressionConfig:
    """DiLoCoX's compression defaults for a section left at its own defaults; otherwise the section as is."""
    if compression.kind != "none" or compression.adaptive:
        return compression
    return dataclasses.replace(compression, kind="lowrank", adaptive=True, error_feedback=True)


def _dilocox_reducer(run_config: RunConfig, comm: Communicator, given: Reducer) -> Reducer:
    compression = dilocox_compression(run_config.compression)
    if compression is run_config.compression or type(given) is not MeanReducer:
        return given  # the run configured its own reducer (compressed, robust, private): use it as built
    try:
        from farsync.reducers.compressed import build_compressed_reducer
    except ImportError:
        logger.warning("dilocox: farsync.reducers.compressed is not available; sending fp32 pseudo-gradients")
        return given
    built: Reducer = build_compressed_reducer(
        dataclasses.replace(run_config, compression=compression), comm, given
    )
    return built


class DiLoCoX(OverlappedDiLoCo):
    """One-step-delay overlapped DiLoCo over an adaptive low-rank, quantized, error-feedback reducer."""

    name: ClassVar[str] = "dilocox"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        comm: Communicator,
        config: AlgorithmConfig | None = None,
        *,
        reducer: Reducer | None = None,
        run_config: RunConfig | None = None,
    ) -> None:
        run_config = run_config if run_config is not None else RunConfig()
        config = dataclasses.replace(config if config is not None else run_config.algorithm, delay=1)
        reducer = _dilocox_reducer(run_config, comm, reducer if reducer is not None else MeanReducer(comm))
        super().__init__(model, optimizer, comm, config, reducer=reducer)
