"""Attack simulation as a reducer wrapper: a Byzantine worker sends ``attack(update, ctx)`` instead of its
honest update, then the round goes on through the wrapped reducer as usual.

Wrapping the reducer reaches the averaging step of every algorithm (DDP gradients, DiLoCo and DiLoCoX
pseudo-gradients, FedAvg models), so one attack tests one defence everywhere. The attack signature and the
built-in attacks are in :mod:`farsync.sim.attacks`.

Built-in parameters: ``byzantine.scale`` is sign flip's multiplier, the Gaussian's standard deviation and
the constant's value; ALIE derives its shift from the number of workers and of attackers; ``stale`` replays
the update from :data:`STALE_ROUNDS` rounds ago; ``label_flip`` sends its update unchanged (the worker's
labels are flipped in the data, see :func:`farsync.train.task.build_task`). ``byzantine.params`` passes
any factory keyword (``{eps = 0.1}`` for ``ipm``, ``{z = 1.5}`` for ``alie``, ``{perturbation = "unit"}`` for
``min_max``/``min_sum``, ``{target = 2}`` for ``mimic``) and wins over the ``scale`` mapping. A plug-in
factory receives ``scale=byzantine.scale`` when it accepts a ``scale`` keyword, and ``byzantine.params``.

Worker momentum: when ``inner`` is the robust reducer, every worker first turns its update into what it
would send (:meth:`~farsync.reducers.robust.RobustReducer.prepare`: its momentum with
``aggregation.worker_momentum``), so the attack forges from the honest vectors of the round as sent, and the
forgery goes to ``reduce_prepared`` untouched: an attacker's momentum is whatever it chooses to send.

Collusion: ``ctx.honest_updates`` holds the honest updates of every Byzantine worker this round and
``ctx.honest_peers`` those of the honest workers. They are obtained with an all-gather over the same
process group on a separate :class:`Communicator` (channel ``"simulation"``) with its own
:class:`ByteLedger` and no emulated link, so the run's reported bytes and time are real traffic only;
:attr:`AttackingReducer.simulation_ledger` holds what the simulation moved. Built-in attacks that read
neither skip that gather and see only their own update.
"""

from __future__ import annotations

import inspect
import logging
from collections import deque
from typing import Any

import torch

from farsync.comm.communicator import Communicator
from farsync.comm.ledger import ByteLedger
from farsync.config import ByzantineConfig, ConfigError, RunConfig
from farsync.reducers.base import Reducer, flatten, unflatten
from farsync.reducers.robust import RobustReducer
from farsync.sim.attacks import LABEL_FLIP, Attack, AttackContext, _resolve_factory, alie_z, load_attack

__all__ = ["STALE_ROUNDS", "AttackingReducer", "build_attack", "build_attacking_reducer"]

logger = logging.getLogger(__name__)

STALE_ROUNDS = 5
"""How many rounds back the built-in ``stale`` attack replays."""

_SCALED = {"sign_flip": "scale", "gaussian": "std", "constant": "value"}
_IGNORE_COLLUDERS = ("sign_flip", "gaussian", "constant", LABEL_FLIP, "stale")
_HISTORY = 16


def build_attack(config: ByzantineConfig) -> Attack:
    """The configured attack with its parameters (see the module docstring)."""
    spec = config.attack
    params: dict[str, object] = dict(config.params)
    if spec in _SCALED:
        params.setdefault(_SCALED[spec], config.scale)
    elif spec == "stale":
        params.setdefault("k", STALE_ROUNDS)
    elif ":" in spec:
        try:
            accepts_scale = "scale" in inspect.signature(_resolve_factory(spec)).parameters
        except (TypeError, ValueError):
            accepts_scale = False
        if accepts_scale:
            params.setdefault("scale", config.scale)
    return load_attack(spec, **params)


