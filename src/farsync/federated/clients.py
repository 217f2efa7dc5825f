"""Federated clients: each holds a slice of the training set and trains a copy of the global model on it.

A client's round (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from Decentralized
Data", arXiv 1602.05629): start from the global weights, run E epochs of plain SGD with minibatches of B
(B = 0: the whole local set, one step per epoch, which makes E = 1 FedSGD), and return the update
``theta_client - theta_global``. The client's minibatch order comes from a generator seeded by (run seed,
round, client), so a client trains the same way whichever worker hosts it.

:func:`train_client` trains one client with an ordinary optimizer loop (the reference);
:func:`train_clients` trains all of a worker's sampled clients of a round at once, vectorised over clients
with ``torch.func.vmap``, and gives the same updates: tiny models on many clients are dominated by
per-step overhead, which the vectorised form pays once per step instead of once per client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from farsync.config import DataConfig, FederatedConfig
from farsync.data import ClassificationData
from farsync.train.task import partition_labels

__all__ = [
    "Client",
    "ClientResult",
    "batch_plan",
    "build_clients",
    "evaluate_classifier",
    "train_client",
    "train_clients",
]

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


def batch_plan(
    client: Client, federated: FederatedConfig, *, num_steps_if_no_epochs: int, seed: int, round_index: int
) -> list[torch.Tensor]:
    """The row indices of every local step of ``client`` in round ``round_index``, in order.

    E epochs, each a fresh permutation cut into batches of B (B = 0: one batch of everything); with
    E = 0, ``num_steps_if_no_epochs`` batches drawn the same way, epoch after epoch.
    """
    generator = torch.Generator()
    generator.manual_seed((seed * _ROUND_STRIDE + round_index) * _CLIENT_STRIDE + client.index)
    size = client.num_samples if federated.batch_size == 0 else federated.batch_size
    plan: list[torch.Tensor] = []
    epochs = 0
    while (
        (epochs < federated.local_epochs)
        if federated.local_epochs > 0
        else (len(plan) < num_steps_if_no_epochs)
    ):
        plan.extend(torch.split(torch.randperm(client.num_samples, generator=generator), size))
        epochs += 1
    return plan if federated.local_epochs > 0 else plan[:num_steps_if_no_epochs]


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
    """Loads ``global_params`` into ``model``, trains it on ``client`` alone and returns the update.

    The reference implementation: :func:`train_clients` gives the same result for many clients at once.
    """
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(global_params[name])
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    losses: list[float] = []
    plan = batch_plan(
        client, federated, num_steps_if_no_epochs=num_steps_if_no_epochs, seed=seed, round_index=round_index
    )
    for rows in plan:
        loss = F.cross_entropy(model(client.x[rows]), client.y[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        losses.append(float(loss.detach()))
    update = {name: p.detach().float() - global_params[name] for name, p in model.named_parameters()}
    examples = sum(int(rows.numel()) for rows in plan)
    return ClientResult(update, sum(losses) / max(len(losses), 1), len(losses), examples)


def train_clients(
    model: nn.Module,
    global_params: dict[str, torch.Tensor],
    clients: list[Client],
    federated: FederatedConfig,
    *,
    lr: float,
    num_steps_if_no_epochs: int,
    seed: int,
    round_index: int,
) -> list[ClientResult]:
    """:func:`train_client` for every client of ``clients`` at once, vectorised over clients (torch.func).

    Each step stacks one minibatch per client, padded to the widest with zero-weight rows; a client whose
    plan is shorter gets all-zero masks for the remaining steps, which under plain SGD (no momentum, no
    decay) leaves its weights exactly where they are. The per-row loss is averaged over the real rows
    only, so every client follows its own sequential trajectory (to float rounding).
    """
    from torch.func import functional_call, grad_and_value, vmap

    if not clients:
        return []
    plans = [
        batch_plan(
            c, federated, num_steps_if_no_epochs=num_steps_if_no_epochs, seed=seed, round_index=round_index
        )
        for c in clients
    ]
    num_steps = max(len(plan) for plan in plans)
    width = max(int(rows.numel()) for plan in plans for rows in plan)
    longest = max(c.num_samples for c in clients)
    features = torch.zeros(len(clients), longest, *clients[0].x.shape[1:], dtype=clients[0].x.dtype)
    labels = torch.zeros(len(clients), longest, dtype=torch.long)
    for k, client in enumerate(clients):
        features[k, : client.num_samples] = client.x
        labels[k, : client.num_samples] = client.y
    rows = torch.zeros(num_steps, len(clients), width, dtype=torch.long)
    mask = torch.zeros(num_steps, len(clients), width)
    for k, plan in enumerate(plans):
        for step, chosen in enumerate(plan):
            rows[step, k, : chosen.numel()] = chosen
            mask[step, k, : chosen.numel()] = 1.0

    def masked_loss(
        params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, m: torch.Tensor
    ) -> torch.Tensor:
        per_row = F.cross_entropy(functional_call(model, params, (x,)), y, reduction="none")
        return (per_row * m).sum() / m.sum().clamp(min=1.0)

    step_fn = vmap(grad_and_value(masked_loss))
    params = {
        n: t.detach().float().unsqueeze(0).repeat(len(clients), *([1] * t.dim()))
        for n, t in global_params.items()
    }
    loss_sums = torch.zeros(len(clients))
    pick = torch.arange(len(clients)).unsqueeze(1)
    for step in range(num_steps):
        grads, losses = step_fn(params, features[pick, rows[step]], labels[pick, rows[step]], mask[step])
        params = {n: params[n] - lr * grads[n] for n in params}
        loss_sums += losses.detach()
    return [
        ClientResult(
            update={n: params[n][k] - global_params[n] for n in params},
            mean_loss=float(loss_sums[k]) / max(len(plans[k]), 1),
            num_steps=len(plans[k]),
            num_examples=sum(int(r.numel()) for r in plans[k]),
        )
        for k in range(len(clients))
    ]


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
