"""Link units are parsed once, when the config is loaded: numbers (bits/s, seconds) from then on, strings
accepted in TOML, --set and the constructor, a round trip through config_to_toml, and bad values named."""

from __future__ import annotations

from pathlib import Path

import pytest

from farsync.config import (
    ConfigError,
    NetworkConfig,
    config_to_toml,
    format_bandwidth,
    format_duration,
    load_config,
)
from farsync.train.build import link_for_group


def test_strings_and_numbers_are_numbers_after_loading(tmp_path: Path) -> None:
    # Prepare: a TOML file with unit strings, overridden in part by numbers on the command line.
    path = tmp_path / "run.toml"
    path.write_text(
        'num_workers = 3\n[network]\nbandwidth = "100Mbps"\nlatency = "20ms"\n'
        'worker_bandwidth = {"2" = "10Mbit"}\nworker_latency = {"1" = 0.08}\n'
    )
    # Execute
    config = load_config(path, ["network.intra_bandwidth=5e9"])
    network = config.network
    # Assert
    assert (network.bandwidth, network.latency, network.intra_bandwidth) == (1e8, 0.02, 5e9)
    assert network.worker_bandwidth == {"2": 1e7} and network.worker_latency == {"1": 0.08}
    assert all(isinstance(v, float) for v in (network.bandwidth, network.latency, network.intra_bandwidth))


def test_the_constructor_parses_strings_too() -> None:
    # Prepare / Execute
    network = NetworkConfig(bandwidth="1Gbit", latency="10ms", worker_latency={"1": "80ms"})
    # Assert
    assert (network.bandwidth, network.latency, network.worker_latency) == (1e9, 0.01, {"1": 0.08})


def test_config_to_toml_round_trips_the_numbers(tmp_path: Path) -> None:
    # Prepare
    config = load_config(
        None,
        [
            "num_workers=2",
            "network.bandwidth=2.5Mbit",
            "network.latency=150us",
            'network.worker_bandwidth={"1" = "1Kbit"}',
        ],
    )
    path = tmp_path / "config.toml"
    # Execute
    path.write_text(config_to_toml(config))
    again = load_config(path)
    # Assert
    assert again == config
    assert again.network.latency == pytest.approx(150e-6)


def test_a_groups_link_uses_the_loaded_numbers() -> None:
    # Prepare
    config = load_config(
        None,
        [
            "num_workers=3",
            "network.bandwidth=1Gbit",
            'network.worker_bandwidth={"2" = "10Mbit"}',
            "network.latency=0.03",
        ],
    )
    # Execute
    link = link_for_group(config.network, [0, 1, 2])
    # Assert
    assert link is not None and (link.bandwidth_bps, link.latency_s) == (1e7, 0.03)


@pytest.mark.parametrize(
    ("override", "key", "allowed"),
    [
        ("network.bandwidth=fast", "network.bandwidth", "expected a rate"),
        ("network.bandwidth=0", "network.bandwidth", "must be > 0"),
        ("network.bandwidth=-3Mbit", "network.bandwidth", "expected a rate"),
        ("network.bandwidth=true", "network.bandwidth", "expected a rate in bits/s"),
        ("network.latency=-0.5", "network.latency", "expected a duration"),
        ("network.latency=5parsecs", "network.latency", "expected a duration"),
        ("network.intra_bandwidth=nan", "network.intra_bandwidth", "expected a rate"),
        ('network.worker_bandwidth={"1" = "x"}', "network.worker_bandwidth.1", "expected a rate"),
        ('network.worker_latency={"1" = -1}', "network.worker_latency.1", "expected a duration"),
        ("network.worker_latency=3", "network.worker_latency", "expected a table"),
        ('network.worker_bandwidth={"7" = "1Mbit"}', "network.worker_bandwidth.7", "worker rank must be"),
    ],
)
def test_bad_values_raise_config_error_naming_the_key(override: str, key: str, allowed: str) -> None:
    # Prepare / Execute
    with pytest.raises(ConfigError) as error:
        load_config(None, ["num_workers=2", override])
    # Assert
    assert error.value.key == key
    assert allowed in error.value.allowed


@pytest.mark.parametrize(
    ("bits_per_s", "text"), [(2e7, "20Mbit"), (1e9, "1Gbit"), (1.5e3, "1.5Kbit"), (800.0, "800bit")]
)
def test_format_bandwidth_reads_back(bits_per_s: float, text: str) -> None:
    # Prepare / Execute / Assert
    assert format_bandwidth(bits_per_s) == text
    assert NetworkConfig(bandwidth=text).bandwidth == pytest.approx(bits_per_s)


@pytest.mark.parametrize(("seconds", "text"), [(0.02, "20ms"), (2.0, "2s"), (0.0, "0s"), (5e-5, "50us")])
def test_format_duration_reads_back(seconds: float, text: str) -> None:
    # Prepare / Execute / Assert
    assert format_duration(seconds) == text
    assert NetworkConfig(latency=text).latency == pytest.approx(seconds)
