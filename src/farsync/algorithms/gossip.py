"""Gossip learning: decentralised SGD where each worker averages only with its neighbours.

Decentralised parallel SGD (Lian et al. 2017, "Can Decentralized Algorithms Outperform Centralized
Algorithms?", arXiv 1705.09056; Koloskova et al. 2020, "A Unified Theory of Decentralized SGD with Changing
Topology and Local Updates", arXiv 2003.10422). Every worker takes its own inner optimizer steps and, every
``gossip.comm_every`` steps, replaces its weights by a weighted average with its neighbours' on the graph
``gossip.topology`` (ring, 2-D torus, exponential, or a random k-regular graph drawn afresh each mixing from
the run's seed)::

    x_i <- sum_j W[i, j] x_j          (W: Metropolis-Hastings weights, see :mod:`.topology`)

There is no all-reduce during training; each mixing sends the fp32 weights once to every neighbour
(``send`` charged per neighbour in the ledger, the uplink shared between them in the emulated time).

Late communication: with ``gossip.late_schedule`` the interval halves in the second half of training,
following "A Single Merging Suffices" (arXiv 2507.06542), which finds communication late in training worth
more than early. With ``gossip.final_merge`` one global average (all-reduce through the reducer) at the end
turns the drifting local models into one model; the same paper shows that this single merge recovers most
of what server-based training reaches.

Diagnostics (never charged to the ledger or the emulated link: they are measurements, not the algorithm):

* ``consensus_distance``: mean over workers of ||x_i - mean_j x_j||_2, every report period
  (``train.report_every`` steps), in the round records;
* at the end, :meth:`Gossip.final_metrics` holds the mean of the workers' local-model evaluations and the
  evaluation of the merged (averaged) model, whether or not the merge was actually performed.

Variance correction (``gossip.variance_correction``, after Tian et al. 2024, "Vanishing Variance Problem in
Fully Decentralized Neural-Network Systems", arXiv 2404.04616): averaging weight matrices that are not
correlated (e.g. independently initialised models) shrinks their spread around their mean, which pulls the
model away from the variance its initialisation chose and stalls training. With the correction each mixed
weight matrix (tensors of 2 or more dimensions) is rescaled about its mean so its variance equals the
mixing-weighted mean of the variances of the matrices that went in. Biases are left alone.

Evaluation: ``global_tensors()`` is the worker's own model, so evaluations during training score each
worker's local model (rank 0's in the run's eval records); after a final merge every worker holds the
merged model.

Failure: a neighbour that does not answer makes ``recv`` raise after ``elastic.collective_timeout_s``; the
error propagates from ``optimizer.step()`` (gossip has no elastic recovery yet).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
from torch import nn

from farsync.algorithms.base import Algorithm
from farsync.algorithms.topology import metropolis_hastings, topology_graph
from farsync.comm.communicator import Communicator, Handle
from farsync.comm.cost import Collective
from farsync.config import ConfigError, GossipConfig
from farsync.reducers.base import Reducer, flatten, unflatten

__all__ = ["Gossip", "consensus_distance", "mix_interval", "variance_corrected"]

logger = logging.getLogger(__name__)

_SEED_STRIDE = 1_000_003


def mix_interval(gossip: GossipConfig, step: int, num_steps: int) -> int:
    """Inner steps between mixings at ``step``: ``comm_every``, halved in the second half with the late schedule."""
    if gossip.late_schedule and 2 * step >= num_steps:
        return max(1, gossip.comm_every // 2)
    return gossip.comm_every


def variance_corrected(mixed: torch.Tensor, inputs: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """``mixed`` rescaled about its mean so its variance is the weighted mean of the ``inputs``' variances."""
    target = sum(w * float(t.var(unbiased=False)) for w, t in zip(weights, inputs, strict=True))
    current = float(mixed.var(unbiased=False))
    if current <= 0.0 or target <= 0.0:
        return mixed
    centre = mixed.mean()
    corrected: torch.Tensor = centre + (mixed - centre) * (target / current) ** 0.5
    return corrected


