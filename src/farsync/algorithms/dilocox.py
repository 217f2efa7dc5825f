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

From Python, :func:`farsync.dilocox` (:mod:`farsync.algorithms.presets`) is the documented preset: it takes
the outer optimizer, H, the overlap variant and the compression settings as plain arguments.

Failure: as DiLoCo; a non-finite pseudo-gradient is left out with a warning naming the worker.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import ClassVar

import torch
from torch import nn

from farsync.algorithms.overlap import OverlappedDiLoCo
from farsync.comm.communicator import Communicator
from farsync.config import AlgorithmConfig, CompressionConfig
from farsync.reducers.base import MeanReducer, Reducer
from farsync.reducers.compressed import build_compressed_reducer

__all__ = ["DiLoCoX", "dilocox_compression", "dilocox_reducer"]

logger = logging.getLogger(__name__)


def dilocox_compression(compression: CompressionConfig) -> CompressionConfig:
    """DiLoCoX's compression defaults for a section left at its own defaults; otherwise the section as is."""
    if compression.kind != "none" or compression.adaptive:
        return compression
    return dataclasses.replace(compression, kind="lowrank", adaptive=True, error_feedback=True)


def dilocox_reducer(
    compression: CompressionConfig, comm: Communicator, given: Reducer | None = None
) -> Reducer:
    """The reducer DiLoCoX synchronises with.

    ``given`` is used as it is when it is anything but a bare fp32 :class:`MeanReducer` (a run that configured
    its own compressed, robust or private reducer, or an attack wrapper, keeps it). Otherwise the reducer is
    built from :func:`dilocox_compression` of ``compression`` over ``given`` (or a new mean reducer).
    """
    if given is not None and type(given) is not MeanReducer:
        return given
    inner = given if given is not None else MeanReducer(comm)
    return build_compressed_reducer(dilocox_compression(compression), comm, inner)


class DiLoCoX(OverlappedDiLoCo):
    """One-step-delay overlapped DiLoCo over an adaptive low-rank, quantized, error-feedback reducer.

    Args:
        config: the ``algorithm`` section (H, outer optimizer, ``overlap``); ``delay`` is taken as 1.
        reducer: used as given unless it is a bare fp32 :class:`MeanReducer` or None (see
            :func:`dilocox_reducer`).
        compression: the ``compression`` section the DiLoCoX reducer is built from (default: DiLoCoX's own
            defaults, adaptive low-rank with error feedback; see the module docstring).
    """

    name: ClassVar[str] = "dilocox"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        comm: Communicator,
        config: AlgorithmConfig | None = None,
        *,
        reducer: Reducer | None = None,
        compression: CompressionConfig | None = None,
    ) -> None:
        config = dataclasses.replace(
            config if config is not None else AlgorithmConfig(name="dilocox"), delay=1
        )
        compression = compression if compression is not None else CompressionConfig()
        super().__init__(model, optimizer, comm, config, reducer=dilocox_reducer(compression, comm, reducer))
