"""CenteredClip with history (Karimireddy, He and Jaggi 2021, arXiv 2012.10333): started from the previous
aggregate, a few iterations, composed with NNM; the equations stepped by hand."""

from __future__ import annotations

import math

import pytest
import torch

from farsync.aggregate import build_aggregator, nearest_neighbor_mixing
from farsync.config import AggregationConfig
from farsync.reducers.shard_rule import ShardAggregator

# The coordinate-wise median of these rows is (1, 0); the previous aggregate is elsewhere, (1, 1).
STACK = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 3.0]], dtype=torch.float64)
PREVIOUS = torch.tensor([1.0, 1.0], dtype=torch.float64)


def one_step(stack: torch.Tensor, start: torch.Tensor, tau: float) -> torch.Tensor:
    """v + (1/n) sum_i (x_i - v) min(1, tau / ||x_i - v||), written out row by row."""
    total = torch.zeros_like(start)
    for row in stack:
        offset = row - start
        distance = math.sqrt(float((offset**2).sum()))
        if distance > 0:  # a row on the estimate pulls nowhere
            total += offset * min(1.0, tau / distance)
    return start + total / stack.shape[0]


def test_one_iteration_from_the_previous_aggregate() -> None:
    # Offsets from (1, 1): (-1, -1) and (1, -1) at distance sqrt 2, clipped to 1/sqrt 2 each; (0, 2) at
    # distance 2, clipped to (0, 1). Their mean is (0, (1 - sqrt 2) / 3).
    rule = build_aggregator("centered_clip", tau=1.0, radius="fixed", num_iters=1, tol=0.0, start=PREVIOUS)
    expected = torch.tensor([1.0, 1.0 + (1.0 - math.sqrt(2.0)) / 3.0], dtype=torch.float64)
    torch.testing.assert_close(rule(STACK), expected)


def test_without_a_start_it_begins_at_the_median() -> None:
    # From the median (1, 0): offsets (-1, 0), (1, 0) unclipped, (0, 3) clipped to (0, 1): step (0, 1/3).
    rule = build_aggregator("centered_clip", tau=1.0, radius="fixed", num_iters=1, tol=0.0)
    torch.testing.assert_close(rule(STACK), torch.tensor([1.0, 1.0 / 3.0], dtype=torch.float64))


def test_three_iterations_repeat_the_step() -> None:
    rule = build_aggregator("centered_clip", tau=0.5, radius="fixed", num_iters=3, tol=0.0, start=PREVIOUS)
    expected = PREVIOUS
    for _ in range(3):
        expected = one_step(STACK, expected, 0.5)
    torch.testing.assert_close(rule(STACK), expected)


def test_start_is_refused_by_other_rules() -> None:
    with pytest.raises(ValueError, match="start is a centered_clip option"):
        build_aggregator("median", start=PREVIOUS)


def test_the_owner_starts_from_its_previous_shard_after_nnm() -> None:
    # Prepare: five rows, one far away; NNM with f = 1 mixes each row with its 4 nearest, then one clipped
    # step of radius 0.5 from the previous aggregate.
    stack = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [9.0, 9.0]], dtype=torch.float64)
    config = AggregationConfig(
        rule="centered_clip", clip_start="previous", adaptive_tau=False, tau=0.5, num_iters=1,
        preaggregation="nnm", f=1,
    )  # fmt: skip
    owner = ShardAggregator(config)
    # Execute
    with_history = owner(stack, torch.ones(5), PREVIOUS)
    first_round = owner(stack, torch.ones(5), None)
    # Assert
    mixed = nearest_neighbor_mixing(stack, 1)
    torch.testing.assert_close(with_history, one_step(mixed, PREVIOUS, 0.5))
    median_start = mixed.median(dim=0).values  # five rows: the middle one, no averaging
    torch.testing.assert_close(first_round, one_step(mixed, median_start, 0.5))
    assert owner.uses_history
    assert not ShardAggregator(AggregationConfig(rule="centered_clip")).uses_history
