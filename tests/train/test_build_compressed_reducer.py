"""Compression settings: impossible ones are config errors; ``build_reducer`` picks each kind's reducer."""

import pytest

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