def consensus_distance(comm: Communicator, vector: torch.Tensor) -> float:
    """Mean over the group of ||vector_i - mean_j vector_j||_2 (two all-reduces over ``comm``)."""
    if comm.world_size == 1:
        return 0.0
    average = comm.all_reduce(vector.clone(), op="avg").wait()
    distance = torch.linalg.vector_norm(vector - average).reshape(1)
    return float(comm.all_reduce(distance, op="avg").wait())


class Gossip(Algorithm):
    """Neighbour averaging on a topology every ``comm_every`` steps, optional final merge (module docstring).

    Args:
        config: the ``gossip`` section (topology, mixing interval, final merge, ...); default: a ring.
        num_steps: the run's inner steps (``train.num_steps``); the late schedule halves the interval after
            half of them.
        seed: the run seed (random topologies are drawn from it).
        report_every: inner steps between "rounds" (records with the consensus distance), ``train.report_every``.
        reducer: the final merge's all-reduce (default fp32 mean).
        evaluate: if given, ``evaluate(model) -> {name: value}`` scores local and merged models at the end.
    """

    name: ClassVar[str] = "gossip"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        comm: Communicator,
        config: GossipConfig | None = None,
        *,
        num_steps: int,
        seed: int = 0,
        report_every: int = 50,
        reducer: Reducer | None = None,
        evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    ) -> None:
        super().__init__(model, optimizer, comm, reducer=reducer)
        if report_every < 1:
            raise ConfigError("train.report_every", report_every, "must be >= 1")
        if num_steps < 1:
            raise ConfigError("train.num_steps", num_steps, "must be >= 1")
        self.gossip = config if config is not None else GossipConfig()
        self.num_steps = num_steps
        self.seed = seed
        self.report_every = report_every
        self.evaluate_fn = evaluate
        # Measurements share the group but not the ledger or the emulated link.
        self.probe = Communicator(comm.group, comm.rank, comm.world_size)
        self.steps_since_mix = 0
        self.num_mixings = 0
        self.last_consensus = 0.0
        self._final: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------ the hooks
    def after_inner_step(self) -> bool:
        self.steps_since_mix += 1
        if self.steps_since_mix >= mix_interval(self.gossip, self.inner_step - 1, self.num_steps):
            self.mix()
            self.steps_since_mix = 0
        if self.inner_step % self.report_every != 0:
            return False
        self.last_consensus = consensus_distance(self.probe, self._local_vector())
        return True

    def _local_vector(self) -> torch.Tensor:
        return flatten({n: p.detach() for n, p in self.named_params.items()})

    def mixing_row(self) -> dict[int, float]:
        """This worker's row of this mixing's matrix: {member: weight}, itself included."""
        graph = topology_graph(
            self.gossip.topology,
            self.comm.world_size,
            degree=self.gossip.degree,
            seed=self.seed * _SEED_STRIDE + self.num_mixings,
        )
        row = metropolis_hastings(graph)[self.comm.rank]
        return {member: float(row[member]) for member in [self.comm.rank, *sorted(graph[self.comm.rank])]}

    def mix(self) -> None:
        """One gossip exchange with every neighbour, then the weighted average (in place)."""
        row = self.mixing_row()
        self.num_mixings += 1
        neighbours = [m for m in row if m != self.comm.rank]
        if not neighbours:
            return
        own = self._local_vector()
        received = self._exchange(own, neighbours, tag=self.num_mixings % (1 << 20))
        vectors = {self.comm.rank: own, **received}
        mixed = sum(row[m] * vectors[m] for m in row)
        assert isinstance(mixed, torch.Tensor)
        like: dict[str, torch.Tensor] = dict(self.named_params)
        named = unflatten(mixed, like)
        pieces = {m: unflatten(vectors[m], like) for m in row} if self.gossip.variance_correction else {}
        with torch.no_grad():
            for name, param in self.named_params.items():
                value = named[name]
                if pieces and param.dim() >= 2:
                    inputs = [pieces[m][name] for m in row]
                    value = variance_corrected(value, inputs, list(row.values()))
                param.copy_(value.to(param.dtype))
        if self.gossip.mix_optimizer_state:
            self._mix_optimizer_state(row, neighbours)

    def _optimizer_state(self) -> dict[str, torch.Tensor]:
        """The inner optimizer's per-parameter tensors (Adam's moments), in one fixed order on every worker."""
        named: dict[str, torch.Tensor] = {}
        for name, param in self.named_params.items():
            state = self.optimizer.state.get(param, {})
            for key in sorted(state):
                value = state[key]
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    named[f"{name}/{key}"] = value
        return named

    def _mix_optimizer_state(self, row: dict[int, float], neighbours: list[int]) -> None:
        state = self._optimizer_state()
        if not state:
            return
        own = flatten(state)
        received = self._exchange(own, neighbours, tag=(1 << 20) + self.num_mixings % (1 << 20))
        mixed = row[self.comm.rank] * own + sum(row[m] * received[m] for m in neighbours)
        with torch.no_grad():
            for name, value in unflatten(mixed, state).items():
                state[name].copy_(value.to(state[name].dtype))

    def _exchange(self, own: torch.Tensor, neighbours: list[int], tag: int) -> dict[int, torch.Tensor]:
        # Every receive and send is posted before any is waited on: gloo posts never block, so no cycle of
        # workers can each wait for a neighbour that is itself waiting (deadlock-free on any graph).
        buffers = {m: torch.empty_like(own) for m in neighbours}
        start = self.comm.clock.now()
        handles: list[Handle[torch.Tensor]] = [self.comm.recv(buffers[m], m, tag) for m in neighbours]
        handles += [self.comm.send(own, m, tag) for m in neighbours]
        for handle in handles:
            handle.wait()
        # The sends leave through one uplink, one after another: charge the link time they share.
        emulator = self.comm.emulator
        uplink = sum(
            emulator.modeled_time(Collective.SEND, own.numel() * own.element_size()) for _ in neighbours
        )
        emulator.hold(start, uplink, Collective.SEND)
        return buffers

    def finish(self) -> None:
        """Scores the local and the merged models, then merges for real if ``gossip.final_merge``."""
        local = self._local_vector()
        final: dict[str, Any] = {
            "final_merge": self.gossip.final_merge,
            "consensus_distance_before_merge": consensus_distance(self.probe, local),
            "num_mixings": self.num_mixings,
        }
        if self.evaluate_fn is not None:
            for key, value in self.evaluate_fn(self.model).items():
                mean = self.probe.all_reduce(
                    torch.tensor([float(value)], dtype=torch.float64), op="avg"
                ).wait()
                final[f"mean_local_{key}"] = float(mean)
        if self.gossip.final_merge:
            merged = self.reducer({n: p.detach() for n, p in self.named_params.items()}, self.weight)
            self._load(merged)
        else:
            merged = unflatten(self.probe.all_reduce(local.clone(), op="avg").wait(), dict(self.named_params))
        if self.evaluate_fn is not None:
            with contextlib.nullcontext() if self.gossip.final_merge else self._holding(merged):
                for key, value in self.evaluate_fn(self.model).items():
                    final[f"merged_{key}"] = float(value)
        self._final = final
        logger.info("worker %d: gossip finished: %s", self.comm.rank, final)

    def _load(self, named: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, param in self.named_params.items():
                param.copy_(named[name])

    @contextlib.contextmanager
    def _holding(self, named: dict[str, torch.Tensor]) -> Iterator[None]:
        """The model temporarily holds ``named``; its own weights come back afterwards."""
        saved = {name: p.detach().clone() for name, p in self.named_params.items()}
        self._load(named)
        try:
            yield
        finally:
            self._load(saved)

    # ----------------------------------------------------------------------------------- inspection
    def metrics(self) -> dict[str, Any]:
        return {
            "consensus_distance": self.last_consensus,
            "num_mixings": self.num_mixings,
            "mix_interval": mix_interval(self.gossip, self.inner_step, self.num_steps),
        }

    def final_metrics(self) -> dict[str, Any]:
        """Local-vs-merged evaluation and the final consensus distance (empty before :meth:`finish`)."""
        return dict(self._final)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(steps_since_mix=self.steps_since_mix, num_mixings=self.num_mixings)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.steps_since_mix = int(state["steps_since_mix"])
        self.num_mixings = int(state["num_mixings"])
