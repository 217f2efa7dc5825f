"""The federated round driver: many clients per worker, a sample of them per round, one all-reduce per round.

FedAvg as McMahan et al. 2017 run it (arXiv 1602.05629), on farsync's workers instead of a server:

1. every worker draws the same m = max(C N, 1) clients for round r (:mod:`.sampling`);
2. each worker trains its sampled clients in turn (client c lives on worker c % num_workers), E local epochs
   of SGD with batch B from the global weights (:mod:`.clients`);
3. each worker sums ``n_c * update_c`` and ``n_c`` over its clients; one all-reduce (the run's reducer:
   fp32 mean, or compressed / robust if configured) of the weighted sum and the weight sum gives the
   sample-weighted mean update of all sampled clients, which every worker adds to its global weights.

Differential privacy (``privacy.mode``), DP-FedAvg style (McMahan et al. 2018, arXiv 1710.06963): every
client update is clipped to ``clip_norm`` S and weighted 1 instead of n_c; ``local`` adds N(0, (z S)^2) to each
client's update before it leaves the client; ``central`` adds N(0, (z S / m)^2) to the averaged update once,
drawn from a generator seeded by (run seed, round) so every worker adds the same noise (an emulated trusted
aggregator; see :mod:`farsync.reducers.private`). Epsilon at ``privacy.delta`` is reported every round from
Opacus's RDP accountant: central rounds are subsampled with rate q = m / N; in local mode no amplification
is claimed and the reported epsilon is that of the client that has taken part most often (q = 1 per round
it took part in).

The client optimizer is plain SGD at ``train.lr`` (no momentum, weight decay, warm-up or clipping, as in
McMahan et al.). ``federated.num_rounds`` rounds are run; the global model is evaluated every
``train.eval_every`` rounds and at the end. Measurement traffic (the mean training loss) goes through a
communicator without a ledger or link, so it costs no bytes or emulated time.

Why not :class:`farsync.train.TrainingLoop`: the loop's unit is one inner step of one model through an
optimizer whose hooks run the algorithm; here the unit is a round of many clients, each trained from the
global weights with its own SGD, and the round itself is the synchronisation (no optimizer hooks, no
algorithm object, no inner schedule). So the driver composes the loop's shared pieces as functions instead:
:func:`~farsync.train.sync_communicator` (the group, link and ledger), :meth:`~farsync.train.WorkerContext.emit`
(records), :func:`~farsync.train.worker_result` (the result's communication figures) and
:func:`~farsync.train.publish_result`.

Failure: a collective error propagates and ends the worker; resuming from checkpoints is not supported in
this mode yet (``resume`` starts over, with a warning).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np
import torch

from farsync.algorithms.base import params_sha256
from farsync.comm.clock import Clock
from farsync.comm.communicator import Communicator
from farsync.comm.ledger import ByteLedger
from farsync.config import PrivacyConfig, RunConfig
from farsync.data import load_digits_split, load_npz
from farsync.federated.clients import Client, build_clients, evaluate_classifier, train_clients
from farsync.federated.sampling import clients_of_worker, sample_clients, weighted_partial_sum
from farsync.reducers.base import Reducer
from farsync.train import WorkerContext, WorkerResult, publish_result, sync_communicator, worker_result
from farsync.train.build import build_reducer
from farsync.train.task import MODEL_INIT_LOCK, build_model

__all__ = ["FederatedDriver", "run_federated_worker"]

logger = logging.getLogger(__name__)

_ROUND_STRIDE = 1_000_003


class FederatedDriver:
    """One worker's part of a federated run (see the module docstring)."""

    def __init__(self, config: RunConfig, ctx: WorkerContext) -> None:
        self.config, self.ctx = config, ctx
        self.federated, self.privacy = config.federated, config.privacy
        if ctx.resume:
            logger.warning("worker %d: federated runs cannot resume yet; starting from round 0", ctx.rank)
        self.clock = Clock(config.network.emulation)
        self.ledger = ByteLedger(rank=ctx.rank)
        self.comm = sync_communicator(config, ctx, self.ledger, self.clock)
        self.probe = Communicator(self.comm.group, ctx.rank, ctx.world_size)
        # Privacy is applied per client below, so the reducer itself must not clip or add noise again.
        self.reducer: Reducer = build_reducer(
            dataclasses.replace(config, privacy=PrivacyConfig()), self.comm, ctx.reducer_wrappers
        )
        self._load_data()
        self.accountant = None
        if self.privacy.mode != "off":
            from farsync.privacy.accountant import PrivacyAccountant

            self.accountant = PrivacyAccountant(self.privacy.noise_multiplier, self.privacy.delta)
        self.participation = np.zeros(self.federated.num_clients, dtype=np.int64)
        self.round = 0
        self.examples = 0
        self.local_steps = 0
        self.compute_s = 0.0
        self.last_eval: dict[str, float] = {}

    def _load_data(self) -> None:
        config = self.config
        if config.data.kind not in ("digits", "npz"):
            from farsync.config import ConfigError

            raise ConfigError("data.kind", config.data.kind, "federated clients need 'digits' or 'npz' data")
        dataset = (
            load_digits_split(seed=config.seed)
            if config.data.kind == "digits"
            else load_npz(config.data.path, seed=config.seed)
        )
        image_shape = (1, 8, 8) if config.model.kind == "cnn" else None
        everyone = build_clients(
            dataset, config.data, self.federated.num_clients, config.seed, image_shape=image_shape
        )
        self.clients: dict[int, Client] = {
            c.index: c for c in everyone if c.index % self.ctx.world_size == self.ctx.rank
        }
        self.test_x = dataset.x_test.reshape(-1, *image_shape) if image_shape else dataset.x_test
        self.test_y = dataset.y_test
        with MODEL_INIT_LOCK:
            torch.manual_seed(config.seed)
            self.model = build_model(config.model, dataset.num_features, dataset.num_classes)
        self.global_params = {n: p.detach().clone().float() for n, p in self.model.named_parameters()}

    # ------------------------------------------------------------------------------------ one round
    def _private(self, client: Client, update: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``update`` clipped, and with local noise in ``local`` mode (the client does this before sending)."""
        from farsync.privacy.mechanism import add_noise, clip_update

        clipped, _ = clip_update(update, self.privacy.clip_norm)
        if self.privacy.mode != "local":
            return clipped
        generator = torch.Generator()
        generator.manual_seed((self.config.seed * _ROUND_STRIDE + self.round) * 7919 + client.index + 1)
        return add_noise(clipped, self.privacy.noise_multiplier * self.privacy.clip_norm, generator)

    def run_round(self) -> dict[str, Any]:
        """Trains this worker's sampled clients, averages across workers, updates the global weights."""
        begin, blocked = self.clock.now(), self.ledger.blocked_s()
        sampled = sample_clients(
            self.federated.num_clients, self.federated.client_fraction, self.round, self.config.seed
        )
        mine = [self.clients[c] for c in clients_of_worker(sampled, self.ctx.rank, self.ctx.world_size)]
        results = train_clients(
            self.model,
            self.global_params,
            mine,
            self.federated,
            lr=self.config.train.lr,
            num_steps_if_no_epochs=self.federated.local_steps,
            seed=self.config.seed,
            round_index=self.round,
        )
        self.examples += sum(r.num_examples for r in results)
        self.local_steps += sum(r.num_steps for r in results)
        losses = [r.mean_loss for r in results]
        if self.privacy.mode == "off":
            updates = [r.update for r in results]
            weights = [float(c.num_samples) for c in mine]
        else:  # DP: bounded influence per client, so clip and weight every client 1
            updates = [self._private(c, r.update) for c, r in zip(mine, results, strict=True)]
            weights = [1.0] * len(mine)
        total, weight_sum = weighted_partial_sum(updates, weights, self.global_params)
        share = {n: t / weight_sum for n, t in total.items()} if weight_sum > 0 else total
        averaged = self.reducer(share, weight_sum)
        if self.privacy.mode == "central":
            from farsync.privacy.mechanism import add_noise

            generator = torch.Generator()
            generator.manual_seed(self.config.seed * _ROUND_STRIDE + self.round)
            std = self.privacy.noise_multiplier * self.privacy.clip_norm / len(sampled)
            averaged = add_noise(averaged, std, generator)
        for name, param in self.global_params.items():
            param += averaged[name]
        self.participation[sampled] += 1
        record: dict[str, Any] = {"clients": len(sampled), "train_loss": self._mean_loss(losses)}
        record.update(self._privacy_spent(len(sampled)))
        self.round += 1
        self.compute_s += (self.clock.now() - begin) - (self.ledger.blocked_s() - blocked)
        return record

    def _mean_loss(self, losses: list[float]) -> float:
        totals = self.probe.all_reduce(
            torch.tensor([sum(losses), len(losses)], dtype=torch.float64), op="sum"
        )
        loss_sum, count = totals.wait().tolist()
        return float(loss_sum) / max(float(count), 1.0)

    def _privacy_spent(self, num_sampled: int) -> dict[str, float]:
        if self.accountant is None:
            return {}
        if self.privacy.mode == "central":
            self.accountant.step(sample_rate=num_sampled / self.federated.num_clients)
            epsilon = self.accountant.epsilon()
        else:
            from farsync.privacy.accountant import epsilon_for

            most = int(self.participation.max())
            epsilon = (
                epsilon_for(self.privacy.noise_multiplier, 1.0, most, self.privacy.delta) if most else 0.0
            )
        return {"privacy_epsilon": epsilon, "privacy_delta": self.privacy.delta}

    # ------------------------------------------------------------------------------------ the loop
    def evaluate(self) -> dict[str, float]:
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                param.copy_(self.global_params[name])
        self.last_eval = evaluate_classifier(self.model, self.test_x, self.test_y)
        return self.last_eval

    def run(self) -> WorkerResult:
        num_rounds = self.federated.num_rounds
        last: dict[str, Any] = {}
        while self.round < num_rounds:
            last = self.run_round()
            common = {
                "round": self.round,
                "step": self.round,
                "tokens": self.examples,
                "bytes_sent": self.ledger.bytes_sent(),
            }
            self.ctx.emit(
                {
                    "kind": "step",
                    "loss": last["train_loss"],
                    "lr": self.config.train.lr,
                    "wall_s": self.clock.now(),
                    **common,
                }
            )
            if self.round % self.config.train.eval_every == 0 or self.round == num_rounds:
                self.ctx.emit({"kind": "eval", **common, **self.evaluate()})
            self.ctx.emit(
                {
                    "kind": "round",
                    **common,
                    "comm_wait_s": self.ledger.blocked_s(),
                    "wall_s": self.clock.now(),
                    **last,
                    **self.last_eval,
                }
            )
        extra = {
            "num_clients": self.federated.num_clients,
            "clients_per_round": last.get("clients", 0),
            "local_steps": self.local_steps,
            **{k: v for k, v in last.items() if k.startswith("privacy_")},
        }
        return self.result(extra)

    def result(self, extra: dict[str, Any]) -> WorkerResult:
        wall = self.clock.now()
        return worker_result(
            self.ctx,
            self.ledger,
            num_steps=self.round,
            num_rounds=self.round,
            tokens=self.examples,
            wall_s=wall,
            compute_s=self.compute_s,
            global_params_sha256=params_sha256(list(self.global_params.values())),
            final_eval=self.last_eval or self.evaluate(),
            num_params=sum(p.numel() for p in self.model.parameters()),
            extra=extra,
        )


def run_federated_worker(config: RunConfig, ctx: WorkerContext) -> WorkerResult:
    """Runs ``federated.num_rounds`` rounds on this worker; publishes the result under ``final/<rank>``."""
    started = time.perf_counter()
    result = FederatedDriver(config, ctx).run()
    logger.info(
        "worker %d: %d federated rounds in %.1fs", ctx.rank, result.num_rounds, time.perf_counter() - started
    )
    publish_result(ctx, result)
    return result
