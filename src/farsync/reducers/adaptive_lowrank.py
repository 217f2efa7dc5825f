"""DiLoCoX's link-aware reducer: every round, the plan of :mod:`farsync.compress.adaptive`, agreed and executed.

Qi et al. 2025 (arXiv 2506.21263) adapt the pseudo-gradient's compression so that a round's communication
hides behind the next round's compute. :class:`AdaptiveLowRankReducer` carries that out over farsync's
collectives; the rules it follows (sync on a fast link, the least compression that fits, the quality floor,
H growth) are the planner's, described in :mod:`farsync.compress.adaptive`. Each round it

1. **agrees** with the other workers on the planner's inputs, so every worker derives the same plan and runs
   the same collective: one all-gather of (link rate, latency, inner-step time, each matrix's energy rank),
   taking the slowest link, the largest latency, the longest step and the largest ranks. The agreement
   rides at the end of each reduce (in the background thread for an overlapped round), so it is one round
   old when the next round is planned and the training loop never waits at a barrier for it (a blocking
   agreement at every round end cost ~3% of compute in waits for the slowest worker in bench quality's
   regime); only the first round agrees before its reduce. Energy ranks (an SVD per matrix) are
   computed only when ``energy_fraction < 1`` and the round just reduced was overlapped, of its
   error-corrected pseudo-gradient (a plan without them caps no matrix by energy);
2. **plans** with :func:`~farsync.compress.adaptive.plan_round`;
3. **executes** the plan: ``none`` (fp32 values) through the fp32 reducer it replaced (``inner``: one
   all-reduce, the sums synchronous DiLoCo makes), ``dense`` (blockwise 16/8/4/2-bit values) through the
   quantized ring (:class:`~farsync.reducers.compressed.RingReducer`), ``lowrank`` through the low-rank
   all-reduce with each matrix's own rank (:mod:`farsync.collectives.lowrank_allreduce`). All three share
   one error-feedback residual store, so what one round's plan did not deliver is sent by the next, whatever
   it is.

A caller that plans ahead (DiLoCoX decides from the plan whether the round runs synchronously, and sets H)
calls :meth:`AdaptiveLowRankReducer.plan` and then reduces; a caller that does not (the reducer used on its
own, or under :class:`~farsync.algorithms.overlap.OverlappedDiLoCo`) gets the plan made inside the reduce.

The link: ``comm.link`` when emulated. On a real link (``network.emulation = "off"``) the rate is measured:
bytes sent per second of the reduce alone, timed after the agreement (which waits for the slowest worker,
so a straggler is not taken for a slow link), the best of the last 8 reduces (a measured rate can only be
below the link's; the last one alone shrinks round after round). Until a rate is known the round is
synchronous and uncompressed, which measures it.

The inner-step time: ``step_s`` when the caller sets it; else ``time_budget_s / num_inner_steps`` (the
budget :func:`~farsync.reducers.budget.set_time_budget` sets).

Metrics (``metrics()``, for ``metrics.jsonl``), of the last reduce: ``plan_mode``, ``plan_kind``,
``compression_bits``, ``compression_rank`` (largest matrix rank), ``plan_rank_fraction_mean``,
``plan_rank_fraction_max``, ``plan_inner_steps``, ``comm_predicted_s``, ``comm_measured_s`` (its time on
the communicator's clock, emulated or real), ``plan_fits``, ``compressed_bytes``,
``compression_bytes_sent``, ``compression_floor_rounds`` and, once measured, ``link_bytes_per_s``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from farsync.comm.communicator import Communicator
from farsync.compress.adaptive import PlanInputs, PlannerPolicy, RoundPlan, energy_ranks, plan_round
from farsync.compress.codecs import make_codec
from farsync.config import CompressionConfig
from farsync.reducers.base import Reducer
from farsync.reducers.compressed import LowRankReducer, RingReducer, left_out_if_not_finite

__all__ = ["AdaptiveLowRankReducer", "planner_policy"]

logger = logging.getLogger(__name__)

_RATE_WINDOW = 8
_Agreed = tuple[float | None, float, float | None, tuple[int, ...] | None]
"""(link rate, latency, step time, energy ranks) every worker holds after an agreement."""
_RING_CODECS = {32: "fp32", 16: "fp16", 8: "int8", 4: "int4", 2: "int2"}
_DEFAULT_INNER_STEPS = 30


def planner_policy(compression: CompressionConfig) -> PlannerPolicy:
    """The planner's settings from the ``compression`` section."""
    return PlannerPolicy(
        sync_fraction=compression.sync_fraction,
        min_bits=compression.min_bits,
        min_rank_fraction=compression.min_rank_fraction,
        min_compression_ratio=compression.min_compression_ratio,
        adapt_inner_steps=compression.adapt_inner_steps,
        num_inner_steps_max=compression.num_inner_steps_max,
        block_size=compression.block_size,
    )


