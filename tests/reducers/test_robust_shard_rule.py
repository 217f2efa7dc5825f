"""The owner's rule: accepted senders only, f = -1 as many as allowed, pre-aggregation, per-round buckets."""

import torch

from farsync.aggregate import krum, nearest_neighbor_mixing
from farsync.config import AggregationConfig
from farsync.reducers.shard_rule import ShardAggregator

STACK = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [100.0, 5.0], [101.0, 5.0]])


def test_mean_is_weighted_and_left_out_senders_do_not_count() -> None:
    # Prepare: sender 3 is left out (weight 0); the others carry sample counts.
    weights = torch.tensor([1.0, 1.0, 2.0, 0.0, 4.0])
    # Execute
    result = ShardAggregator(AggregationConfig(rule="mean"))(STACK, weights)
    # Assert: (0 + 1 + 4 + 404) / 8 and (0 + 0 + 0 + 20) / 8.
    torch.testing.assert_close(result, torch.tensor([409.0 / 8, 20.0 / 8]))


def test_f_minus_one_is_as_many_as_krum_allows() -> None:
    # Five senders allow f = (5 - 3) // 2 = 1.
    result = ShardAggregator(AggregationConfig(rule="krum", f=-1))(STACK, torch.ones(5))
    torch.testing.assert_close(result, krum(STACK, 1))


def test_preaggregation_runs_before_the_rule_with_equal_weights() -> None:
    # NNM with f = -1 over four accepted senders mixes each with its 4 - 1 = 3 nearest; then the mean.
    weights = torch.tensor([1.0, 9.0, 1.0, 1.0, 0.0])
    config = AggregationConfig(rule="mean", preaggregation="nnm")
    result = ShardAggregator(config)(STACK, weights)
    torch.testing.assert_close(result, nearest_neighbor_mixing(STACK[:4], 1).mean(dim=0))


def test_bucketing_draws_the_same_buckets_within_a_round() -> None:
    config = AggregationConfig(rule="median", preaggregation="bucketing", bucket_size=2)
    owner, verifier = ShardAggregator(config), ShardAggregator(config)
    stack = torch.arange(16.0).reshape(8, 2) ** 2
    owner.reseed(4)
    verifier.reseed(4)
    first = owner(stack, torch.ones(8))
    torch.testing.assert_close(verifier(stack, torch.ones(8)), first)
    owner.reseed(4)
    torch.testing.assert_close(owner(stack, torch.ones(8)), first)


def test_no_accepted_sender_gives_zeros() -> None:
    result = ShardAggregator(AggregationConfig(rule="median"))(STACK, torch.zeros(5))
    torch.testing.assert_close(result, torch.zeros(2))


def test_robust_is_the_documented_preset() -> None:
    from farsync.config import ROBUST_PRESET

    stack = torch.randn(9, 6, generator=torch.Generator().manual_seed(2))
    stack[6:] *= 100.0
    preset = ShardAggregator(AggregationConfig(rule="robust"))(stack, torch.ones(9))
    spelled_out = ShardAggregator(AggregationConfig(**ROBUST_PRESET))(stack, torch.ones(9))
    torch.testing.assert_close(preset, spelled_out)
