"""DDP, DiLoCo and FedAvg updates against values computed by hand, at world size 1 and on gloo ranks.

Every test drives the algorithm the way a user's loop does (set gradients, ``optimizer.step()``); the
expected weights come from closed forms in float64, not from running the code under test twice.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from farsync.algorithms.ddp import DDP
from farsync.algorithms.diloco import DiLoCo
from farsync.algorithms.fedavg import FedAvg
from farsync.comm.communicator import Communicator
from farsync.config import AlgorithmConfig
from farsync.sim.ranks import run_ranks

INITIAL = np.array([[1.0, -2.0, 0.5]])
"""Weights of the 1x3 linear layer every rank starts from."""


def _linear() -> nn.Linear:
    layer = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(INITIAL, dtype=torch.float32))
    return layer


def _comm(rank: int, world: int, group: dist.ProcessGroup | None) -> Communicator:
    return Communicator(group, rank, world)


def _run(fn, world: int):  # type: ignore[no-untyped-def]
    """Runs ``fn(rank, world, comm)`` on ``world`` ranks (in this thread at world size 1)."""
    if world == 1:
        return [fn(0, 1, _comm(0, 1, None))]
    return run_ranks(lambda rank, n, group, _store: fn(rank, n, _comm(rank, n, group)), world, timeout_s=30)


def _center(rank: int) -> np.ndarray:
    """Rank r minimises 0.5 * ||w - c_r||^2; the centres differ so the ranks drift apart."""
    return np.array([[3.0 * rank, 1.0 - rank, 2.0 + 0.5 * rank]])


# --------------------------------------------------------------------------------------------- DDP


@pytest.mark.parametrize("world", [1, 3])
def test_ddp_applies_the_mean_gradient_of_all_ranks(world: int) -> None:
    # Prepare
    lr = 0.1
    grads = [np.array([[1.0 + r, -0.5 * r, 2.0]]) for r in range(world)]
    steps = 2

    def worker(rank: int, n: int, comm: Communicator) -> np.ndarray:
        model = _linear()
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        with DDP(model, optimizer, comm, report_every=1):
            for _ in range(steps):
                model.weight.grad = torch.tensor(grads[rank], dtype=torch.float32)
                optimizer.step()
        return model.weight.detach().double().numpy()

    # Execute
    weights = _run(worker, world)
    # Assert
    expected = INITIAL - steps * lr * np.mean(grads, axis=0)
    for rank_weights in weights:
        np.testing.assert_allclose(rank_weights, expected, rtol=0, atol=1e-6)


def test_ddp_counts_rounds_every_report_every_steps() -> None:
    # Prepare
    model = _linear()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ddp = DDP(model, optimizer, _comm(0, 1, None), report_every=2)
    # Execute
    with ddp:
        for _ in range(5):
            model.weight.grad = torch.ones_like(model.weight)
            optimizer.step()
    # Assert
    assert (ddp.inner_step, ddp.round) == (5, 2)


# ------------------------------------------------------------------------------------------ DiLoCo


def _train_quadratic(
    algorithm: DiLoCo,
    model: nn.Linear,
    optimizer: torch.optim.Optimizer,
    center: np.ndarray,
    num_steps: int,
    *,
    finish: bool = True,
) -> None:
    """``num_steps`` SGD steps on 0.5||w - center||^2 with the algorithm attached; ``finish=False`` leaves
    without :meth:`finish` (as if training went on), so a partial round is not synchronised."""
    target = torch.tensor(center, dtype=torch.float32)
    algorithm.attach()
    for _ in range(num_steps):
        model.weight.grad = (model.weight.detach() - target).clone()
        optimizer.step()
    algorithm.detach()
    if finish:
        algorithm.finish()


def _expected_diloco(
    world: int, inner_lr: float, num_inner: int, outer_lr: float, momentum: float, num_rounds: int
) -> np.ndarray:
    """Closed form: H SGD steps on 0.5||w - c||^2 give w_H = c + (1 - lr)^H (w_0 - c), so every rank's
    pseudo-gradient is (1 - (1 - lr)^H)(w_g - c_r); then PyTorch's Nesterov SGD step."""
    shrink = 1.0 - (1.0 - inner_lr) ** num_inner
    mean_center = np.mean([_center(r) for r in range(world)], axis=0)
    global_weights, buffer = INITIAL.copy(), np.zeros_like(INITIAL)
    for _ in range(num_rounds):
        pseudo_gradient = shrink * (global_weights - mean_center)
        buffer = momentum * buffer + pseudo_gradient
        global_weights = global_weights - outer_lr * (pseudo_gradient + momentum * buffer)
    return global_weights


