"""The elastic reducer: an algorithm's reducer whose group follows the run's changing membership.

It wraps the configured reducer (``build_reducer``: mean, compressed, robust, ...). Each call of
:meth:`ElasticReducer.reduce` is one round boundary:

1. arrive at the coordinator with this worker's round, global-weight hash and pseudo-gradient flag, and wait
   for the quorum's decision (the coordinator waits for the other members, or for a dead one's heartbeat to
   time out, or for ``min_workers``);
2. if the quorum id changed, build a new gloo group for the members on ``PrefixStore(elastic/<epoch>/q<id>)``
   (and a new inner reducer over it, carrying over its state, e.g. error-feedback residuals);
3. heal: the source sends its outer state to any member whose state differs (a newcomer);
4. run the inner reducer's collective; a healed member contributes weight 0;
5. report success; the coordinator commits the boundary only if every live member succeeded.

If a member dies or hangs mid-collective, gloo raises (a closed connection, or ``collective_timeout_s``),
the broken group is aborted and the boundary is retried with a quorum without the lost worker: **only the
collective is redone**, with the pseudo-gradient this worker still holds. Inner steps are never repeated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.distributed as dist

from farsync.algorithms.diloco import OuterState
from farsync.comm.clock import Clock
from farsync.comm.communicator import Communicator
from farsync.comm.groups import make_group
from farsync.config import RunConfig
from farsync.elastic.client import CoordinatorClient
from farsync.elastic.healing import send_outer_state
from farsync.elastic.quorum import Decision
from farsync.reducers.base import Reducer
from farsync.train.build import link_for_group

__all__ = ["ElasticReducer", "ElasticTarget"]

logger = logging.getLogger(__name__)


class ElasticTarget(Protocol):
    """The worker state the elastic reducer reads and heals (:class:`farsync.elastic.worker.ElasticMember`,
    over its training loop)."""

    @property
    def outer(self) -> OuterState:
        """The DiLoCo outer state (global weights and outer momentum) healing sends and receives."""
        ...

    def arrival_state(self, pending: bool) -> dict[str, Any]:
        """``round``, ``step`` (inner steps done at this boundary) and ``sha`` of the global weights."""
        ...

    def on_healed(self, decision: Decision, pending: bool) -> None:
        """Counters, inner optimizer and sampler after the outer state was replaced."""
        ...


class ElasticReducer(Reducer):
    """Reduces over the current quorum; rebuilds the group and retries the collective when it breaks.

    Args:
        local_comm: the worker's world-size-1 communicator (its ledger and clock are shared by every group).
        client: the connection to the coordinator.
        config: the run configuration (reducer layers, link, collective timeout).
        build_inner: makes the configured reducer over a quorum's communicator.
        sink: where quorum and healing records go (``metrics.jsonl``).
    """

    def __init__(
        self,
        local_comm: Communicator,
        *,
        client: CoordinatorClient,
        config: RunConfig,
        build_inner: Callable[[Communicator], Reducer],
        sink: Callable[[dict[str, Any]], None],
    ) -> None:
        super().__init__(local_comm)
        self.client, self.config, self.build_inner, self.sink = client, config, build_inner, sink
        self.target: ElasticTarget | None = None
        self.inner: Reducer = build_inner(local_comm)
        self.group: dist.ProcessGroup | None = None
        self.group_key: tuple[str, int] | None = None
        self.quorum_comm = local_comm
        self.decision: Decision | None = None
        self.rounds_lost = 0
        self.inner_steps_lost = 0
        self.retries = 0
        self.heal_times: list[float] = []

    @property
    def clock(self) -> Clock:
        return self.comm.clock

    # --------------------------------------------------------------------------------------- reduce
    def reduce(self, named: dict[str, torch.Tensor], weight: float = 1.0) -> dict[str, torch.Tensor]:
        _, averaged = self.synchronise(named, weight, pending=True)
        assert averaged is not None, "a boundary with a pseudo-gradient always reduces"
        return averaged

    def synchronise(
        self, named: dict[str, torch.Tensor], weight: float, *, pending: bool
    ) -> tuple[Decision, dict[str, torch.Tensor] | None]:
        """One boundary, retried until committed; returns the decision and the average (None: no collective)."""
        assert self.target is not None, "attach a target before synchronising"
        holds_update = pending
        saved_inner = self.inner.state_dict()
        while True:
            state = self.target.arrival_state(pending)
            decision = Decision.from_dict(
                self.client.call(
                    {"type": "arrive", "pending": holds_update, **state}, wait_message="waiting for a quorum"
                )
            )
            ok, averaged, healed = self._attempt(decision, named, weight if holds_update else 0.0, pending)
            if healed and holds_update:
                # Our pseudo-gradient belonged to a stale round: it is discarded (counted, never silent).
                holds_update = False
                self.rounds_lost += 1
                self.inner_steps_lost += self.config.algorithm.num_inner_steps
            committed = bool(
                self.client.call({"type": "done", "boundary": decision.boundary, "ok": ok}).get("commit")
            )
            if committed:
                self.decision = decision
                return decision, averaged if decision.reduce else None
            self.retries += 1
            logger.warning(
                "worker %d: boundary %d not committed; retrying the collective without the lost worker",
                self.client.slot,
                decision.boundary,
            )
            self._drop_group(abort=True)
            self.inner.load_state_dict(saved_inner)

    def _attempt(
        self, decision: Decision, named: dict[str, torch.Tensor], weight: float, pending: bool
    ) -> tuple[bool, dict[str, torch.Tensor] | None, bool]:
        assert self.target is not None
        slot = self.client.slot
        assert slot is not None
        healed = False
        try:
            begin = self.clock.now()
            self._ensure_group(decision)
            if decision.reason != "unchanged" and slot == decision.source:
                self.sink({"kind": "quorum", "worker": slot, **decision.to_dict()})
            if decision.healers:
                healers = [decision.rank_of(h) for h in decision.healers]
                send_outer_state(
                    self.quorum_comm, decision.rank_of(decision.source), healers, self.target.outer
                )
                if slot in decision.healers:
                    self.target.on_healed(decision, pending)
                    healed = True
                    healing_s = self.clock.now() - begin
                    self.heal_times.append(healing_s)
                    self.sink(
                        {
                            "kind": "heal",
                            "worker": slot,
                            "round": decision.round,
                            "step": decision.step,
                            "source": decision.source,
                            "quorum_id": decision.quorum_id,
                            "healing_s": healing_s,
                        }
                    )
            averaged = self.inner(named, 0.0 if healed else weight) if decision.reduce else None
            return True, averaged, healed
        except (RuntimeError, OSError, ValueError) as error:  # gloo raises RuntimeError subclasses
            logger.warning(
                "worker %d: quorum %d failed at boundary %d: %s",
                slot,
                decision.quorum_id,
                decision.boundary,
                str(error).splitlines()[0] if str(error) else repr(error),
            )
            return False, None, healed

    # --------------------------------------------------------------------------------------- groups
    def _ensure_group(self, decision: Decision) -> None:
        assert self.client.epoch is not None and self.client.slot is not None
        key = (self.client.epoch, decision.quorum_id)
        if key == self.group_key:
            return
        self._drop_group(abort=False)
        size, rank = len(decision.members), decision.rank_of(self.client.slot)
        self.group = make_group(
            self.client.store,
            f"elastic/{key[0]}/q{key[1]}",
            rank,
            size,
            timeout_s=self.config.elastic.collective_timeout_s,
        )
        self.group_key = key
        self.quorum_comm = Communicator(
            self.group,
            rank,
            size,
            ledger=self.comm.ledger,
            clock=self.comm.clock,
            link=link_for_group(self.config.network, list(decision.members)),
        )
        state = self.inner.state_dict()
        self.inner = self.build_inner(self.quorum_comm)
        try:
            self.inner.load_state_dict(state)
        except (KeyError, ValueError, RuntimeError, TypeError) as error:
            logger.info(
                "worker %d: reducer state not carried over to the new quorum (%s)", self.client.slot, error
            )

    def _drop_group(self, *, abort: bool) -> None:
        group, self.group, self.group_key = self.group, None, None
        if group is not None and abort:
            try:
                group.abort()
            except (RuntimeError, AttributeError) as error:
                logger.debug("abort of a broken group failed: %s", error)

    # ---------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, object]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.inner.load_state_dict(state)

    def metrics(self) -> dict[str, Any]:
        decision = self.decision
        return {
            "quorum_id": decision.quorum_id if decision else -1,
            "quorum_size": len(decision.members) if decision else 0,
            "rounds_lost": self.rounds_lost,
            "collective_retries": self.retries,
        }
