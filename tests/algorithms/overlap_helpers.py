"""Shared bits of the overlap tests: a 2-parameter linear model, its data, and hand-stepped references."""

from __future__ import annotations

import torch
from torch import nn

INNER_LR = 0.1
OUTER_LR = 0.7
MOMENTUM = 0.9


def sample(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.tensor([[1.0 + 0.1 * rank, -0.5 + 0.05 * step]])
    y = torch.tensor([[0.3 * rank - 0.2]])
    return x, y


def make_model() -> nn.Linear:
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, -0.25]]))
    return model


def train_steps(
    model: nn.Module, optimizer: torch.optim.Optimizer, rank: int, first: int, count: int
) -> None:
    for step in range(first, first + count):
        x, y = sample(rank, step)
        loss = ((model(x) - y) ** 2).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def grad(w: torch.Tensor, rank: int, step: int) -> torch.Tensor:
    x, y = sample(rank, step)
    return 2 * ((w @ x.T) - y) * x


class HandOuterSGD:
    """SGD with Nesterov momentum written out: buf = mu buf + g; w -= lr (g + mu buf)."""

    def __init__(self, w: torch.Tensor) -> None:
        self.w = w.clone()
        self.buf: torch.Tensor | None = None

    def step(self, g: torch.Tensor) -> None:
        self.w = self.peek(g)
        self.buf = g.clone() if self.buf is None else MOMENTUM * self.buf + g

    def peek(self, g: torch.Tensor) -> torch.Tensor:
        """The weights one step with ``g`` would give, without taking it."""
        buf = g.clone() if self.buf is None else MOMENTUM * self.buf + g
        return self.w - OUTER_LR * (g + MOMENTUM * buf)


def reference(variant: str, world: int, num_rounds: int, h: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Local weights of each worker after ``num_rounds`` rounds and the final global weights after finish.

    Every rule steps the consensus theta <- OuterSGD(theta, avg^{t-1}) one round late, then restarts:
    naive:     x_i <- theta (Kale et al. 2025, Algorithm 2);
    eager:     x_i <- theta_i <- OuterSGD_i(theta_i, D_i^t / M + avg^{t-1} - D_i^{t-1} / M), each worker with
               its own outer momentum (Kale et al. 2025, Algorithm 3);
    delayed:   x_i <- theta + (x_i - a_i);
    """
    w0 = make_model().weight.detach().clone()
    x = [w0.clone() for _ in range(world)]
    anchor = [w0.clone() for _ in range(world)]
    consensus = HandOuterSGD(w0)
    own_outer = [HandOuterSGD(w0) for _ in range(world)]
    previous_own: list[torch.Tensor | None] = [None] * world
    previous_avg: torch.Tensor | None = None
    step = 0
    for _ in range(num_rounds):
        for _ in range(h):
            x = [x[i] - INNER_LR * grad(x[i], i, step) for i in range(world)]
            step += 1
        own = [anchor[i] - x[i] for i in range(world)]
        average = sum(own) / world
        if previous_avg is not None:
            consensus.step(previous_avg)
        for i in range(world):
            if variant == "naive":
                x[i] = consensus.w.clone()
            elif variant == "eager":
                gradient = own[i] / world
                if previous_avg is not None:
                    before = previous_own[i]
                    gradient = gradient + previous_avg - (before / world if before is not None else 0.0)
                own_outer[i].step(gradient)
                previous_own[i] = own[i]
                x[i] = own_outer[i].w.clone()
            else:  # delayed
                x[i] = consensus.w + (x[i] - anchor[i])
            anchor[i] = x[i].clone()
        previous_avg = average
    assert previous_avg is not None
    consensus.step(previous_avg)
    return x, consensus.w
