"""Verified shard owners for the butterfly: BTARD's accuse-and-ban, on a random sample of owners per round.

In the butterfly (:mod:`farsync.collectives.butterfly`) every value passes through one owner, and a
Byzantine owner can publish anything for its shard. BTARD (Gorbunov et al. 2021, "Secure Distributed
Training at Scale", arXiv 2106.11257, Section 3.2) has peers re-compute a random sample of the owners'
aggregates and ban the owners caught lying, and the accusers of honest owners. :class:`ShardVerifier` does
the same around one butterfly round, with the owner's rule given as a function (deterministic on every
worker: the same stack gives the same shard and side vector):

1. **Commit** (before the butterfly): every worker all-gathers an 8-byte digest of each shard it sends, as
   its receiver will decode it. An owner that decodes a shard whose digest differs from its sender's
   commitment leaves that sender out (a non-finite row for the rule) and publishes the dispute (side code
   :data:`DISPUTED`); without signed messages nobody can tell which of the two lied, so both are banned,
   as in BTARD, which keeps an honest majority honest (one of the two is Byzantine). A party counts in
   one dispute per round, so a Byzantine worker disputing everyone removes one honest worker, not all.
2. **Redo** excluded owners' shards: an excluded owner still receives its shard, but its output is ignored;
   the next live rank receives the shard from every worker (point to point) and broadcasts its result.
3. **Sample**: after the round, ``ceil(fraction * n)`` shards and a verifier for each (another live worker)
   are drawn from a digest of everything the round published, which no owner knows before it publishes
   its own part (BTARD draws them with a multi-party random generator). Every worker sends its shard to the
   verifier, who checks it against the sender's commitment and re-computes the owner's rule (with the
   disputes the owner published). A mismatch is an accusation; a sender whose bytes break its commitment
   is disputed (both banned).
4. **Resolve**: the verifiers' reports are all-gathered. For each accusation every worker all-gathers the
   shard in question (everyone's commitment is public, so a sender cannot change it) and re-computes the
   rule: if the owner's published shard differs it is banned and the re-computed shard replaces it this
   round (the shard is redone); otherwise the accuser is banned.

A lying owner sampled with probability ``k / n`` per round is caught within ``r`` rounds with probability
``1 - (1 - k / n) ** r``. Cost per worker and round, on its own ledger channel (``"verify"``): ``8 n``
bytes of commitments (all-gathered), one encoded shard (``~S / n``) per sampled owner it does not verify,
``k (n + 1)`` report bytes (all-gathered), plus, rarely, the public re-checks and redone shards.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from farsync.collectives.butterfly import ShardLayout
from farsync.comm.communicator import Communicator, Handle
from farsync.compress.codecs import Fp32Codec, WireCodec, as_bytes, from_bytes

__all__ = ["DISPUTED", "ShardVerifier", "VerificationOutcome"]

logger = logging.getLogger(__name__)

DISPUTED = 3.0
"""Side-vector code an owner publishes for a sender whose shard broke its commitment."""

ShardRuleFactory = Callable[[], Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]]
_DIGEST = 8
_OK, _ACCUSED = 0, 1
_TAG_REDO, _TAG_CHECK = 7100, 7200


@dataclass
class VerificationOutcome:
    """What one round of verification decided (identical on every worker)."""

    result: torch.Tensor
    """The reduced vector, with redone shards (excluded or caught owners) replaced."""
    sides: list[torch.Tensor]
    """Every shard's side vector, with redone shards' replaced."""
    checked: list[int] = field(default_factory=list)
    """Shards whose owner was re-computed by a verifier this round."""
    bans: dict[int, str] = field(default_factory=dict)
    """Workers to exclude now, with the reason."""


def _digest(values: torch.Tensor) -> torch.Tensor:
    raw = as_bytes(values.detach().to(torch.float32).contiguous()).numpy().tobytes()
    return torch.frombuffer(bytearray(hashlib.blake2b(raw, digest_size=_DIGEST).digest()), dtype=torch.uint8)


class ShardVerifier:
    """Commitments, redone shards and sampled re-computation around a butterfly round (module docstring).

    Args:
        comm: a communicator over the butterfly's group, usually on its own ledger channel ``"verify"``.
        fraction: share of the shards re-computed each round, in ``(0, 1]``.
        seed: mixed into the shared draw of shards and verifiers.
        codec: the butterfly's wire codec (shards both ways).
        tolerance: relative tolerance when comparing a re-computed shard with the published one.
    """

    def __init__(
        self,
        comm: Communicator,
        *,
        fraction: float,
        seed: int = 0,
        codec: WireCodec | None = None,
        tolerance: float = 1e-5,
    ) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(
                f"fraction must be in (0, 1] (share of the owners checked per round), got {fraction}"
            )
        self.comm, self.fraction, self.seed = comm, fraction, seed
        self.codec = codec if codec is not None else Fp32Codec()
        self.tolerance = tolerance
        self.commitments = torch.zeros(comm.world_size, comm.world_size, _DIGEST, dtype=torch.uint8)

    @property
    def num_checked(self) -> int:
        return math.ceil(self.fraction * self.comm.world_size)

    # ------------------------------------------------------------------------------------------ commit
    def commit(self, vector: torch.Tensor, layout: ShardLayout) -> None:
        """All-gathers the digest of every shard this worker sends, as its owner will decode it."""
        digests = torch.cat([_digest(self.codec.round_trip(shard)) for shard in layout.split(vector)])
        gathered = self.comm.all_gather(digests).wait()
        self.commitments = torch.stack([d.reshape(-1, _DIGEST) for d in gathered])

    def disputed(self, stack: torch.Tensor, shard: int) -> torch.Tensor:
        """Senders whose row of ``shard`` (as decoded) does not match their commitment (bool, ``[n]``)."""
        return torch.tensor(
            [not torch.equal(_digest(row), self.commitments[i, shard]) for i, row in enumerate(stack)]
        )

    def guard(self, rule: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], shard: int) -> Callable[
        [torch.Tensor], tuple[torch.Tensor, torch.Tensor]
    ]:  # fmt: skip
        """``rule`` for ``shard`` with the commitment check: disputed rows are left out and published."""

        def guarded(stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return _with_disputes(rule, stack, self.disputed(stack, shard))

        return guarded

    # ------------------------------------------------------------------------------------------ verify
    def verify(
        self,
        round_index: int,
        vector: torch.Tensor,
        layout: ShardLayout,
        rule: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        result: torch.Tensor,
        sides: list[torch.Tensor],
        excluded: set[int],
    ) -> VerificationOutcome:
        """Redo excluded owners' shards, check a sample of owners and resolve accusations (module docstring).

        ``rule`` is the owners' rule without the commitment check (it is applied here); ``result`` and
        ``sides`` are what the butterfly returned; ``excluded`` are the workers excluded so far.
        """
        shards = [s.clone() for s in layout.split(result)]
        sides = [s.clone() for s in sides]
        outcome = VerificationOutcome(result=result, sides=sides)
        mine = [self.codec.encode(shard) for shard in layout.split(vector)]
        live = [rank for rank in range(self.comm.world_size) if rank not in excluded]
        if not live:
            return outcome
        n = self.comm.world_size
        acting = {j: j if j not in excluded else _next_live(j, live, n) for j in range(n)}
        for shard, owner in acting.items():
            if owner == shard:
                self._ban_disputes(sides[shard], owner, outcome)
        self._redo_excluded(layout, rule, mine, acting, shards, sides, outcome)
        drawn = self._draw(round_index, shards, sides, acting, live)
        outcome.checked = [j for j, _ in drawn]
        if drawn:
            reports = self._check(layout, rule, mine, drawn, shards, sides)
            self._resolve(layout, rule, mine, drawn, reports, acting, shards, sides, outcome)
        outcome.result = layout.join(shards)
        outcome.sides = sides
        return outcome

    def _redo_excluded(
        self,
        layout: ShardLayout,
        rule: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        mine: list[torch.Tensor],
        acting: dict[int, int],
        shards: list[torch.Tensor],
        sides: list[torch.Tensor],
        outcome: VerificationOutcome,
    ) -> None:
        for shard, owner in acting.items():
            if owner == shard:
                continue
            stack = self._collect(layout, mine, shard, owner, _TAG_REDO + shard)
            packet_size = self.codec.num_bytes(layout.shard_size) + 4 * self.comm.world_size
            packet = torch.zeros(packet_size, dtype=torch.uint8)
            if stack is not None:
                reduced, side = self.guard(rule, shard)(stack)
                packet = torch.cat([self.codec.encode(reduced), as_bytes(side.float())])
            self.comm.broadcast(packet, src=owner).wait()
            shards[shard], sides[shard] = self._unpack(packet, layout)
            self._ban_disputes(sides[shard], owner, outcome)

    def _draw(
        self,
        round_index: int,
        shards: list[torch.Tensor],
        sides: list[torch.Tensor],
        acting: dict[int, int],
        live: list[int],
    ) -> list[tuple[int, int]]:
        """``(shard, verifier)`` pairs drawn from the round's published values (the same everywhere)."""
        material = hashlib.blake2b(digest_size=8)
        material.update(f"{self.seed}/{round_index}".encode())
        for tensor in (*shards, *sides):
            material.update(tensor.contiguous().numpy().tobytes())
        generator = torch.Generator().manual_seed(int.from_bytes(material.digest(), "little") >> 1)
        order = torch.randperm(self.comm.world_size, generator=generator).tolist()
        drawn = []
        for shard in order[: self.num_checked]:
            candidates = [rank for rank in live if rank != acting[shard]]
            if candidates:
                pick = int(torch.randint(len(candidates), (1,), generator=generator))
                drawn.append((shard, candidates[pick]))
        return drawn

    def _check(
        self,
        layout: ShardLayout,
        rule: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        mine: list[torch.Tensor],
        drawn: list[tuple[int, int]],
        shards: list[torch.Tensor],
        sides: list[torch.Tensor],
    ) -> torch.Tensor:
        """Every worker's report (``[n, k, n + 1]`` uint8): per drawn shard, accusation and disputed senders."""
        n = self.comm.world_size
        report = torch.zeros(len(drawn), n + 1, dtype=torch.uint8)
        for slot, (shard, verifier) in enumerate(drawn):
            stack = self._collect(layout, mine, shard, verifier, _TAG_CHECK + slot)
            if stack is None:
                continue
            equivocated = self.disputed(stack, shard)
            report[slot, 1:] = equivocated.to(torch.uint8)
            if bool(equivocated.any()):
                continue  # the sender is disputed; the owner cannot be judged on this stack
            if not self._matches(layout, rule, stack, shard, shards[shard], sides[shard]):
                report[slot, 0] = _ACCUSED
        gathered = self.comm.all_gather(report.reshape(-1)).wait()
        return torch.stack([g.reshape(len(drawn), n + 1) for g in gathered])

    def _resolve(
        self,
        layout: ShardLayout,
        rule: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        mine: list[torch.Tensor],
        drawn: list[tuple[int, int]],
        reports: torch.Tensor,
        acting: dict[int, int],
        shards: list[torch.Tensor],
        sides: list[torch.Tensor],
        outcome: VerificationOutcome,
    ) -> None:
        for slot, (shard, verifier) in enumerate(drawn):
            report = reports[verifier, slot]
            for sender in torch.nonzero(report[1:]).flatten().tolist()[:1]:  # one pair per accuser and round
                _ban(outcome, verifier, f"disputed sender {sender}'s shard {shard} (both banned)")
                _ban(outcome, int(sender), f"shard {shard} disputed by verifier {verifier} (both banned)")
            if int(report[0]) != _ACCUSED:
                continue
            # Public re-check: everyone all-gathers the shard; commitments are public, so nobody can swap it.
            gathered = self.comm.all_gather(mine[shard]).wait()
            stack = torch.stack([self.codec.decode(raw, layout.shard_size) for raw in gathered])
            broken = self.disputed(stack, shard)
            for sender in torch.nonzero(broken).flatten().tolist():
                _ban(outcome, int(sender), f"published a shard {shard} other than it committed")
            owner = acting[shard]
            if self._matches(layout, rule, stack, shard, shards[shard], sides[shard]):
                _ban(outcome, verifier, f"falsely accused the owner of shard {shard}")
                continue
            _ban(outcome, owner, f"published a wrong aggregate for shard {shard} (caught by {verifier})")
            reduced, side = _with_disputes(rule, stack, _published_disputes(sides[shard]) | broken)
            shards[shard] = self.codec.round_trip(reduced)
            sides[shard] = side.float()

    # ------------------------------------------------------------------------------------------ helpers
    def _collect(
        self, layout: ShardLayout, mine: list[torch.Tensor], shard: int, receiver: int, tag: int
    ) -> torch.Tensor | None:
        """Every worker's encoded ``shard``, sent to ``receiver`` (who returns the decoded stack)."""
        rank, n = self.comm.rank, self.comm.world_size
        if rank != receiver:
            self.comm.send(mine[shard], receiver, tag).wait()
            return None
        size = self.codec.num_bytes(layout.shard_size)
        buffers = [torch.empty(size, dtype=torch.uint8) for _ in range(n)]
        handles: list[Handle[torch.Tensor]] = [
            self.comm.recv(buffers[src], src, tag) for src in range(n) if src != rank
        ]
        for handle in handles:
            handle.wait()
        buffers[rank] = mine[shard]
        return torch.stack([self.codec.decode(raw, layout.shard_size) for raw in buffers])

    def _matches(
        self,
        layout: ShardLayout,
        rule: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        stack: torch.Tensor,
        shard: int,
        published: torch.Tensor,
        side: torch.Tensor,
    ) -> bool:
        """Whether the owner's published shard and side are what the rule gives on ``stack``."""
        reduced, recomputed_side = _with_disputes(rule, stack, _published_disputes(side))
        valid = max(0, min(layout.shard_size, layout.numel - shard * layout.shard_size))
        expected = self.codec.round_trip(reduced)[:valid]
        scale = float(expected.abs().max()) if valid else 0.0
        close = torch.allclose(published[:valid], expected, rtol=self.tolerance, atol=self.tolerance * scale)
        return close and torch.equal(recomputed_side.float(), side.float())

    def _unpack(self, packet: torch.Tensor, layout: ShardLayout) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.codec.num_bytes(layout.shard_size)
        shard = self.codec.decode(packet[:size], layout.shard_size)
        return shard, from_bytes(packet, size, self.comm.world_size, torch.float32)

    def _ban_disputes(self, side: torch.Tensor, owner: int, outcome: VerificationOutcome) -> None:
        # One pair per owner and round: a Byzantine owner disputing everyone costs the others one worker,
        # as a Byzantine sender equivocating to an honest owner does.
        for sender in torch.nonzero(side == DISPUTED).flatten().tolist()[:1]:
            _ban(outcome, owner, f"disputed sender {sender} (both banned)")
            _ban(outcome, int(sender), f"disputed by owner {owner} (both banned)")


def _published_disputes(side: torch.Tensor) -> torch.Tensor:
    return side == DISPUTED


def _with_disputes(
    rule: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    stack: torch.Tensor,
    disputed: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``rule`` with the ``disputed`` rows left out (non-finite rows, which every owner rule drops) and
    marked :data:`DISPUTED` in the side vector."""
    if bool(disputed.any()):
        stack = stack.clone()
        stack[disputed] = float("nan")
    reduced, side = rule(stack)
    side = side.clone().float()
    side[disputed] = DISPUTED
    return reduced, side


def _next_live(shard: int, live: list[int], world_size: int) -> int:
    """The first live rank after ``shard``, cyclically: the substitute owner of an excluded owner's shard."""
    return min(live, key=lambda rank: (rank - shard) % world_size)


def _ban(outcome: VerificationOutcome, worker: int, reason: str) -> None:
    outcome.bans.setdefault(worker, reason)
