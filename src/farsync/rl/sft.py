"""The supervised warm-start: teach the policy the task's answer format before RL.

This module owns the short supervised phase RL starts from (and the supervised control a benchmark
compares RL with): next-token cross-entropy on reference answers of training problems, AdamW with a constant
learning rate. :class:`SupervisedTrainer` keeps its optimizer and its place in the problem stream, so a
control can go on exactly where the warm-start stopped.
"""

from __future__ import annotations

import logging
import time

import torch
from torch import nn

from farsync.rl.policy import sft_loss
from farsync.rl.tasks import CharTokenizer, Task

__all__ = ["SupervisedTrainer"]

logger = logging.getLogger(__name__)

_SFT_STREAM_OFFSET = 10**9
"""Supervised problems come from far along the training stream, apart from those the RL workers draw."""


class SupervisedTrainer:
    """Supervised steps on ``task``'s training problems, ``batch_size`` per step."""

    def __init__(self, model: nn.Module, task: Task, *, lr: float, batch_size: int) -> None:
        self.model, self.task, self.batch_size = model, task, batch_size
        self.tokenizer = CharTokenizer()
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        self.num_steps = 0
        self.wall_s = 0.0
        self.last_loss = float("nan")

    def step(self) -> float:
        """One supervised step; returns its loss."""
        started = time.perf_counter()
        first = _SFT_STREAM_OFFSET + self.num_steps * self.batch_size
        problems = [self.task.train_problem(first + i) for i in range(self.batch_size)]
        self.model.train()
        loss = sft_loss(self.model, problems, self.tokenizer)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        self.num_steps += 1
        self.wall_s += time.perf_counter() - started
        self.last_loss = float(loss.detach())
        return self.last_loss

    def run(self, num_steps: int) -> float:
        """``num_steps`` steps; returns the last loss."""
        for _ in range(num_steps):
            self.step()
        return self.last_loss

    def run_for(self, seconds: float) -> int:
        """Steps until ``seconds`` of its own stepping time have passed; returns how many it took."""
        start_steps, budget_end = self.num_steps, self.wall_s + seconds
        while self.wall_s < budget_end:
            self.step()
        return self.num_steps - start_steps
