"""Federated clients: each holds a slice of the training set and trains a copy of the global model on it.

A client's round (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from Decentralized
Data", arXiv 1602.05629): start from the global weights, run E epochs of plain SGD with minibatches of B
(B = 0: the whole local set, one step per epoch, which makes E = 1 FedSGD), and return the update
``theta_client - theta_global``. The client's minibatch order comes from a generator seeded by (run seed,
round, client), so a client trains the same way whichever worker hosts it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from farsync.config import DataConfig, FederatedConfig
from farsync.data import ClassificationData
from farsync.task import partition_labels

__all__ = ["Client", "ClientResult", "build_clients", "evaluate_classifier", "train_client"]

_ROUND_STRIDE = 1_000_003
_CLIENT_STRIDE = 7919


@dataclass
class Client:
    """One client's local data."""

    index: int
    x: torch.Tensor
    y: torch.Tensor

    @property
    def num_samples(self) -> int:
        return int(self.y.shape[0])


@dataclass
class ClientResult:
    """What one client's local training produced."""

    update: dict[str, torch.Tensor]
    """theta_client - theta_global (fp32)."""
    mean_loss: float
    num_steps: int
    num_examples: int


def build_clients(
    dataset: ClassificationData,
    data: DataConfig,
    num_clients: int,
    seed: int,
    *,
    image_shape: tuple[int, ...] | None,
) -> list[Client]:
    """All ``num_clients`` clients, split by ``data.partition`` (iid, dirichlet(alpha) or pathological)."""
    parts = partition_labels(dataset.y_train.numpy(), num_clients, data, seed)
    clients = []
    for index, part in enumerate(parts):
        rows = torch.as_tensor(part, dtype=torch.long)
        x = dataset.x_train[rows]
        clients.append(
            Client(index, x.reshape(-1, *image_shape) if image_shape else x, dataset.y_train[rows])
        )
    return clients


def _minibatches(num_samples: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(num_samples, generator=generator)
    size = num_samples if batch_size == 0 else batch_size
    return list(torch.split(order, size))


def train_client(
    model: nn.Module,
    global_params: dict[str, torch.Tensor],
    client: Client,
    federated: FederatedConfig,
    *,
    lr: float,
    num_steps_if_no_epochs: int,
    seed: int,
    round_index: int,
) -> ClientResult:
    """Loads ``global_params`` into ``model``, trains it on ``client`` and returns the update."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(global_params[name])
    generator = torch.Generator()
    generator.manual_seed((seed * _ROUND_STRIDE + round_index) * _CLIENT_STRIDE + client.index)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    losses: list[float] = []
    examples = 0

    def step(rows: torch.Tensor) -> None:
        nonlocal examples
        loss = F.cross_entropy(model(client.x[rows]), client.y[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        losses.append(float(loss.detach()))
        examples += int(rows.numel())

    if federated.local_epochs > 0:
        for _ in range(federated.local_epochs):
            for rows in _minibatches(client.num_samples, federated.batch_size, generator):
                step(rows)
    else:
        batches: list[torch.Tensor] = []
        while len(losses) < num_steps_if_no_epochs:
            if not batches:
                batches = _minibatches(client.num_samples, federated.batch_size, generator)
            step(batches.pop(0))
    update = {name: p.detach().float() - global_params[name] for name, p in model.named_parameters()}
    return ClientResult(update, sum(losses) / max(len(losses), 1), len(losses), examples)


@torch.no_grad()
def evaluate_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Mean cross-entropy and accuracy of ``model`` on (x, y)."""
    was_training = model.training
    model.eval()
    logits = model(x)
    model.train(was_training)
    return {
        "eval_loss": float(F.cross_entropy(logits, y)),
        "eval_accuracy": float((logits.argmax(-1) == y).float().mean()),
    }
