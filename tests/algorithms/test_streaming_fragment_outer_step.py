"""Safety net (issue 10, item 8e): Streaming DiLoCo's fragment outer step with two ranks, against a hand-stepped
reference.

Douillard et al. 2025 (arXiv 2501.18512): fragment p's pseudo-gradient is averaged over the workers, and tau
inner steps later the global fragment takes an outer step with that average and every worker mixes
``x_p <- alpha x_p + (1 - alpha) theta_p``. Two one-weight layers (P = 2 fragments, H = 4, tau = 1, alpha 0.25,
outer SGD lr 0.7 with Nesterov momentum 0.9 kept per fragment), two ranks with different constant gradients,
so the average differs from either worker's own pseudo-gradient.

Broken on purpose to check this fails: the fragment's own pseudo-gradient used instead of the average; the
outer step applied one step late.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch
from torch import nn

from farsync.algorithms.streaming import StreamingDiLoCo
from farsync.comm.communicator import Communicator
from farsync.config import AlgorithmConfig
from farsync.sim.ranks import run_ranks

INNER_LR, OUTER_LR, MOMENTUM, ALPHA, TAU, H = 0.1, 0.7, 0.9, 0.25, 1, 4
NUM_STEPS = 12
INITIAL = [0.5, -0.3]
GRADIENTS = [[1.0, 2.0], [3.0, -1.0]]
"""GRADIENTS[rank][k]: the constant gradient of weight k ("k.weight", fragment k) on worker ``rank``."""
STARTS = {2: 1, 4: 0, 6: 1, 8: 0, 10: 1, 12: 0}
"""Step -> the fragment whose sync starts after it: fragment p at offset p H / P within each round."""

_INIT_LOCK = threading.Lock()


def _reference() -> tuple[list[list[list[float]]], list[float]]:
    """Each rank's weights after every step, and the final global weights, stepped by hand."""
    x = [list(INITIAL) for _ in GRADIENTS]
    theta, momentum = list(INITIAL), [0.0, 0.0]
    history: list[list[list[float]]] = [[] for _ in GRADIENTS]
    in_flight: list[tuple[int, int, float]] = []  # (due step, fragment, averaged pseudo-gradient)

    def outer_step(k: int, average: float, first: bool) -> None:
        momentum[k] = average if first else MOMENTUM * momentum[k] + average
        theta[k] -= OUTER_LR * (average + MOMENTUM * momentum[k])

    stepped = [False, False]
    for step in range(1, NUM_STEPS + 1):
        for rank, gradient in enumerate(GRADIENTS):
            x[rank] = [x[rank][k] - INNER_LR * gradient[k] for k in range(2)]
        if step in STARTS:
            k = STARTS[step]
            average = sum(theta[k] - x[rank][k] for rank in range(len(GRADIENTS))) / len(GRADIENTS)
            in_flight.append((step + TAU, k, average))
        for due, k, average in [s for s in in_flight if s[0] <= step]:
            in_flight.remove((due, k, average))
            outer_step(k, average, not stepped[k])
            stepped[k] = True
            for rank in range(len(GRADIENTS)):
                x[rank][k] = ALPHA * x[rank][k] + (1 - ALPHA) * theta[k]
        for rank in range(len(GRADIENTS)):
            history[rank].append(list(x[rank]))
    for _, k, average in in_flight:  # finish(): the syncs still in flight, then the global weights
        outer_step(k, average, not stepped[k])
    return history, theta


def _train(rank: int, world: int, group: Any, store: Any) -> tuple[list[list[float]], list[float]]:
    with _INIT_LOCK:
        model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False))
        with torch.no_grad():
            for param, value in zip(model.parameters(), INITIAL, strict=True):
                param.fill_(value)
    optimizer = torch.optim.SGD(model.parameters(), lr=INNER_LR)
    config = AlgorithmConfig(
        name="streaming",
        num_inner_steps=H,
        num_fragments=2,
        streaming_tau=TAU,
        streaming_alpha=ALPHA,
        outer_lr=OUTER_LR,
        outer_momentum=MOMENTUM,
        nesterov=True,
    )
    history: list[list[float]] = []
    with StreamingDiLoCo(model, optimizer, Communicator(group, rank, world), config):
        for _ in range(NUM_STEPS):
            for param, gradient in zip(model.parameters(), GRADIENTS[rank], strict=True):
                param.grad = torch.full_like(param, gradient)
            optimizer.step()
            history.append([float(p.detach()) for p in model.parameters()])
    return history, [float(p.detach()) for p in model.parameters()]


def test_two_ranks_follow_the_hand_stepped_fragment_outer_steps() -> None:
    results = run_ranks(_train, 2, prefix="safety-streaming")
    expected_history, expected_final = _reference()
    for rank, (history, final) in enumerate(results):
        for step, (got, want) in enumerate(zip(history, expected_history[rank], strict=True), start=1):
            assert got == pytest.approx(want, abs=1e-5), f"rank {rank} after step {step}"
        assert final == pytest.approx(expected_final, abs=1e-5), f"rank {rank}: final global weights"
    assert results[0][1] == results[1][1]  # every worker ends with the same global weights
