"""The Byzantine-robust reducer: validate every worker's update, then aggregate shard by shard with a
robust rule over BTARD's butterfly exchange.

BTARD (Gorbunov et al. 2021, "Secure Distributed Training at Scale", arXiv 2106.11257) averages without a
server: each worker owns one shard of the flat update, receives that shard from every worker, combines the
``n`` versions with CenteredClip (Karimireddy et al. 2021, arXiv 2012.10333) and all-gathers the result
(:mod:`farsync.collectives.butterfly`). Every worker sends about twice the update's size, whatever ``n``.

One round of :class:`RobustReducer`:

1. **Summaries.** Every worker all-gathers a few float64 numbers about its update: weight, size, dtype,
   shape signature, finiteness and norm (``8 * 6`` bytes per worker).
2. **Validation.** From the same summaries every worker reaches the same verdict on every sender
   (:func:`farsync.reducers.validation.check_summary`): wrong shape or dtype (against the most common
   one), NaN/Inf, or a norm above ``aggregation.max_norm`` is a strike in the shared :class:`StrikeBook`;
   after ``aggregation.max_strikes`` strikes a worker is excluded from every later round. A rejected,
   excluded or weight-0 worker sends zeros and is left out of every owner's stack.
3. **Butterfly.** Each owner checks the shards it receives against the senders' summaries (finite, and no
   larger than the declared norm, so a sender cannot declare a small norm and send a large shard), drops
   the ones that fail, applies the rule to the rest and all-gathers its shard with one flag per sender;
   the flags are strikes too, identical on every worker because they are all-gathered. With
   ``aggregation.outlier_ratio > 0`` an owner also flags an accepted sender whose shard lies more than
   that many median distances from the robust result: a scale-free counterpart of ``max_norm`` that bans
   gross attackers (sign flip x1000, Gaussian noise) after ``max_strikes`` rounds without a hand-set bound,
   in the spirit of BTARD's banning of peers whose updates it can show to be wrong. Subtle attacks
   (ALIE) stay within the honest spread and are left to the rule.

Rules and weights: ``mean`` (used when only ``max_norm`` is set) is the weighted mean, like
:class:`~farsync.reducers.base.MeanReducer`. The robust rules give every accepted worker the same weight:
weights are self-reported (FedAvg's sample counts), and a Byzantine worker claiming a huge count would
otherwise buy itself the majority that every rule's guarantee assumes it lacks. Weight 0 still means
"left out". Krum and Multi-Krum on shards are not Krum on the whole vector: each owner may pick a
different worker for its shard, so the result can mix workers; BTARD uses CenteredClip per shard, which
has no such selection step. When exclusions leave too few workers for Krum's ``n > 2f + 2``, ``f`` is
lowered to the largest value allowed (the median for fewer than 3).

Pre-aggregation and CenteredClip's radius: the owner applies ``aggregation.preaggregation`` (NNM or
bucketing) before the rule, and with ``aggregation.adaptive_tau`` (default) the radius on each shard is
``tau`` times a spread of the accepted shards (``aggregation.tau_scale``), recomputed every round, so one
setting works for gradients and pseudo-gradients of any scale; see :mod:`farsync.reducers.shard_rule` and
:mod:`farsync.aggregate.centered_clip`. Without it, ``tau`` is an absolute radius per shard.

Compression: the robust rule must see every worker's decoded values, so this reducer replaces any
compressed reducer built before it, and puts the same encoding on the wire as that reducer would
(:func:`farsync.compress.wire_codec`): each shard travels in the kind's codec for the all-to-all and is
decoded by its owner before the rule runs, and the reduced shard travels in the same codec for the
all-gather. ``compression.kind = "lowrank"`` cannot be sharded (a shard of P Q^T is not a shard of the
factors), so each worker sends its own low-rank message (its P and Q at ``compression.bits`` in the factor
codec, :class:`~farsync.compress.LowRankCodec`) over the gather path (:mod:`farsync.collectives.gather`) and
every worker applies every owner's rule itself. Error feedback keeps, per parameter name
(:class:`~farsync.compress.Residuals`), what this worker's encoding lost, and the worker declares the norm
of its corrected update. ``compression.adaptive`` is not applied here (the fixed ``compression.kind`` is
used).

Verification: with ``aggregation.verify_fraction > 0`` the owners are not trusted. Every round a random
sample of shards is re-computed by random peers from the inputs they committed to, an owner caught
publishing a wrong aggregate is excluded and its shard redone, and an excluded owner's shard is computed
by the next live worker from then on (BTARD's accuse-and-ban, :mod:`farsync.collectives.verification`,
ledger channel ``"verify"``). The low-rank gather path needs none: every worker applies every rule itself.

Worker momentum and history (Karimireddy et al. 2021, arXiv 2012.10333): with
``aggregation.worker_momentum = beta`` every worker sends its momentum (:class:`WorkerMomentum`) instead of
its update, computed in :meth:`RobustReducer.prepare`; an attack simulation wrapping this reducer forges
from those momenta and hands what it sends to :meth:`RobustReducer.reduce_prepared`. With
``aggregation.clip_start = "previous"`` every owner starts CenteredClip from its shard of the previous
round's aggregate, which every worker holds after the all-gather (butterfly path only: not with
``lowrank``, and not yet with verification, whose re-computation does not carry the start).

Failure and trust: a collective error raises from :meth:`RobustReducer.reduce` like any reducer. Without
verification the owners are trusted to apply the rule honestly. An excluded worker stays in the process
group, sending zeros.
"""

