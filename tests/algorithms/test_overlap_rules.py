"""The published overlap rules pinned by hand: Kale et al. 2025 (arXiv 2502.12996) Algorithm 2 (``naive``) and
Algorithm 3 (``eager``), and farsync's ``delayed``, on numbers worked out on paper.

Two workers, one scalar weight, H = 1; each "inner step" is SGD with lr 1 on a set gradient, so a worker's
pseudo-gradient in round t is exactly the number it was given: worker 0 moves by 1, 2, 4 and worker 1 by
3, 0, -2 (averages 2, 1, 1). Outer SGD lr 0.5, Nesterov momentum 0.5 (``buf = 0.5 buf + g``;
``w -= 0.5 (g + 0.5 buf)``), so every value is exact in binary. Worked out for ``eager``, worker 0:

    t=1: Dt = 1/2 * 1                  = 0.5   buf 0.5    w = 0      - 0.5 * 0.75   = -0.375
    t=2: Dt = 1/2 * 2 + (2 - 1/2 * 1)  = 2.5   buf 2.75   w = -0.375 - 0.5 * 3.875  = -2.3125
    t=3: Dt = 1/2 * 4 + (1 - 1/2 * 2)  = 2     buf 3.375  w = -2.3125 - 0.5 * 3.6875 = -4.15625

worker 1: Dt = 1.5, 0.5, 0 -> w = -1.125, -1.6875, -1.84375. The consensus takes the averages one round
late (2 at t=2, 1 at t=3, 1 at finish): -1.5, -2.5, -3.5, so ``naive`` starts rounds 2, 3, 4 at 0, -1.5,
-2.5 and every rule ends at -3.5; ``delayed`` starts at theta minus the worker's own pseudo-gradient.

Broken on purpose to check these fail: the eager estimate without subtracting the worker's own previous
share; its trajectory stepped with the consensus' momentum instead of its own; naive keeping the local
progress (delayed's start).
"""

from __future__ import annotations

from typing import Any, get_args, get_type_hints

import pytest
import torch
from torch import nn

from farsync.algorithms.overlap import OverlappedDiLoCo
from farsync.comm.communicator import Communicator
from farsync.config import OVERLAP_RECIPE_SCALE, OVERLAP_RULES, AlgorithmConfig, outer_recipe
from farsync.sim.ranks import run_ranks

MOVES = {0: [1.0, 2.0, 4.0], 1: [3.0, 0.0, -2.0]}
EXPECTED_STARTS = {
    "eager": {0: [-0.375, -2.3125, -4.15625], 1: [-1.125, -1.6875, -1.84375]},
    "naive": {0: [0.0, -1.5, -2.5], 1: [0.0, -1.5, -2.5]},
    "delayed": {0: [-1.0, -3.5, -6.5], 1: [-3.0, -1.5, -0.5]},
}
"""Worker -> its weight at the start of rounds 2, 3 and 4 (module docstring)."""
EXPECTED_FINAL = -3.5
MEASURED_BEST = {"naive": (0.5, 0.5), "eager": (0.7, 0.3), "delayed": (1.0, 0.7)}
"""(outer lr, momentum) of each rule's best run in bench quality's overlap sweep (M = 4, H = 30)."""


def _run(rule: str, rank: int, world: int, group: Any) -> dict[str, Any]:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    config = AlgorithmConfig(num_inner_steps=1, outer_lr=0.5, outer_momentum=0.5, delay=1, overlap=rule)  # type: ignore[arg-type]
    algorithm = OverlappedDiLoCo(model, optimizer, Communicator(group, rank, world), config)
    starts = []
    with algorithm:
        for move in MOVES[rank]:
            model.weight.grad = torch.tensor([[move]])
            optimizer.step()
            assert algorithm.round_ended
            starts.append(float(model.weight.detach()))
    return {"starts": starts, "final": float(model.weight.detach()), "sha": algorithm.global_sha256()}


@pytest.mark.parametrize("rule", sorted(EXPECTED_STARTS))
def test_overlap_rule_matches_the_numbers_worked_out_by_hand(rule: str) -> None:
    # Execute
    results = run_ranks(lambda r, w, g, s: _run(rule, r, w, g), 2, prefix=f"overlap-hand-{rule}")
    # Assert: exact (every number is a short binary fraction)
    for rank, result in enumerate(results):
        assert result["starts"] == EXPECTED_STARTS[rule][rank], (rule, rank)
        assert result["final"] == EXPECTED_FINAL
    assert results[0]["sha"] == results[1]["sha"]


def test_overlap_rules_are_the_config_literal() -> None:
    assert get_args(get_type_hints(AlgorithmConfig)["overlap"]) == OVERLAP_RULES


@pytest.mark.parametrize("rule", OVERLAP_RULES)
def test_an_overlapped_run_left_to_the_rule_gets_its_rules_recipe(rule: str) -> None:
    # Prepare: outer lr / momentum left to the rule (0 / -1, the config's defaults), M = 1, H = 30
    model = nn.Linear(1, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    config = AlgorithmConfig(num_inner_steps=30, delay=1, overlap=rule)  # type: ignore[arg-type]
    # Execute
    algorithm = OverlappedDiLoCo(model, optimizer, Communicator(None, 0, 1), config)
    # Assert: the overlap rule's recipe, which is the synchronous one scaled by OVERLAP_RECIPE_SCALE
    lr_scale, momentum_scale = OVERLAP_RECIPE_SCALE[rule]
    synchronous = outer_recipe(1, 30)
    assert (algorithm.config.outer_lr, algorithm.config.outer_momentum) == outer_recipe(1, 30, rule)
    assert outer_recipe(1, 30, rule) == (
        round(synchronous[0] * lr_scale, 2),
        round(synchronous[1] * momentum_scale, 2),
    )
    algorithm.background.close()


def test_the_overlap_recipes_at_bench_qualitys_cell() -> None:
    # M = 4, H = 30: the synchronous rule's 1.0 / 0.7, and each overlap rule's best of bench quality's sweep
    assert outer_recipe(4, 30) == (1.0, 0.7)
    assert {rule: outer_recipe(4, 30, rule) for rule in OVERLAP_RULES} == MEASURED_BEST
