"""Plug-in attack factories, loaded by name in test_sim_attacks.py."""

import torch

from farsync.sim.attacks import Attack, AttackContext

NOT_CALLABLE = 42


def make_shift_attack(offset: float = 1.0) -> Attack:
    """Add ``offset`` plus the round number to every coordinate."""

    def attack(update: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        return update + offset + ctx.round

    return attack


def make_nothing() -> int:
    """A broken factory: returns something that is not an attack."""
    return 7