class AdaptiveLowRankReducer(LowRankReducer):
    """Weighted mean whose mode, kind, width and ranks follow the round's plan (module docstring).

    Args:
        comm: the group's communicator.
        compression: the ``compression`` section (planner fields, ``energy_fraction``, ``block_size``,
            ``error_feedback``).
        inner: the fp32 reducer it replaces (kept for layer-walking helpers).
        num_inner_steps: the configured H (the caller may change it later).

    Attributes:
        step_s: compute seconds of one inner step, set by the caller (see the module docstring).
        time_budget_s: H x step time, for callers that only know the window.
        num_inner_steps: the configured H the planner starts from.

    Failure: a peer failure raises from the collective, as in the reducers it runs; a worker whose update
    is not finite is left out (weight 0) with a warning naming it.
    """

    def __init__(
        self,
        comm: Communicator,
        compression: CompressionConfig,
        *,
        inner: Reducer | None = None,
        num_inner_steps: int = _DEFAULT_INNER_STEPS,
    ) -> None:
        super().__init__(
            comm,
            rank=1,
            bits=16,
            block_size=compression.block_size,
            inner=inner,
            error_feedback=compression.error_feedback,
        )
        self.compression = compression
        self.policy = planner_policy(compression)
        self.rings: dict[int, RingReducer] = {}
        for bits, codec in _RING_CODECS.items():
            ring = RingReducer(comm, make_codec(codec, compression.block_size))
            ring.residuals = self.engine.residuals  # one residual store for every kind (module docstring)
            self.rings[bits] = ring
        self.num_inner_steps = num_inner_steps
        self.step_s: float | None = None
        self.time_budget_s: float | None = None
        self.next_plan: RoundPlan | None = None
        self.last_plan: RoundPlan | None = None
        self.measured_bytes_per_s: float | None = None
        self.recent_rates: list[float] = []
        self.floor_rounds = 0
        self.last_comm_s: float | None = None
        self.num_reduces = 0
        self.agreed: _Agreed | None = None
        """The next plan's inputs, agreed at the end of the last reduce."""

    # ------------------------------------------------------------------------------------------ plan
    def _step_s(self) -> float | None:
        if self.step_s is not None:
            return self.step_s
        if self.time_budget_s is not None and self.num_inner_steps > 0:
            return self.time_budget_s / self.num_inner_steps
        return None

    def plan(self, named: dict[str, torch.Tensor]) -> RoundPlan:
        """Plans the next reduce of ``named`` (kept for :meth:`reduce`); the same plan on every worker.

        From the inputs agreed at the end of the last reduce (no collective here), or, before the first
        reduce, from an agreement made now (a collective: every worker calls it at the same point).
        """
        agreed = self.agreed
        if agreed is None:
            agreed = self._agree(self._local_inputs(named, with_ranks=self._wants_ranks()))
        inputs = PlanInputs(
            shapes=tuple(tuple(t.shape) for t in named.values()),
            energy_ranks=None,
            bytes_per_s=agreed[0],
            latency_s=agreed[1],
            num_workers=self.comm.world_size,
            step_s=agreed[2],
            num_inner_steps=self.num_inner_steps,
        )
        plan = plan_round(inputs, self.policy)
        ranks = agreed[3]
        if plan.mode == "overlap" and ranks is not None and len(ranks) == len(inputs.shapes):
            plan = plan_round(dataclasses.replace(inputs, energy_ranks=ranks), self.policy)
        if not plan.fits:
            self._warn_floor(plan)
        self.next_plan = plan
        return plan

    def _wants_ranks(self) -> bool:
        return self.compression.energy_fraction < 1.0

    def _local_inputs(self, named: dict[str, torch.Tensor], *, with_ranks: bool) -> list[float]:
        """This worker's (rate, latency, step time, energy ranks...) with -1 for "not known"."""
        link = self.comm.link
        rate = link.bytes_per_s if link is not None else self.measured_bytes_per_s
        latency = link.latency_s if link is not None else 0.0
        step = self._step_s()
        values = [-1.0 if rate is None else rate, latency, -1.0 if step is None else step]
        if with_ranks:
            residuals = self.engine.residuals
            corrected = residuals.corrected(named) if residuals is not None else named
            values += [
                float(r) for r in energy_ranks(list(corrected.values()), self.compression.energy_fraction)
            ]
        return values

    def _agree(self, mine: list[float]) -> _Agreed:
        """Slowest rate, largest latency, longest step, largest energy ranks over the group (fp64)."""
        if self.comm.world_size == 1:
            everyone = torch.tensor([mine], dtype=torch.float64)
        else:
            everyone = torch.stack(self.comm.all_gather(torch.tensor(mine, dtype=torch.float64)).wait())
        rates, steps = everyone[:, 0], everyone[:, 2]
        rate = None if bool((rates < 0).any()) else float(rates.min())
        step = None if bool((steps < 0).any()) else float(steps.max())
        ranks = tuple(int(r) for r in everyone[:, 3:].max(dim=0).values) if everyone.shape[1] > 3 else None
        return rate, float(everyone[:, 1].max()), step, ranks

    def _warn_floor(self, plan: RoundPlan) -> None:
        """Once per run: the quality floor binds and the sync takes longer than its window."""
        self.floor_rounds += 1
        if self.floor_rounds == 1:
            logger.warning(
                "worker %d: quality floor: the most compressed allowed message (%d bytes, %s at %d bits) takes "
                "%.3g s, longer than the %.3g s window; sending it anyway (compressing harder would hurt the "
                "model; compression.adapt_inner_steps grows H instead). Logged once; compression_floor_rounds "
                "counts the rounds.",
                self.comm.rank,
                plan.message_bytes,
                plan.kind,
                plan.bits,
                plan.predicted_comm_s,
                plan.window_s or 0.0,
            )

    # ------------------------------------------------------------------------------------------ reduce
    def reduce(self, named: dict[str, torch.Tensor], weight: float = 1.0) -> dict[str, torch.Tensor]:
        plan = self.next_plan if self.next_plan is not None else self.plan(named)
        self.next_plan = None
        self._begin()
        named, weight = left_out_if_not_finite(named, weight, self.comm.rank)
        # Timed from after the agreement, which every worker leaves together: waiting for a straggler to
        # arrive is not the link being slow.
        started, sent_before = self.comm.clock.now(), self.comm.ledger.bytes_sent(self.comm.channel)
        if plan.kind == "lowrank":
            ranks = {name: r for name, r in zip(named, plan.ranks, strict=True) if r > 0}
            out = self.engine.reduce(named, weight, rank=ranks, bits=plan.bits)
        elif plan.kind == "none" and self.inner is not None:
            out = self._reduce_fp32(named, weight, self.inner)
        else:
            out = self.rings[plan.bits].reduce(named, weight)
        elapsed = self.comm.clock.now() - started
        self._observe_rate(self.comm.ledger.bytes_sent(self.comm.channel) - sent_before, elapsed)
        self.last_plan, self.last_comm_s = plan, elapsed
        self.num_reduces += 1
        # The next round's inputs are agreed here, in whatever thread runs this reduce (the background one
        # for an overlapped round), so planning the next round needs no barrier in the training loop.
        # Energy ranks only after an overlapped round (the same choice on every worker: the plan is agreed);
        # a synchronous round's next plan is most likely synchronous too, and needs none.
        with_ranks = self._wants_ranks() and plan.mode == "overlap"
        self.agreed = self._agree(self._local_inputs(named, with_ranks=with_ranks))
        self._end(**self._plan_metrics(plan, [t.shape for t in named.values()], elapsed))
        return out

    def _reduce_fp32(
        self, named: dict[str, torch.Tensor], weight: float, inner: Reducer
    ) -> dict[str, torch.Tensor]:
        """Uncompressed, through the fp32 reducer this one replaced (one all-reduce, the same sums as
        synchronous DiLoCo's); what earlier compressed rounds left in the residuals goes with it."""
        residuals = self.engine.residuals
        if residuals is None or not len(residuals):
            return inner.reduce(named, weight)
        corrected = residuals.corrected(named)
        residuals.keep_unsent(corrected, corrected if weight > 0 else None)
        return inner.reduce(corrected, weight)

    def _plan_metrics(self, plan: RoundPlan, shapes: list[torch.Size], elapsed: float) -> dict[str, Any]:
        mean_fraction, max_fraction = plan.rank_fraction_stats(shapes)
        values: dict[str, Any] = {
            "plan_mode": plan.mode,
            "plan_kind": plan.kind,
            "compression_bits": plan.bits,
            "compression_rank": max(plan.ranks, default=0),
            "plan_rank_fraction_mean": mean_fraction,
            "plan_rank_fraction_max": max_fraction,
            "plan_inner_steps": plan.num_inner_steps,
            "plan_fits": plan.fits,
            "comm_predicted_s": plan.predicted_comm_s,
            "comm_measured_s": elapsed,
            "compressed_bytes": plan.message_bytes,
            "compression_floor_rounds": self.floor_rounds,
        }
        if self.measured_bytes_per_s:
            values["link_bytes_per_s"] = self.measured_bytes_per_s
        return values

    def _observe_rate(self, sent: int, elapsed: float) -> None:
        """The link rate estimate: the best of the last ``_RATE_WINDOW`` measured reduces (module docstring)."""
        if elapsed <= 0 or sent <= 0:
            return
        self.recent_rates = [*self.recent_rates, sent / elapsed][-_RATE_WINDOW:]
        self.measured_bytes_per_s = max(self.recent_rates)

    def state_dict(self) -> dict[str, object]:
        state = super().state_dict()
        state["measured_bytes_per_s"] = self.measured_bytes_per_s
        state["recent_rates"] = list(self.recent_rates)
        state["floor_rounds"] = self.floor_rounds
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        measured = state.get("measured_bytes_per_s")
        self.measured_bytes_per_s = float(measured) if measured is not None else None
        self.recent_rates = [float(rate) for rate in state.get("recent_rates", [])]
        self.floor_rounds = int(state.get("floor_rounds", 0))
