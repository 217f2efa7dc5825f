"""DiLoCoX: DiLoCo whose every round is planned from the link: synchronous, or overlapped and compressed.

Qi et al. 2025, "DiLoCoX: A Low-Communication Large-Scale Training Framework for Decentralized Cluster"
(arXiv 2506.21263) train over slow links by combining

(a) the one-step-delay overlap of communication and local training (:mod:`farsync.algorithms.overlap`:
    the all-reduce of round t runs during round t+1 and its outer step is applied one round late);
(b) adaptive compression of the pseudo-gradient (low-rank factors plus quantization, with error feedback),
    adapted as training goes together with the number of local steps H, so that a round's communication
    hides behind the next round's compute;
(c) pipeline stages with a dual optimizer (``parallel.num_stages``, built elsewhere).

What is the paper's and what is ours. (a), (c), low-rank plus quantized factors with error feedback, and
adjusting H together with the compression are the paper's (as we read it, it adapts from the pseudo-gradient's
rank); **farsync's planner** (:mod:`farsync.compress.adaptive`, executed by
:class:`~farsync.reducers.adaptive_lowrank.AdaptiveLowRankReducer`) decides every round from the link
instead: a round whose uncompressed all-reduce is a small share of its compute runs **synchronously and
uncompressed** (there is nothing to hide, and the delay costs quality); otherwise it overlaps and sends the
least compression that fits the window (fp32, dense 16/8/4/2-bit values, then low-rank factors at rank
fractions 1, 1/2, 1/4, ... of each matrix with 16/8/4/2-bit factors), never below a quality floor; at the
floor, with ``compression.adapt_inner_steps``, the next round's H grows until the message hides. The
synchronous rounds, the width ladder, the relative ranks and the floor are ours.

``algorithm.name = "dilocox"``: ``delay`` is taken as 1 (``overlap`` picks the delayed or eager rule of
the overlapped rounds). Compression: when the run's ``[compression]`` section is left at its defaults
(``kind = "none"``, ``adaptive = false``) the reducer is the planner's with ``error_feedback = true``;
any explicit compression setting is used as given (e.g. ``error_feedback = false`` for the ablation, or a
fixed ``kind = "lowrank"`` without ``adaptive``, which then always overlaps). A reducer other than the plain
fp32 mean (robust, private, an attack wrapper) is kept, and every round then overlaps.

Every round's plan goes into ``metrics()`` (so ``metrics.jsonl``): ``plan_mode`` (sync or overlap),
``plan_kind``, ``compression_bits``, ``compression_rank``, ``plan_rank_fraction_mean`` / ``_max``,
``plan_inner_steps`` (H of the next round), ``plan_predicted_comm_s`` and ``plan_fits`` of this round, and
``comm_measured_s`` / ``comm_predicted_s`` of the last reduce that completed (``comm_measured_round``).

From Python, :func:`farsync.dilocox` (:mod:`farsync.algorithms.presets`) is the documented preset.

Failure: as DiLoCo; a non-finite pseudo-gradient is left out with a warning naming the worker. A last,
partial round (``train.num_steps`` not a multiple of a grown H) is synchronised synchronously at the end.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, ClassVar

import torch
from torch import nn

from farsync.algorithms.overlap import OverlappedDiLoCo
from farsync.comm.communicator import Communicator
from farsync.compress.adaptive import RoundPlan
from farsync.config import AlgorithmConfig, CompressionConfig
from farsync.reducers.adaptive_lowrank import AdaptiveLowRankReducer
from farsync.reducers.base import MeanReducer, Reducer
from farsync.reducers.budget import reducer_chain
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


def _planner(reducer: Reducer) -> AdaptiveLowRankReducer | None:
    return next((r for r in reducer_chain(reducer) if isinstance(r, AdaptiveLowRankReducer)), None)


class DiLoCoX(OverlappedDiLoCo):
    """Overlapped DiLoCo whose rounds follow the link-aware planner (see the module docstring).

    Args:
        config: the ``algorithm`` section (H, outer optimizer, ``overlap``); ``delay`` is taken as 1.
        reducer: used as given unless it is a bare fp32 :class:`MeanReducer` or None (see
            :func:`dilocox_reducer`).
        compression: the ``compression`` section the DiLoCoX reducer is built from (default: DiLoCoX's own
            defaults, the planner with error feedback; see the module docstring).
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
        self.planner = _planner(self.reducer)
        if self.planner is not None:
            self.planner.num_inner_steps = self.config.num_inner_steps
        self.num_inner_steps = self.config.num_inner_steps
        """H of the current round (the planner may grow it)."""
        self.plan: RoundPlan | None = None
        """This round's plan (None without a planner, or before the first round end)."""
        self.measured: tuple[int, float, float] | None = None
        """(round, measured s, predicted s) of the last reduce that completed."""
        self._final_round = False

    def round_length(self, round_index: int) -> int:
        if round_index < self.config.num_warmup_rounds:
            return super().round_length(round_index)
        return self.num_inner_steps

    # ----------------------------------------------------------------------------- the planner's hook
    def round_is_synchronous(self, pseudo: dict[str, torch.Tensor], weight: float) -> bool:
        if self.planner is None:
            return self._final_round
        self._snapshot()
        self.planner.step_s = self.timer.step_s()
        self.plan = self.planner.plan(pseudo)
        if self.round + 1 >= self.config.num_warmup_rounds:
            self.num_inner_steps = self.plan.num_inner_steps
        return self._final_round or self.plan.mode == "sync"

    def _synchronous_round(self, pseudo: dict[str, torch.Tensor], weight: float) -> None:
        super()._synchronous_round(pseudo, weight)
        self._snapshot()

    def _snapshot(self) -> None:
        """Records the last completed reduce's measured and predicted time (one reduce per round)."""
        planner = self.planner
        if planner is not None and planner.last_plan is not None and planner.last_comm_s is not None:
            self.measured = (planner.num_reduces - 1, planner.last_comm_s, planner.last_plan.predicted_comm_s)

    def finish(self) -> None:
        """A last, partial round (after H grew) is synchronised at once; then as the overlapped finish."""
        if self.steps_in_round > 0:
            self.steps_in_round, self._final_round = 0, True
            self.outer_round()
            self.round += 1
            self._final_round = False
        super().finish()

    # ----------------------------------------------------------------------------------- inspection
    def metrics(self) -> dict[str, Any]:
        values = super().metrics()
        plan = self.plan
        if plan is not None:
            mean_fraction, max_fraction = plan.rank_fraction_stats(
                [tuple(p.shape) for p in self.named_params.values()]
            )
            values.update(
                plan_mode=plan.mode,
                plan_kind=plan.kind,
                compression_bits=plan.bits,
                compression_rank=max(plan.ranks, default=0),
                plan_rank_fraction_mean=mean_fraction,
                plan_rank_fraction_max=max_fraction,
                plan_inner_steps=plan.num_inner_steps,
                plan_predicted_comm_s=plan.predicted_comm_s,
                plan_window_s=plan.window_s,
                plan_fits=plan.fits,
                plan_message_bytes=plan.message_bytes,
            )
        for key in ("comm_measured_s", "comm_predicted_s"):
            values.pop(key, None)  # the reducer's own are of whichever reduce finished last (racy)
        if self.measured is not None:
            round_index, measured, predicted = self.measured
            values.update(
                comm_measured_round=round_index, comm_measured_s=measured, comm_predicted_s=predicted
            )
        return values

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["dilocox_num_inner_steps"] = self.num_inner_steps
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.num_inner_steps = int(state.get("dilocox_num_inner_steps", self.config.num_inner_steps))
