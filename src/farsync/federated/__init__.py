"""Federated learning: many clients per worker, a sample of them per round, non-IID data, optional privacy.

``federated.num_clients > 0`` with ``algorithm.name = "fedavg"`` makes the worker run
:func:`~farsync.federated.driver.run_federated_worker` instead of the optimizer-hooking loop. Sampling and
weighting are pure functions (:mod:`.sampling`); a client's local training is :mod:`.clients`.
"""

from __future__ import annotations

from farsync.federated.clients import (
    Client,
    ClientResult,
    batch_plan,
    build_clients,
    evaluate_classifier,
    train_client,
    train_clients,
)
from farsync.federated.sampling import (
    clients_of_worker,
    clients_per_round,
    combine_partials,
    sample_clients,
    weighted_partial_sum,
)

__all__ = [
    "Client",
    "ClientResult",
    "batch_plan",
    "build_clients",
    "clients_of_worker",
    "clients_per_round",
    "combine_partials",
    "evaluate_classifier",
    "sample_clients",
    "train_client",
    "train_clients",
    "weighted_partial_sum",
]
