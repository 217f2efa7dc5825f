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


def test_nnm_composes_with_the_rule() -> None:
    # Prepare: f = 1 mixes each row with its nearest other row: 0 -> 0.5, 1 -> 0.5, 10 -> 5.5.
    stack = torch.tensor([[0.0], [1.0], [10.0]])
    # Execute
    result = build_aggregator("median", f=1, preaggregation="nnm")(stack)
    # Assert: the median of the mixed rows.
    torch.testing.assert_close(result, torch.tensor([0.5]))


def test_bucketing_then_mean_is_the_mean() -> None:
    stack = torch.tensor([[1.0], [2.0], [4.0], [8.0]])
    aggregator = build_aggregator(
        "mean", preaggregation="bucketing", bucket_size=2, generator=torch.Generator().manual_seed(4)
    )
    torch.testing.assert_close(aggregator(stack), torch.tensor([3.75]))


def test_clamp_f_lowers_f_to_what_the_rows_allow() -> None:
    # Prepare: f = 5 is impossible for Krum on 5 rows (n > 2f + 2); clamped, f = 1.
    stack = torch.tensor([[0.0], [1.0], [2.0], [100.0], [101.0]])
    strict = build_aggregator("krum", f=5)
    lenient = build_aggregator("krum", f=5, clamp_f=True)
    # Execute / Assert
    with pytest.raises(ValueError, match=r"n > 2f \+ 2"):
        strict(stack)
    torch.testing.assert_close(lenient(stack), torch.tensor([1.0]))
    # With 2 rows no f fits Krum: the median.
    torch.testing.assert_close(lenient(torch.tensor([[0.0], [4.0]])), torch.tensor([2.0]))


def test_centered_clip_radius_modes_by_hand() -> None:
    from farsync.aggregate import clipping_radius

    # Prepare: three honest values and one attacker far away; f = 1.
    stack = torch.tensor([[0.0], [1.0], [3.0], [1000.0]])
    far = torch.tensor([[0.0], [1.0], [3.0], [1.0e9]])
    # Execute / Assert. fixed: tau itself.
    assert clipping_radius(stack, 2.0, "fixed") == 2.0
    # median: coordinate median 2, distances 2, 1, 1, 998 -> (lower) median 1.
    assert clipping_radius(stack, 2.0, "median") == pytest.approx(2.0)
    # neighbors: distance to the 3rd nearest row (itself first): 3, 2, 3, 999 -> (lower) median 3,
    # and the attacker cannot inflate it by going farther.
    assert clipping_radius(stack, 2.0, "neighbors", f=1) == pytest.approx(6.0)
    assert clipping_radius(far, 2.0, "neighbors", f=1) == pytest.approx(6.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"preaggregation": "mix"}, "preaggregation must be one of none, nnm, bucketing; got 'mix'"),
        ({"rule": "centered_clip", "radius": "huge"}, "radius must be one of fixed, median, neighbors"),
        ({"preaggregation": "bucketing", "bucket_size": 0}, "bucket_size must be an integer >= 1, got 0"),
        ({"preaggregation": "nnm", "f": -1}, "f must be an integer >= 0"),
    ],
)
def test_bad_composition_names_parameter(kwargs: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"rule": "median", **kwargs}
    with pytest.raises(ValueError, match=message):
        build_aggregator(**arguments)