@pytest.mark.parametrize("world", [1, 2, 4])
def test_diloco_two_rounds_of_nesterov_outer_steps_match_the_hand_computation(world: int) -> None:
    # Prepare
    inner_lr, num_inner, num_rounds = 0.1, 3, 2
    config = AlgorithmConfig(num_inner_steps=num_inner, outer_lr=0.7, outer_momentum=0.9, nesterov=True)

    def worker(rank: int, n: int, comm: Communicator) -> tuple[np.ndarray, np.ndarray, int]:
        model = _linear()
        optimizer = torch.optim.SGD(model.parameters(), lr=inner_lr)
        diloco = DiLoCo(model, optimizer, comm, config)
        _train_quadratic(diloco, model, optimizer, _center(rank), num_inner * num_rounds)
        global_weights = diloco.global_tensors()[0].double().numpy()
        return global_weights, model.weight.detach().double().numpy(), diloco.round

    # Execute
    results = _run(worker, world)
    # Assert
    expected = _expected_diloco(world, inner_lr, num_inner, 0.7, 0.9, num_rounds)
    for global_weights, local_weights, rounds in results:
        assert rounds == num_rounds
        np.testing.assert_allclose(global_weights, expected, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(local_weights, global_weights)  # every rank restarts from the global
    assert all(np.array_equal(results[0][0], r[0]) for r in results)  # bitwise identical across ranks


def test_diloco_does_not_synchronise_before_h_steps() -> None:
    # Prepare
    model = _linear()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    diloco = DiLoCo(model, optimizer, _comm(0, 1, None), AlgorithmConfig(num_inner_steps=4))
    # Execute
    _train_quadratic(diloco, model, optimizer, _center(1), 3, finish=False)
    # Assert
    assert diloco.round == 0
    np.testing.assert_array_equal(diloco.global_tensors()[0].numpy(), INITIAL.astype(np.float32))
    assert not np.allclose(model.weight.detach().numpy(), INITIAL)


@pytest.mark.parametrize("world", [1, 2])
def test_diloco_finish_synchronises_a_last_partial_round(world: int) -> None:
    # Prepare: H = 4 but training stops after 4 + 3 steps
    inner_lr = 0.1
    config = AlgorithmConfig(num_inner_steps=4, outer_lr=0.7, outer_momentum=0.0)

    def worker(rank: int, n: int, comm: Communicator) -> tuple[np.ndarray, int]:
        model = _linear()
        optimizer = torch.optim.SGD(model.parameters(), lr=inner_lr)
        diloco = DiLoCo(model, optimizer, comm, config)
        with diloco:
            target = torch.tensor(_center(rank), dtype=torch.float32)
            for _ in range(7):
                model.weight.grad = (model.weight.detach() - target).clone()
                optimizer.step()
        return diloco.global_tensors()[0].double().numpy(), diloco.round

    # Execute
    results = _run(worker, world)
    # Assert: one round of H = 4, then one of 3 steps, plain SGD outer steps (momentum 0)
    mean_center = np.mean([_center(r) for r in range(world)], axis=0)
    expected = INITIAL.copy()
    for steps in (4, 3):
        expected = expected - 0.7 * (1.0 - (1.0 - inner_lr) ** steps) * (expected - mean_center)
    for global_weights, rounds in results:
        assert rounds == 2
        np.testing.assert_allclose(global_weights, expected, rtol=0, atol=1e-5)


def test_diloco_leaves_out_a_worker_with_a_nan_pseudo_gradient(caplog: pytest.LogCaptureFixture) -> None:
    # Prepare
    world, inner_lr, num_inner = 3, 0.1, 2
    config = AlgorithmConfig(num_inner_steps=num_inner, outer_lr=0.7, outer_momentum=0.9)

    def worker(rank: int, n: int, comm: Communicator) -> np.ndarray:
        model = _linear()
        optimizer = torch.optim.SGD(model.parameters(), lr=inner_lr)
        diloco = DiLoCo(model, optimizer, comm, config)
        center = np.full_like(INITIAL, np.nan) if rank == 2 else _center(rank)
        _train_quadratic(diloco, model, optimizer, center, num_inner)
        return diloco.global_tensors()[0].double().numpy()

    # Execute
    with caplog.at_level(logging.WARNING, logger="farsync.algorithms.diloco"):
        results = _run(worker, world)
    # Assert: the outer step used only ranks 0 and 1, and rank 2 adopted their average
    expected = _expected_diloco(2, inner_lr, num_inner, 0.7, 0.9, 1)
    for global_weights in results:
        np.testing.assert_allclose(global_weights, expected, rtol=0, atol=1e-5)
    assert any("worker 2" in r.getMessage() and "NaN" in r.getMessage() for r in caplog.records)


def test_diloco_state_dict_round_trip_restores_outer_momentum() -> None:
    # Prepare (explicit momentum: at one worker the default rule has none)
    config = AlgorithmConfig(num_inner_steps=2, outer_lr=0.7, outer_momentum=0.9)
    model = _linear()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    diloco = DiLoCo(model, optimizer, _comm(0, 1, None), config)
    _train_quadratic(diloco, model, optimizer, _center(1), 3, finish=False)
    state = diloco.state_dict()
    restored = DiLoCo(_linear(), torch.optim.SGD(_linear().parameters(), lr=0.1), _comm(0, 1, None), config)
    # Execute
    restored.load_state_dict(state)
    # Assert
    assert (restored.inner_step, restored.round, restored.steps_in_round) == (3, 1, 1)
    assert torch.equal(restored.global_tensors()[0], diloco.global_tensors()[0])
    buffers = [
        s["momentum_buffer"]
        for s in (
            restored.outer.optimizer.state_dict()["state"][0],
            diloco.outer.optimizer.state_dict()["state"][0],
        )
    ]
    assert torch.equal(buffers[0], buffers[1])


# ------------------------------------------------------------------------------------------ FedAvg


@pytest.mark.parametrize("world", [1, 3])
def test_fedavg_sets_the_global_model_to_the_sample_weighted_average(world: int) -> None:
    # Prepare
    inner_lr, num_inner = 0.2, 2
    samples = [10, 30, 60][:world]
    config = AlgorithmConfig(num_inner_steps=num_inner)

    def worker(rank: int, n: int, comm: Communicator) -> np.ndarray:
        model = _linear()
        optimizer = torch.optim.SGD(model.parameters(), lr=inner_lr)
        fedavg = FedAvg(model, optimizer, comm, config, num_samples=samples[rank])
        _train_quadratic(fedavg, model, optimizer, _center(rank), num_inner)
        return fedavg.global_tensors()[0].double().numpy()

    # Execute
    results = _run(worker, world)
    # Assert: local models w_r = c_r + (1 - lr)^H (w_0 - c_r); global = sum n_r w_r / sum n_r
    decay = (1.0 - inner_lr) ** num_inner
    local = [_center(r) + decay * (INITIAL - _center(r)) for r in range(world)]
    expected = sum(n * w for n, w in zip(samples, local, strict=True)) / sum(samples)
    for global_weights in results:
        np.testing.assert_allclose(global_weights, expected, rtol=0, atol=1e-5)


def test_fedavg_rejects_a_worker_without_samples() -> None:
    # Prepare
    model = _linear()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    # Execute / Assert
    with pytest.raises(ValueError, match="num_samples"):
        FedAvg(model, optimizer, _comm(0, 1, None), num_samples=0)