class AttackingReducer(Reducer):
    """Replaces a Byzantine worker's update by the attack's forgery, then reduces through ``inner``.

    Honest workers pass straight through (they still take part in the collusion gather when the attack
    needs it, because it is a collective). Failure: an attack that raises stops the worker, as a bug would.
    """

    def __init__(
        self,
        comm: Communicator,
        inner: Reducer,
        attack: Attack,
        byzantine: list[int],
        *,
        seed: int = 0,
        gather_colluders: bool = True,
    ) -> None:
        super().__init__(comm)
        self.inner = inner
        self.attack = attack
        self.byzantine = sorted(set(byzantine))
        self.is_byzantine = comm.rank in self.byzantine
        self.gather_colluders = gather_colluders
        self.round = 0
        self.history: deque[torch.Tensor] = deque(maxlen=_HISTORY)
        self.generator = torch.Generator().manual_seed(seed * 1_000_003 + comm.rank)
        self.simulation_ledger = ByteLedger(rank=comm.rank)
        self.simulation = Communicator(
            comm.group,
            comm.rank,
            comm.world_size,
            ledger=self.simulation_ledger,
            clock=comm.clock,
            link=None,
            channel="simulation",
        )

    def reduce(self, named: dict[str, torch.Tensor], weight: float = 1.0) -> dict[str, torch.Tensor]:
        robust = self.inner if isinstance(self.inner, RobustReducer) else None
        original = named
        named = robust.prepare(named) if robust is not None else named
        honest = flatten(named)
        colluders, peers = self._colluders(honest)
        sent = named
        if self.is_byzantine:
            ctx = AttackContext(
                round=self.round,
                worker=self.comm.rank,
                num_workers=self.comm.world_size,
                num_byzantine=len(self.byzantine),
                honest_updates=colluders,
                history=list(self.history),
                generator=self.generator,
                honest_peers=peers,
            )
            forged = self.attack(honest.clone(), ctx)
            self.history.append(honest.clone())
            well_formed = (
                isinstance(forged, torch.Tensor) and forged.dim() == 1 and forged.numel() == honest.numel()
            )
            sent = unflatten(forged, named) if well_formed else {"forged": forged}
        self.round += 1
        result = (
            robust.reduce_prepared(sent, weight) if robust is not None else self.inner.reduce(sent, weight)
        )
        if result.keys() != original.keys():
            return unflatten(flatten(result), original)
        return result

    def _colluders(self, honest: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The Byzantine workers' honest updates and the honest workers' (empty without the gather)."""
        if not self.gather_colluders:
            return ([honest] if self.is_byzantine else []), []
        gathered = self.simulation.all_gather(honest).wait()
        colluders = [gathered[rank] for rank in self.byzantine]
        peers = [gathered[rank] for rank in range(self.comm.world_size) if rank not in self.byzantine]
        return colluders, peers

    def state_dict(self) -> dict[str, Any]:
        return {"round": self.round, "history": list(self.history), "inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.round = int(state["round"])
        self.history = deque(state["history"], maxlen=_HISTORY)
        self.inner.load_state_dict(state.get("inner", {}))


def build_attacking_reducer(config: RunConfig, comm: Communicator, inner: Reducer) -> Reducer:
    """Wraps ``inner`` so that the ranks in ``byzantine.workers`` attack (see the module docstring)."""
    if config.byzantine.attack == "alie" and "z" not in config.byzantine.params:
        try:
            alie_z(config.num_workers, len(set(config.byzantine.workers)))
        except ValueError as error:
            raise ConfigError("byzantine.workers", config.byzantine.workers, f"alie: {error}") from None
    try:
        _resolve_factory(config.byzantine.attack)
    except ValueError as error:
        raise ConfigError("byzantine.attack", config.byzantine.attack, str(error)) from None
    try:
        attack = build_attack(config.byzantine)
    except ValueError as error:
        # The factory exists, so what it refused is a parameter (a wrong name or an impossible value).
        key, value = (
            ("byzantine.params", config.byzantine.params)
            if config.byzantine.params
            else ("byzantine.attack", config.byzantine.attack)
        )
        raise ConfigError(key, value, str(error)) from None
    return AttackingReducer(
        comm,
        inner,
        attack,
        config.byzantine.workers,
        seed=config.seed,
        gather_colluders=config.byzantine.attack not in _IGNORE_COLLUDERS,
    )
