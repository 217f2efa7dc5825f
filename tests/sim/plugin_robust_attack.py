"""A plug-in attack for test_sim_attacking_reducer.py.

Loaded by name as ``plugin_robust_attack:make_colluding_shift``.
"""

import torch

from farsync.sim.attacks import Attack, AttackContext

CALLS: list[dict[str, object]] = []


def make_colluding_shift(scale: float = 1.0) -> Attack:
    """Send the colluders' mean honest update plus ``scale`` in every coordinate, recording what it saw."""

    def attack(update: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        CALLS.append({"worker": ctx.worker, "round": ctx.round, "num_colluders": len(ctx.honest_updates)})
        return torch.stack(ctx.honest_updates).mean(dim=0) + scale

    return attack
