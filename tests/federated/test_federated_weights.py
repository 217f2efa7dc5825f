"""Safety net (issue 10, item 8f): the federated driver weights each sampled client by its sample count.

McMahan et al. 2017 (arXiv 1602.05629): the new global model is ``theta + sum_c n_c u_c / sum_c n_c`` over
the round's sampled clients. Six clients of very different sizes (Dirichlet alpha 0.1) live on two workers;
the expected update is built here from each client trained alone (:func:`farsync.federated.train_client`,
the reference trainer) and its own sample count, and compared with what one round of the driver produced.

Broken on purpose to check this fails: every client weighted 1 instead of its sample count.
"""

from __future__ import annotations

from typing import Any

import torch

from farsync.config import load_config
from farsync.data import load_digits_split
from farsync.federated import build_clients, sample_clients, train_client
from farsync.federated.driver import FederatedDriver
from farsync.sim.ranks import run_ranks
from farsync.train import WorkerContext
from farsync.train.task import build_model

CONFIG = [
    "num_workers=2",
    "algorithm.name=fedavg",
    "model.kind=mlp",
    "model.width=8",
    "data.kind=digits",
    "data.partition=dirichlet",
    "data.alpha=0.1",
    "federated.num_clients=6",
    "federated.client_fraction=0.5",
    "federated.num_rounds=1",
    "federated.local_epochs=1",
    "federated.batch_size=50",
    "train.lr=0.1",
    "seed=3",
]


def _one_round(rank: int, world: int, group: Any, store: Any) -> dict[str, dict[str, torch.Tensor]]:
    config = load_config(None, CONFIG)
    driver = FederatedDriver(config, WorkerContext(rank, world, store, None, lambda record: None))
    start = {name: t.clone() for name, t in driver.global_params.items()}
    driver.run_round()
    return {"start": start, "after": driver.global_params}


def test_one_round_adds_the_sample_count_weighted_mean_of_the_client_updates() -> None:
    ranks = run_ranks(_one_round, 2, prefix="safety-fedavg-weights")
    config = load_config(None, CONFIG)
    federated = config.federated
    clients = build_clients(
        load_digits_split(seed=config.seed), config.data, federated.num_clients, config.seed, image_shape=None
    )
    sampled = [
        clients[c] for c in sample_clients(federated.num_clients, federated.client_fraction, 0, config.seed)
    ]
    start = ranks[0]["start"]
    updates = [
        train_client(
            build_model(config.model),
            start,
            client,
            federated,
            lr=config.train.lr,
            num_steps_if_no_epochs=config.algorithm.num_inner_steps,
            seed=config.seed,
            round_index=0,
        ).update
        for client in sampled
    ]
    counts = [client.num_samples for client in sampled]
    weighted = {
        n: start[n] + sum(c * u[n] for c, u in zip(counts, updates, strict=True)) / sum(counts) for n in start
    }
    uniform = {n: start[n] + sum(u[n] for u in updates) / len(updates) for n in start}
    # The clients' sizes differ enough that the two weightings are far apart (else nothing to test).
    assert len(set(counts)) == len(counts) and max(counts) > 2 * min(counts)
    assert max(float((weighted[n] - uniform[n]).abs().max()) for n in start) > 1e-2
    for rank in ranks:
        for name, value in weighted.items():
            torch.testing.assert_close(rank["after"][name], value, atol=1e-5, rtol=1e-4)
