"""Rule lookup by name, parameter validation, and shard-by-shard use of every rule."""

from typing import Any

import pytest
import torch

from farsync.aggregate import RULES, build_aggregator


def test_every_rule_builds_and_returns_shape_d() -> None:
    # Prepare: n=7 leaves room for f=1 and m=3.
    stack = torch.arange(7 * 5, dtype=torch.float32).reshape(7, 5)
    for rule in RULES:
        aggregator = build_aggregator(rule, beta=0.2, f=1, m=3, tau=10.0)
        # Execute
        result = aggregator(stack)
        # Assert
        assert result.shape == (5,), rule


@pytest.mark.parametrize("rule", ["mean", "median", "trimmed_mean", "centered_clip"])
def test_coordinate_wise_rules_agree_shard_by_shard(rule: str) -> None:
    # CenteredClip is not coordinate-wise, but with a huge tau it is the mean on any shard.
    generator = torch.Generator().manual_seed(0)
    stack = torch.randn(6, 10, generator=generator)
    aggregator = build_aggregator(rule, beta=0.2, tau=1.0e6)
    whole = aggregator(stack)
    sharded = torch.cat([aggregator(shard) for shard in stack.tensor_split(3, dim=1)])
    torch.testing.assert_close(whole, sharded)


def test_builds_krum_with_bound_f() -> None:
    stack = torch.tensor([[0.0], [1.0], [2.0], [100.0], [101.0]])
    result = build_aggregator("krum", f=1)(stack)
    torch.testing.assert_close(result, torch.tensor([1.0]))


def test_unknown_rule_lists_allowed_rules() -> None:
    with pytest.raises(ValueError, match=r"rule must be one of mean, median.*got 'average'"):
        build_aggregator("average")


@pytest.mark.parametrize(
    ("rule", "kwargs", "message"),
    [
        ("trimmed_mean", {"beta": 0.5}, r"beta must be a float in \[0, 0.5\), got 0.5"),
        ("krum", {"f": -1}, "f must be an integer >= 0.*got -1"),
        ("multi_krum", {"m": 0}, "m must be an integer >= 1, got 0"),
        ("centered_clip", {"tau": -2.0}, "tau must be a finite number > 0, got -2.0"),
        ("centered_clip", {"num_iters": 0}, "num_iters must be an integer >= 1, got 0"),
        ("centered_clip", {"tol": float("nan")}, "tol must be a finite number >= 0, got nan"),
    ],
)
def test_impossible_parameter_names_parameter_value_and_range(
    rule: str, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build_aggregator(rule, **kwargs)


def test_parameters_of_other_rules_are_not_checked() -> None:
    aggregator = build_aggregator("mean", beta=0.9, f=-3)
    torch.testing.assert_close(aggregator(torch.tensor([[1.0], [3.0]])), torch.tensor([2.0]))


def test_krum_n_dependent_check_happens_at_call_time() -> None:
    aggregator = build_aggregator("krum", f=2)
    with pytest.raises(ValueError, match=r"n > 2f \+ 2"):
        aggregator(torch.ones(6, 2))
