"""One-round overlap against step-by-step references of every rule (1 to 3 ranks, a real model and data),
eager at M = 1 is synchronous DiLoCo, and a checkpoint mid-run resumes the same trajectory.

The published rules are also pinned on numbers worked out by hand in ``test_overlap_rules.py``."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from overlap_helpers import (
    INNER_LR,
    MOMENTUM,
    OUTER_LR,
    make_model,
    reference,
    train_steps,
)

from farsync.algorithms.diloco import DiLoCo
from farsync.algorithms.overlap import OverlappedDiLoCo
from farsync.algorithms.registry import algorithm_class
from farsync.comm.communicator import Communicator
from farsync.config import AlgorithmConfig
from farsync.sim.ranks import run_ranks

H, ROUNDS = 3, 4


def _config(variant: str, delay: int = 1) -> AlgorithmConfig:
    return AlgorithmConfig(
        num_inner_steps=H,
        outer_lr=OUTER_LR,
        outer_momentum=MOMENTUM,
        delay=delay,
        overlap=variant,  # type: ignore[arg-type]
    )


def _run(variant: str, rank: int, world: int, group: Any) -> dict[str, Any]:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=INNER_LR)
    algorithm = OverlappedDiLoCo(model, optimizer, Communicator(group, rank, world), _config(variant))
    with algorithm:
        train_steps(model, optimizer, rank, 0, ROUNDS * H)
        local = model.weight.detach().clone()
    return {
        "local": local,
        "global": algorithm.global_tensors()[0].clone(),
        "model": model.weight.detach().clone(),
        "sha": algorithm.global_sha256(),
        "rounds": algorithm.round,
    }


@pytest.mark.parametrize("variant", ["naive", "eager", "delayed"])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_overlap_matches_hand_stepped_reference(variant: str, world: int) -> None:
    # Prepare
    expected_local, expected_global = reference(variant, world, ROUNDS, H)
    # Execute
    results = run_ranks(lambda r, w, g, s: _run(variant, r, w, g), world, prefix=f"overlap-{variant}-{world}")
    # Assert
    for rank, result in enumerate(results):
        assert result["rounds"] == ROUNDS
        torch.testing.assert_close(result["local"], expected_local[rank], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(result["global"], expected_global, atol=1e-5, rtol=1e-5)
        assert torch.equal(result["model"], result["global"])  # finish() loads the global weights
    assert len({r["sha"] for r in results}) == 1  # bitwise-identical global weights on every rank


def test_eager_at_world_size_one_is_synchronous_diloco() -> None:
    # With M = 1 the worker's own pseudo-gradient is the whole average: eager's estimate is
    # Delta^t / 1 + Delta^{t-1} - Delta^{t-1} / 1 = Delta^t, i.e. plain DiLoCo.
    variant = "eager"
    finals = []
    for cls, config in ((OverlappedDiLoCo, _config(variant)), (DiLoCo, _config("delayed", delay=0))):
        model = make_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=INNER_LR)
        with cls(model, optimizer, Communicator(None, 0, 1), config):
            train_steps(model, optimizer, 0, 0, ROUNDS * H)
        finals.append(model.weight.detach().clone())
    torch.testing.assert_close(finals[0], finals[1], atol=1e-6, rtol=1e-6)


def test_delay_one_dispatches_to_the_overlapped_class() -> None:
    assert algorithm_class("diloco", delay=1) is OverlappedDiLoCo
    assert algorithm_class("diloco", delay=0) is DiLoCo


@pytest.mark.parametrize("variant", ["naive", "eager", "delayed"])
def test_checkpoint_mid_run_resumes_the_same_trajectory(variant: str) -> None:
    def fresh() -> tuple[torch.nn.Linear, torch.optim.SGD, OverlappedDiLoCo]:
        model = make_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=INNER_LR)
        return (
            model,
            optimizer,
            OverlappedDiLoCo(model, optimizer, Communicator(None, 0, 1), _config(variant)),
        )

    model, optimizer, algorithm = fresh()
    with algorithm:
        train_steps(model, optimizer, 0, 0, 2 * H)
        state = copy.deepcopy(algorithm.state_dict())  # a checkpoint is a copy on disk
        weights = copy.deepcopy(model.state_dict())
        train_steps(model, optimizer, 0, 2 * H, 2 * H)
    uninterrupted = model.weight.detach().clone()

    model, optimizer, algorithm = fresh()
    model.load_state_dict(weights)
    algorithm.load_state_dict(state)
    with algorithm:
        train_steps(model, optimizer, 0, 2 * H, 2 * H)
    torch.testing.assert_close(model.weight.detach(), uninterrupted, atol=0, rtol=0)
