"""Partitioners over N clients, FedSGD's single full-batch step, and the driver at world sizes 1 and 2."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from farsync.config import DataConfig, FederatedConfig, load_config
from farsync.data import load_digits_split
from farsync.federated import Client, build_clients, train_client, train_clients
from farsync.federated.driver import FederatedDriver
from farsync.sim.ranks import run_ranks
from farsync.train import WorkerContext


def _labels_per_client(data: DataConfig, num_clients: int, labels: np.ndarray[Any, Any]) -> list[int]:
    dataset = load_digits_split(seed=0)
    dataset.x_train = torch.zeros(labels.size, 1)
    dataset.y_train = torch.as_tensor(labels)
    clients = build_clients(dataset, data, num_clients, seed=0, image_shape=None)
    assert sum(c.num_samples for c in clients) == labels.size
    return [len(set(c.y.tolist())) for c in clients]


def test_partitioners_label_distributions() -> None:
    labels = np.repeat(np.arange(10), 20)  # 10 classes x 20 items: 100 shards of 2 never straddle a label
    assert max(_labels_per_client(DataConfig(kind="digits", partition="pathological"), 50, labels)) <= 2
    assert min(_labels_per_client(DataConfig(kind="digits", partition="iid"), 4, labels)) == 10
    skewed = _labels_per_client(DataConfig(kind="digits", partition="dirichlet", alpha=0.05), 10, labels)
    mixed = _labels_per_client(DataConfig(kind="digits", partition="dirichlet", alpha=100.0), 10, labels)
    assert np.mean(skewed) < 5 and min(mixed) == 10


def test_fedsgd_client_takes_one_full_batch_gradient_step() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    client = Client(0, torch.randn(7, 4), torch.randint(0, 3, (7,)))
    result = train_client(
        model,
        start,
        client,
        FederatedConfig(local_epochs=1, batch_size=0),
        lr=0.5,
        num_steps_if_no_epochs=1,
        seed=0,
        round_index=0,
    )
    reference = nn.Linear(4, 3)
    reference.load_state_dict(start)
    F.cross_entropy(reference(client.x), client.y).backward()
    assert result.num_steps == 1 and result.num_examples == 7
    for name, param in reference.named_parameters():
        assert param.grad is not None
        torch.testing.assert_close(result.update[name], -0.5 * param.grad)


def _run(world: int, overrides: list[str]) -> list[dict[str, Any]]:
    config = load_config(
        None,
        [
            f"num_workers={world}",
            "algorithm.name=fedavg",
            "model.kind=mlp",
            "model.width=8",
            "data.kind=digits",
            "federated.num_clients=6",
            "federated.client_fraction=0.5",
            "federated.num_rounds=3",
            "federated.local_epochs=1",
            "federated.batch_size=50",
            "train.lr=0.1",
            "train.eval_every=1",
            *overrides,
        ],
    )

    def fn(rank: int, size: int, group: Any, store: Any) -> dict[str, Any]:
        records: list[dict[str, Any]] = []
        ctx = WorkerContext(
            rank, size, store, None, records.append, group_prefix=f"fed{size}-{len(overrides)}"
        )
        driver = FederatedDriver(config, ctx)
        result = driver.run()
        return {"params": driver.global_params, "result": result, "records": records}

    return run_ranks(fn, world, prefix=f"fedrun{world}-{len(overrides)}")


def test_driver_gives_the_same_model_whichever_worker_hosts_a_client() -> None:
    (alone,) = _run(1, [])
    pair = _run(2, [])
    for name, value in alone["params"].items():
        torch.testing.assert_close(pair[0]["params"][name], value, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pair[1]["params"][name], value, atol=1e-5, rtol=1e-5)
    assert alone["result"].bytes_sent == 0 and pair[0]["result"].bytes_sent > 0
    rounds = [r for r in alone["records"] if r["kind"] == "round"]
    assert [r["clients"] for r in rounds] == [3, 3, 3] and "eval_accuracy" in rounds[-1]


def test_driver_reports_epsilon_each_round_with_central_privacy() -> None:
    (alone,) = _run(1, ["privacy.mode=central", "privacy.noise_multiplier=1.0"])
    epsilons = [r["privacy_epsilon"] for r in alone["records"] if r["kind"] == "round"]
    assert len(epsilons) == 3 and 0 < epsilons[0] < epsilons[1] < epsilons[2]
    assert alone["result"].extra["privacy_epsilon"] == epsilons[-1]


def test_vectorised_clients_follow_their_own_sequential_trajectories() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    clients = [Client(i, torch.randn(n, 5), torch.randint(0, 3, (n,))) for i, n in enumerate((7, 23, 12))]
    for federated in (
        FederatedConfig(local_epochs=2, batch_size=5),
        FederatedConfig(local_epochs=1, batch_size=0),
        FederatedConfig(local_epochs=0, batch_size=4),
    ):
        kwargs: dict[str, Any] = {"lr": 0.3, "num_steps_if_no_epochs": 3, "seed": 2, "round_index": 4}
        together = train_clients(model, start, clients, federated, **kwargs)
        for client, batched in zip(clients, together, strict=True):
            alone = train_client(model, start, client, federated, **kwargs)
            assert (batched.num_steps, batched.num_examples) == (alone.num_steps, alone.num_examples)
            assert batched.mean_loss == pytest.approx(alone.mean_loss, rel=1e-5)
            for name in start:
                torch.testing.assert_close(batched.update[name], alone.update[name], atol=1e-5, rtol=1e-4)


def test_local_steps_set_a_rounds_work_when_local_epochs_is_zero() -> None:
    # H (algorithm.num_inner_steps) is not the federated fallback: federated.local_steps is.
    (alone,) = _run(1, ["federated.local_epochs=0", "federated.local_steps=4", "algorithm.num_inner_steps=9"])
    assert alone["result"].extra["local_steps"] == 3 * 3 * 4  # rounds x clients per round x local_steps
