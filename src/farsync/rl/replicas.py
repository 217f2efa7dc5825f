"""Data parallelism over several GRPO trainers: the lead trainer's replicas, in threads, averaging with DDP.

This module owns running ``rl.num_trainers`` trainers in one process: every trainer has its own copy of the
policy and optimizer, its own rollout channel (workers deal groups out to the channels in turn) and its own
intake, and all of them join one gloo group on a local TCPStore; farsync's :class:`~farsync.algorithms.ddp.DDP`
attached to each optimizer averages the gradients inside ``optimizer.step()``, so the replicas stay equal.
The lead (rank 0, the runner's own trainer) also publishes weights, evaluates and writes checkpoints; the
others only train. A replica that fails stops its thread and the others then fail on the group's timeout.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from farsync.algorithms.base import params_sha256
from farsync.algorithms.ddp import DDP
from farsync.comm.communicator import Communicator
from farsync.comm.groups import make_group, open_store
from farsync.rl.intake import RolloutIntake
from farsync.rl.trainer import GRPOTrainer
from farsync.rl.transport import RolloutChannel

__all__ = ["Replicas", "attach_ddp"]

logger = logging.getLogger(__name__)

_GROUP = "rl-trainers"


def attach_ddp(trainer: GRPOTrainer, store: Any, rank: int, world_size: int, timeout_s: float) -> DDP:
    """Joins the trainers' gloo group and attaches DDP to ``trainer``'s optimizer."""
    group = make_group(store, _GROUP, rank, world_size, timeout_s=timeout_s)
    ddp = DDP(trainer.model, trainer.optimizer, Communicator(group, rank, world_size))
    ddp.attach()
    trainer.algorithm = ddp
    return ddp


@dataclass
class Replicas:
    """The non-lead trainers (ranks 1..n-1) of a run; :meth:`start` them before the lead joins the group."""

    world_size: int
    timeout_s: float
    trainers: list[GRPOTrainer] = field(default_factory=list)
    intakes: list[RolloutIntake] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(
        self,
        lead: GRPOTrainer,
        make_intake: Callable[[], RolloutIntake],
        channels: list[RolloutChannel],
        loop: Callable[[GRPOTrainer, RolloutIntake, RolloutChannel], None],
    ) -> Any:
        """Copies the lead's policy and optimizer state into each replica, starts their threads (each runs
        ``loop(trainer, intake, channel)``) and returns the store the lead joins with."""
        master = open_store("127.0.0.1", 0, self.world_size, is_master=True, timeout_s=self.timeout_s)
        for rank in range(1, self.world_size):
            model: nn.Module = copy.deepcopy(lead.model)
            optimizer = torch.optim.AdamW(
                model.parameters(), lr=lead.optimizer.param_groups[0]["lr"], weight_decay=0.0
            )
            optimizer.load_state_dict(copy.deepcopy(lead.optimizer.state_dict()))
            trainer = GRPOTrainer(
                model, optimizer, lead.loss_config, temperature=lead.temperature, grad_clip=lead.grad_clip
            )
            trainer.version = lead.version
            intake = make_intake()
            self.trainers.append(trainer)
            self.intakes.append(intake)
            thread = threading.Thread(
                target=self._main,
                args=(rank, master.port, trainer, intake, channels[rank], loop),
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        return master

    def _main(
        self,
        rank: int,
        port: int,
        trainer: GRPOTrainer,
        intake: RolloutIntake,
        channel: RolloutChannel,
        loop: Callable[[GRPOTrainer, RolloutIntake, RolloutChannel], None],
    ) -> None:
        try:
            store = open_store("127.0.0.1", port, self.world_size, is_master=False, timeout_s=self.timeout_s)
            attach_ddp(trainer, store, rank, self.world_size, self.timeout_s)
            loop(trainer, intake, channel)
        except BaseException as error:  # noqa: BLE001 - reported by join()
            logger.exception("trainer replica %d failed", rank)
            self.errors.append(error)

    def join(self, lead: GRPOTrainer) -> bool:
        """Waits for the replicas; re-raises a replica's error; True when every replica's weights equal the
        lead's bit for bit."""
        for thread in self._threads:
            thread.join(self.timeout_s)
        if self.errors:
            raise RuntimeError(f"a trainer replica failed: {self.errors[0]!r}") from self.errors[0]
        expected = params_sha256(list(lead.model.parameters()))
        return all(params_sha256(list(t.model.parameters())) == expected for t in self.trainers)