from __future__ import annotations

import logging
import zlib
from collections import Counter
from typing import Any

import torch

from farsync.collectives.butterfly import ShardLayout, ShardRule, butterfly_reduce
from farsync.collectives.gather import gather_shard_reduce
from farsync.collectives.verification import ShardVerifier
from farsync.comm.communicator import Communicator
from farsync.compress.codecs import Fp32Codec, WireCodec
from farsync.compress.kinds import wire_codec
from farsync.compress.lowrank import LowRankCodec
from farsync.compress.residuals import Residuals
from farsync.config import AggregationConfig, CompressionConfig, ConfigError
from farsync.reducers.base import Reducer, flatten, unflatten
from farsync.reducers.momentum import WorkerMomentum
from farsync.reducers.shard_rule import ShardAggregator
from farsync.reducers.validation import StrikeBook, UpdateSummary, check_summary

__all__ = ["RobustReducer", "ShardAggregator", "build_robust_reducer"]

logger = logging.getLogger(__name__)

_DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 0,
    torch.float16: 1,
    torch.bfloat16: 2,
    torch.float64: 3,
}
_CODE_DTYPES = {code: dtype for dtype, code in _DTYPE_CODES.items()}
_MIXED, _OTHER = -1, 9
# Relative slack between a received shard's norm and its sender's declared norm: fp32 rounding only, or the
# reconstruction error of a lossy compressor (a shard rarely holds nearly all of an update's norm).
_SHARD_SLACK_EXACT, _SHARD_SLACK_LOSSY = 1e-4, 0.1


def _dtype_code(named: dict[str, torch.Tensor]) -> int:
    codes = {_DTYPE_CODES.get(t.dtype, _OTHER) for t in named.values()}
    return codes.pop() if len(codes) == 1 else _MIXED


_VERDICTS = {
    1: "a shard was not finite or larger than the declared norm",
    2: "a shard was an outlier (over aggregation.outlier_ratio median distances from the result)",
    3: "a shard did not match its sender's commitment (disputed; see farsync.collectives.verification)",
}
"""Owners' verdicts on senders, all-gathered with the reduced shards (0: accepted)."""


def _dtype_name(code: int) -> str:
    if code in _CODE_DTYPES:
        return str(_CODE_DTYPES[code])
    return "mixed dtypes" if code == _MIXED else "an unsupported dtype"


def _shape_signature(named: dict[str, torch.Tensor]) -> int:
    text = ";".join(f"{name}:{tuple(t.shape)}" for name, t in named.items())
    return zlib.crc32(text.encode())  # < 2**32, exact in float64


