"""Smoke tests of the benchmarks' measuring helpers: the framework-overhead loop and all-reduce timing."""

from __future__ import annotations

import pytest
from bench_helpers import finite

from farsync.bench.allreduce_timing import compare_allreduce
from farsync.bench.overhead import measure_overhead
from farsync.config import ModelConfig


def test_measure_overhead_times_both_loops_over_whole_rounds() -> None:
    model = ModelConfig(num_layers=1, width=16, num_heads=2, context_length=8)
    result = measure_overhead(model, batch_size=2, num_inner_steps=3, num_blocks=2)
    assert finite(result["plain_step_s"], result["diloco_step_s"], result["overhead"])
    assert result["plain_step_s"] > 0 and result["diloco_step_s"] > 0
    assert result["overhead"] == pytest.approx(result["diloco_step_s"] / result["plain_step_s"] - 1)
    # Block 0 warms both loops up, then num_blocks timed blocks of one DiLoCo round each.
    assert (result["num_blocks"], result["num_inner_steps"], result["outer_rounds_done"]) == (2, 3, 3)


def test_compare_allreduce_on_a_slow_virtual_link_takes_at_least_the_link_time() -> None:
    numel, rate = 4096, 8e6  # 1 MB/s: fp32 at 2 ranks sends 16 KiB, about 16 ms on the link
    result = compare_allreduce(
        world_size=2, numel=numel, bandwidth_bps=rate, kinds=("fp32", "ring_fp32", "int4"), repeats=1
    )
    assert result["setup"]["world_size"] == 2 and result["setup"]["clock"] == "virtual"
    for kind, timing in result["kinds"].items():
        assert finite(*timing.values()), kind
        assert timing["link_seconds"] == pytest.approx(timing["bytes_sent"] / (rate / 8))  # no latency
        assert timing["seconds"] >= 0.999 * timing["link_seconds"] > 0, kind  # the link's time is charged
    assert result["kinds"]["fp32"]["bytes_sent"] == result["kinds"]["ring_fp32"]["bytes_sent"] == 4 * numel
    assert result["kinds"]["int4"]["bytes_sent"] < result["kinds"]["fp32"]["bytes_sent"] / 6
    assert result["speedup"]["fp32"] == 1.0 and result["link_speedup"]["int4"] > 6


def test_compare_allreduce_reports_rates_and_compressed_bytes() -> None:
    result = compare_allreduce(world_size=2, numel=8192, bandwidth_bps=1e9, kinds=("fp32", "int8"), repeats=1)
    fp32, int8 = result["kinds"]["fp32"], result["kinds"]["int8"]
    assert fp32["bytes_sent"] == 4 * 8192  # 2 (n-1)/n of 32 KiB at n = 2
    assert int8["bytes_sent"] == 8192 + 4 * 8192 // 64
    assert int8["fp32_equivalent_bytes_per_s"] > 0 and set(result["speedup"]) == {"fp32", "int8"}
    # The link alone: 4 bytes per value against 1 + 4/64 (codes plus one fp32 scale per 64-value block).
    assert result["link_speedup"]["int8"] == pytest.approx(4 / (1 + 4 / 64))


def test_config_digest_names_only_changed_settings() -> None:
    from farsync.bench.common import config_digest
    from farsync.config import RunConfig, load_config

    assert config_digest(load_config(None, [])) == config_digest(RunConfig())
    a = load_config(None, ["train.lr=0.004", "num_workers=2"])
    b = load_config(None, ["num_workers=2", "train.lr=0.004"])
    assert config_digest(a) == config_digest(b)
    assert config_digest(a) != config_digest(load_config(None, ["train.lr=0.004", "num_workers=3"]))
    assert config_digest(a) != config_digest(load_config(None, ["num_workers=2"]))
