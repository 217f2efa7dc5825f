"""The private reducer: clip every worker's update, add Gaussian noise locally or centrally, account epsilon.

A wrapper around any other reducer (``build_reducer`` puts it outside compression and robust aggregation):
each worker is one contributor (one client) whose update per synchronisation is

1. clipped to L2 norm ``privacy.clip_norm`` (S), so that one contributor moves the sum by at most S;
2. weighted 1 instead of its sample count (a sample-count weight would make the sensitivity data dependent,
   as in DP-FedAvg of McMahan et al. 2018, arXiv 1710.06963, which uses bounded per-client weights);
3. ``local`` mode: perturbed with N(0, (z S)^2) by the worker itself before anything leaves it, so no other
   party ever sees the clean update (each worker's release is the Gaussian mechanism on its own data);
4. averaged by the inner reducer;
5. ``central`` mode: the average is perturbed once with N(0, (z S / n)^2), i.e. noise of std z S on the sum
   of n clipped updates. farsync has no server, so the trusted aggregator is emulated: every worker draws the
   same noise from a generator seeded by the run seed and the round, which keeps replicas identical. This
   protects the released model from anyone outside the run, not the workers from one another (they all
   know the seed); use ``local`` mode when the workers do not trust each other.

The accountant (:class:`~farsync.privacy.accountant.PrivacyAccountant`) records one round with sampling
rate 1 per synchronisation (every worker takes part). ``n`` is the group size; a worker that sits a round
out (weight 0, e.g. a non-finite update) makes the central noise on the average a little smaller than
planned, and a warning says so.

Failure: clipping and noise never raise on finite input; a non-finite update keeps its weight 0 (the inner
reducer leaves it out) and is not clipped.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from farsync.comm.communicator import Communicator
from farsync.config import ConfigError, PrivacyConfig
from farsync.privacy.accountant import PrivacyAccountant
from farsync.privacy.mechanism import add_noise, clip_update
from farsync.reducers.base import MeanReducer, Reducer

__all__ = ["PrivateReducer", "build_private_reducer", "find_private_reducer"]

logger = logging.getLogger(__name__)

_ROUND_STRIDE = 1_000_003
_RANK_STRIDE = 7919


class PrivateReducer(Reducer):
    """Clipping plus Gaussian noise around ``inner`` (see the module docstring).

    Args:
        comm: the group's communicator (rank and size).
        inner: the reducer that forms the average.
        privacy: the ``privacy`` config section (mode, clip_norm, noise_multiplier, delta).
        seed: the run seed; central noise is drawn from (seed, round), local noise from (seed, round, rank).
    """

    def __init__(self, comm: Communicator, inner: Reducer, privacy: PrivacyConfig, seed: int) -> None:
        super().__init__(comm)
        if privacy.mode not in ("central", "local"):
            raise ConfigError("privacy.mode", privacy.mode, "a PrivateReducer needs 'central' or 'local'")
        self.inner, self.privacy, self.seed = inner, privacy, seed
        self.accountant = PrivacyAccountant(privacy.noise_multiplier, privacy.delta)
        self.round = 0
        self.last_norm = 0.0

    def _generator(self, *, shared: bool) -> torch.Generator:
        generator = torch.Generator()
        key = self.seed * _ROUND_STRIDE + self.round
        generator.manual_seed(key if shared else key * _RANK_STRIDE + 1 + self.comm.rank)
        return generator

    def reduce(self, named: dict[str, torch.Tensor], weight: float = 1.0) -> dict[str, torch.Tensor]:
        std = self.privacy.noise_multiplier * self.privacy.clip_norm
        if weight > 0:
            sent, self.last_norm = clip_update(named, self.privacy.clip_norm)
            if self.privacy.mode == "local":
                sent = add_noise(sent, std, self._generator(shared=False))
            weight = 1.0
        else:
            sent = {name: t.detach().float() for name, t in named.items()}
        averaged = self.inner.reduce(sent, weight)
        if self.privacy.mode == "central":
            if weight == 0:
                logger.warning(
                    "worker %d sat round %d out: central noise is planned for %d contributors",
                    self.comm.rank,
                    self.round,
                    self.comm.world_size,
                )
            averaged = add_noise(averaged, std / self.comm.world_size, self._generator(shared=True))
        self.accountant.step(sample_rate=1.0)
        self.round += 1
        return averaged

    def epsilon(self) -> float:
        """Epsilon spent so far at ``privacy.delta``."""
        return self.accountant.epsilon()

    def state_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "accountant": self.accountant.state_dict(),
            "inner": self.inner.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.round = int(state["round"])
        self.accountant.load_state_dict(state["accountant"])
        self.inner.load_state_dict(state.get("inner", {}))


def build_private_reducer(
    privacy: PrivacyConfig, comm: Communicator, inner: Reducer | None = None, *, seed: int = 0
) -> Reducer:
    """``inner`` (default: the fp32 mean) wrapped in a :class:`PrivateReducer` for ``privacy``.

    ``privacy.mode`` must be ``'central'`` or ``'local'``; ``seed`` is the run seed the noise is drawn from.
    """
    return PrivateReducer(comm, inner if inner is not None else MeanReducer(comm), privacy, seed)


def find_private_reducer(reducer: Reducer) -> PrivateReducer | None:
    """The :class:`PrivateReducer` in a chain of wrappers (each holding the next as ``inner``), if any."""
    current: Any = reducer
    while current is not None:
        if isinstance(current, PrivateReducer):
            return current
        current = getattr(current, "inner", None)
    return None
