"""Impossible compression settings are config errors; the timing helper reports bytes and rates."""

import pytest

from farsync.bench.allreduce_timing import compare_allreduce
from farsync.comm.communicator import Communicator
from farsync.config import ConfigError, load_config
from farsync.reducers.compressed import GatherReducer, LowRankReducer, RingReducer
from farsync.train.build import build_reducer


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("compression.rank=0", "compression.rank"),
        ("compression.rank=-3", "compression.rank"),
        ("compression.bits=5", "compression.bits"),
        ("compression.bits=32", "compression.bits"),
        ("compression.energy_fraction=0.0", "compression.energy_fraction"),
        ("compression.energy_fraction=1.5", "compression.energy_fraction"),
    ],
)
def test_load_config_rejects_impossible_compression_settings(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None, ["compression.kind=lowrank", override])
    assert error.value.key == key


def test_adaptive_needs_the_lowrank_kind() -> None:
    config = load_config(None, ["compression.kind=int8", "compression.adaptive=true"])
    with pytest.raises(ConfigError) as error:
        build_reducer(config, Communicator(None, 0, 1))
    assert error.value.key == "compression.adaptive"


@pytest.mark.parametrize(
    ("kind", "cls"),
    [
        ("int8", RingReducer),
        ("bf16", RingReducer),
        ("uint8_lookup", GatherReducer),
        ("topk", GatherReducer),
        ("lowrank", LowRankReducer),
    ],
)
def test_build_reducer_picks_the_compressed_reducer(kind: str, cls: type) -> None:
    reducer = build_reducer(load_config(None, [f"compression.kind={kind}"]), Communicator(None, 0, 1))
    assert isinstance(reducer, cls)


def test_compare_allreduce_reports_rates_and_compressed_bytes() -> None:
    result = compare_allreduce(world_size=2, numel=8192, bandwidth_bps=1e9, kinds=("fp32", "int8"), repeats=1)
    fp32, int8 = result["kinds"]["fp32"], result["kinds"]["int8"]
    assert fp32["bytes_sent"] == 4 * 8192  # 2 (n-1)/n of 32 KiB at n = 2
    assert int8["bytes_sent"] == 8192 + 4 * 8192 // 64
    assert int8["fp32_equivalent_bytes_per_s"] > 0 and set(result["speedup"]) == {"fp32", "int8"}
    # The link alone: 4 bytes per value against 1 + 4/64 (codes plus one fp32 scale per 64-value block).
    assert result["link_speedup"]["int8"] == pytest.approx(4 / (1 + 4 / 64))