class RobustReducer(Reducer):
    """Validated, shard-wise robust aggregation over the butterfly (see the module docstring).

    Args:
        comm: the group's communicator (real traffic: summaries, all-to-all, all-gather).
        config: the ``aggregation`` section (rule, its parameters, ``max_norm``, ``max_strikes``).
        codec: wire encoding of the shards, both ways (default fp32); ignored with ``lowrank``.
        lowrank: send each worker's own low-rank message over the gather path instead of shards.
        error_feedback: keep what this worker's encoding lost for the next round (per parameter name).
    """

    def __init__(
        self,
        comm: Communicator,
        config: AggregationConfig,
        *,
        codec: WireCodec | None = None,
        lowrank: LowRankCodec | None = None,
        error_feedback: bool = False,
    ) -> None:
        super().__init__(comm)
        self.config = config
        self.aggregator = ShardAggregator(config, adaptive_tau=config.adaptive_tau)
        self.codec = codec if codec is not None else Fp32Codec()
        self.lowrank = lowrank
        self.residuals: Residuals | None = Residuals() if error_feedback else None
        # Every worker keeps an identical book; one of them is enough in the log.
        self.strikes = StrikeBook(config.max_strikes, log=comm.rank == 0)
        lossless = lowrank is None and self.codec.lossless
        self.shard_slack = _SHARD_SLACK_EXACT if lossless else _SHARD_SLACK_LOSSY
        self.round = 0
        self.last_rejected: dict[int, str] = {}
        self.verifier = _verifier(comm, config, self.codec) if lowrank is None else None
        self.last_checked: list[int] = []
        beta = config.resolved().worker_momentum
        self.momentum = WorkerMomentum(beta) if beta > 0 else None
        self.previous: torch.Tensor | None = None
        if self.aggregator.uses_history and (lowrank is not None or self.verifier is not None):
            raise ConfigError(
                "aggregation.clip_start", "previous",
                "needs the butterfly path without verification (not with compression.kind = 'lowrank' "
                "or aggregation.verify_fraction > 0)",
            )  # fmt: skip

    # ----------------------------------------------------------------------------------------- round
    def prepare(self, named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What this worker sends for ``named``: its momentum with ``worker_momentum``, else ``named``."""
        return self.momentum(named) if self.momentum is not None else named

    def reduce(self, named: dict[str, torch.Tensor], weight: float = 1.0) -> dict[str, torch.Tensor]:
        return self.reduce_prepared(self.prepare(named), weight)

    def reduce_prepared(self, named: dict[str, torch.Tensor], weight: float = 1.0) -> dict[str, torch.Tensor]:
        """One round on what :meth:`prepare` returned (or on what an attacker forged in its place)."""
        # With error feedback the worker contributes (and declares the norm of) its corrected update.
        corrected = self.residuals.corrected(named) if self.residuals is not None else named
        vector = flatten(corrected)
        summaries = self._gather_summaries(named, vector, weight)
        numel = self._consensus(summaries, 1)
        weights = self._screen(summaries, numel)
        declared = summaries[:, 5]

        layout = ShardLayout(numel, self.comm.world_size)
        previous = None
        if self.aggregator.uses_history and self.previous is not None and self.previous.numel() == numel:
            previous = layout.split(self.previous)[self.comm.rank]  # the owner's shard is its rank's

        def owner_rule(stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self._owner_rule(stack, weights, declared, previous)

        accepted = bool(weights[self.comm.rank] > 0)
        if self.lowrank is not None:
            result, verdicts = self._gather_lowrank(corrected, accepted, layout, owner_rule)
        else:
            result, verdicts = self._butterfly(corrected, vector, accepted, layout, owner_rule)
        self._strike_flagged(verdicts)
        if self.aggregator.uses_history:
            self.previous = result.detach().float().clone()
        self.round += 1
        if vector.numel() == numel:
            return unflatten(result, named)
        return {"update": result}

    # ------------------------------------------------------------------------------------ wire path
    def _butterfly(
        self,
        corrected: dict[str, torch.Tensor],
        vector: torch.Tensor,
        accepted: bool,
        layout: ShardLayout,
        rule: ShardRule,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Shards in :attr:`codec` through the butterfly; a left-out worker sends zeros."""
        mine = vector if accepted else torch.zeros(layout.numel)
        verifier = self.verifier
        if verifier is not None:  # BTARD's checks of the owners (farsync.collectives.verification)
            verifier.commit(mine, layout)
            guarded = verifier.guard(rule, self.comm.rank)
            result, verdicts = butterfly_reduce(self.comm, mine, layout, guarded, codec=self.codec)
            excluded = set(self.strikes.excluded)
            checked = verifier.verify(self.round, mine, layout, rule, result, verdicts, excluded)
            result, verdicts = checked.result, checked.sides
            self.last_checked = checked.checked
            for worker, reason in checked.bans.items():
                self.last_rejected[worker] = reason
                self.strikes.exclude(worker, self.round, reason)
        else:
            result, verdicts = butterfly_reduce(self.comm, mine, layout, rule, codec=self.codec)
        if self.residuals is not None:
            sent = None
            if accepted:
                shards = [self.codec.round_trip(shard) for shard in layout.split(vector)]
                sent = unflatten(layout.join(shards), corrected)
            self.residuals.keep_unsent(corrected, sent)
        return result, verdicts

    def _gather_lowrank(
        self, corrected: dict[str, torch.Tensor], accepted: bool, layout: ShardLayout, rule: ShardRule
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Each worker's own low-rank message over the gather path; a left-out worker sends zeros."""
        lowrank = self.lowrank
        assert lowrank is not None
        like = {name: t.shape for name, t in corrected.items()}
        if accepted:
            message = lowrank.encode(corrected)
        else:  # zero bytes decode to zero factors in every factor codec; the warm start is left alone
            message = torch.zeros(lowrank.num_bytes(like.values()), dtype=torch.uint8)

        def decode(raw: torch.Tensor) -> torch.Tensor:
            values = flatten(lowrank.decode(raw, like))
            if values.numel() != layout.numel:
                raise ValueError(f"decoded {values.numel()} values, the group agreed on {layout.numel}")
            return values

        result, verdicts = gather_shard_reduce(self.comm, message, decode, layout, rule)
        if self.residuals is not None:
            self.residuals.keep_unsent(corrected, lowrank.decode(message, like) if accepted else None)
        return result, verdicts

    def _owner_rule(
        self,
        stack: torch.Tensor,
        weights: torch.Tensor,
        declared: torch.Tensor,
        previous: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This owner's shard from the accepted senders, and a verdict per sender (see :data:`_VERDICTS`)."""
        self.aggregator.reseed(self.round)  # a verifier re-computing this shard draws the same buckets
        norms = torch.linalg.vector_norm(stack, dim=1, dtype=torch.float64)
        mismatch = (~torch.isfinite(norms) | (norms > declared * (1 + self.shard_slack) + 1e-12)) & (
            weights > 0
        )
        accepted = torch.where(mismatch, torch.zeros_like(weights), weights).float()
        stack = torch.nan_to_num(stack)
        reduced = self.aggregator(stack, accepted, previous)
        verdicts = mismatch.float()
        ratio = self.config.outlier_ratio
        if ratio > 0 and int((accepted > 0).sum()) >= 3:
            distances = torch.linalg.vector_norm(stack - reduced, dim=1)
            typical = float(distances[accepted > 0].median())
            outliers = (accepted > 0) & (distances > ratio * typical) & (typical > 0)
            verdicts = torch.where(outliers, torch.full_like(verdicts, 2.0), verdicts)
        return reduced, verdicts

    def _gather_summaries(
        self, named: dict[str, torch.Tensor], vector: torch.Tensor, weight: float
    ) -> torch.Tensor:
        finite = bool(torch.isfinite(vector).all())
        norm = float(torch.linalg.vector_norm(vector, dtype=torch.float64)) if finite else float("inf")
        header = torch.tensor(
            [
                float(weight),
                float(vector.numel()),
                float(_dtype_code(named)),
                float(_shape_signature(named)),
                1.0 if finite else 0.0,
                norm,
            ],
            dtype=torch.float64,
        )
        return torch.stack(self.comm.all_gather(header).wait())

    @staticmethod
    def _consensus(summaries: torch.Tensor, column: int) -> int:
        """The most common value in ``column`` (the smallest on ties): what honest workers agree on."""
        counts = Counter(int(v) for v in summaries[:, column].tolist())
        best = max(counts.values())
        return min(value for value, count in counts.items() if count == best)

    def _screen(self, summaries: torch.Tensor, numel: int) -> torch.Tensor:
        """Per-worker weight for this round (float64): 0 for left-out, excluded and rejected workers."""
        dtype_code = self._consensus(summaries, 2)
        signature = self._consensus(summaries, 3)
        max_norm = self.config.max_norm if self.config.max_norm > 0 else None
        expected_dtype = _CODE_DTYPES.get(dtype_code, torch.float32)
        weights = summaries[:, 0].clone()
        self.last_rejected = {}
        for worker, row in enumerate(summaries.tolist()):
            weight, size, code, shape_sig, finite, norm = row
            if self.strikes.is_excluded(worker) or weight <= 0:
                weights[worker] = 0.0
                continue
            reason: str | None
            if int(code) != dtype_code:
                reason = f"wrong dtype: expected {expected_dtype}, got {_dtype_name(int(code))}"
            else:
                summary = UpdateSummary(
                    shape=(int(size),), dtype=expected_dtype, finite=bool(finite), norm=norm
                )
                reason = check_summary(
                    summary, expected_numel=numel, expected_dtype=expected_dtype, max_norm=max_norm
                )
            if reason is None and int(shape_sig) != signature:
                reason = "wrong shape: tensor shapes differ from the other workers'"
            if reason is not None:
                weights[worker] = 0.0
                self._strike(worker, reason)
        return weights

    def _strike_flagged(self, verdicts: list[torch.Tensor]) -> None:
        worst = torch.stack(verdicts).amax(dim=0)  # the same all-gathered verdicts on every worker
        for worker in torch.nonzero(worst > 0).flatten().tolist():
            self._strike(int(worker), _VERDICTS[int(worst[worker])])

    def _strike(self, worker: int, reason: str) -> None:
        self.last_rejected[worker] = reason
        self.strikes.record(worker, self.round, reason)

    # -------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "strikes": self.strikes.state_dict(),
            "residuals": self.residuals.state_dict() if self.residuals is not None else {},
            "lowrank": self.lowrank.state_dict() if self.lowrank is not None else {},
            "momentum": self.momentum.state_dict() if self.momentum is not None else {},
            "previous": self.previous,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.round = int(state["round"])
        self.strikes.load_state_dict(state["strikes"])
        if self.residuals is not None:
            self.residuals.load_state_dict(state.get("residuals", {}))
        if self.lowrank is not None:
            self.lowrank.load_state_dict(state.get("lowrank", {}))
        if self.momentum is not None:
            self.momentum.load_state_dict(state.get("momentum", {}))
        self.previous = state.get("previous")


def _verifier(comm: Communicator, config: AggregationConfig, codec: WireCodec) -> ShardVerifier | None:
    """The owners' verification on its own ledger channel, ``"verify"`` (``None`` when disabled)."""
    if config.verify_fraction <= 0:
        return None
    channel = Communicator(
        comm.group,
        comm.rank,
        comm.world_size,
        ledger=comm.ledger,
        clock=comm.clock,
        link=comm.link,
        channel="verify",
    )
    return ShardVerifier(channel, fraction=config.verify_fraction, seed=config.verify_seed, codec=codec)


def _wire(compression: CompressionConfig) -> tuple[WireCodec, LowRankCodec | None]:
    """The same encoding ``compression.kind`` has without robust aggregation (module docstring)."""
    if compression.adaptive:
        logger.warning(
            "robust aggregation uses the fixed compression.kind=%s; compression.adaptive is ignored",
            compression.kind,
        )
    codec = wire_codec(
        compression.kind,
        bits=compression.bits,
        block_size=compression.block_size,
        topk_fraction=compression.topk_fraction,
    )
    if compression.kind == "lowrank":
        return codec, LowRankCodec(compression.rank, compression.bits, compression.block_size)
    return codec, None


def build_robust_reducer(
    aggregation: AggregationConfig,
    comm: Communicator,
    inner: Reducer | None = None,
    *,
    compression: CompressionConfig | None = None,
) -> Reducer:
    """The robust reducer for ``aggregation`` over ``comm`` (see the module docstring).

    It replaces ``inner`` (a compressed reducer, if any, is replaced too: ``compression``, default none, then
    encodes the shards on the wire instead).
    """
    if inner is not None and not isinstance(inner, RobustReducer) and type(inner).__name__ != "MeanReducer":
        logger.info(
            "robust aggregation replaces %s; shards are compressed on the wire instead", type(inner).__name__
        )
    compression = compression if compression is not None else CompressionConfig()
    codec, lowrank = _wire(compression)
    error_feedback = compression.error_feedback and compression.kind != "none"
    return RobustReducer(comm, aggregation, codec=codec, lowrank=lowrank, error_feedback=error_feedback)
