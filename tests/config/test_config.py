"""Configuration: --set parsing, TOML round trip, and bad input stopped at the edge (key named, exit 2,
no traceback, nothing written)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from farsync import cli
from farsync.config import (
    ConfigError,
    RunConfig,
    config_to_toml,
    load_config,
    outer_recipe,
    parse_bandwidth,
    parse_duration,
)
from farsync.train.task import build_task

# ------------------------------------------------------------------------------------------- parsing


def test_set_overrides_parse_strings_ints_floats_bools_and_tables() -> None:
    # Execute
    config = load_config(
        None,
        [
            "algorithm.name=ddp",  # a bare word is a string
            'network.latency="50ms"',
            "network.bandwidth=100Mbit",
            "train.num_steps=12",
            "train.lr=1",  # an integer where a float is expected
            "compression.adaptive=true",
            "num_workers=3",
            'network.worker_bandwidth={"2" = "10Mbit"}',
            "byzantine.workers=[1]",
        ],
    )
    # Assert
    assert config.algorithm.name == "ddp"
    assert config.network.latency_s == pytest.approx(0.05)
    assert config.network.bandwidth_bps == pytest.approx(1e8)
    assert config.train.num_steps == 12 and isinstance(config.train.num_steps, int)
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)
    assert config.compression.adaptive is True
    assert config.num_workers == 3
    assert config.network.worker_bandwidth == {"2": 1e7}  # parsed to bits/s at load
    assert config.byzantine.workers == [1]


@pytest.mark.parametrize(
    ("text", "bits_per_s"),
    [("1Gbit", 1e9), ("100Mbit", 1e8), ("500kbit/s", 5e5), ("2.5Gbit", 2.5e9), ("10Mbit/s", 1e7)],
)
def test_parse_bandwidth_units(text: str, bits_per_s: float) -> None:
    # Execute / Assert
    assert parse_bandwidth(text) == pytest.approx(bits_per_s)


@pytest.mark.parametrize(("text", "seconds"), [("50ms", 0.05), ("0s", 0.0), ("200us", 2e-4), ("1.5s", 1.5)])
def test_parse_duration_units(text: str, seconds: float) -> None:
    # Execute / Assert
    assert parse_duration(text) == pytest.approx(seconds)


def test_config_to_toml_round_trips_to_an_equal_config(tmp_path: Path) -> None:
    # Prepare
    config = load_config(
        None,
        [
            "num_workers=3",
            "seed=7",
            "algorithm.name=fedavg",
            "algorithm.outer_lr=0.5",
            "network.latency=20ms",
            'network.worker_bandwidth={"1" = "100Mbit"}',
            "byzantine.workers=[2]",
            'data.path="' + str(tmp_path) + '"',
        ],
    )
    path = tmp_path / "config.toml"
    # Execute
    path.write_text(config_to_toml(config))
    again = load_config(path)
    # Assert
    assert again == config
    assert config_to_toml(again) == config_to_toml(config)


def test_defaults_are_the_documented_default_run() -> None:
    # Execute
    config = load_config()
    # Assert
    assert (config.num_workers, config.algorithm.name, config.network.bandwidth_bps) == (4, "diloco", 1e9)
    # The outer lr and momentum are left to the rule of outer_recipe, which the algorithm resolves for its M.
    assert (config.algorithm.outer_lr, config.algorithm.outer_momentum, config.algorithm.nesterov) == (
        0.0,
        -1.0,
        True,
    )
    resolved = config.algorithm.with_outer_recipe(config.num_workers)
    assert (resolved.outer_lr, resolved.outer_momentum) == outer_recipe(4, config.algorithm.num_inner_steps)


# -------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("override", "key", "allowed"),
    [
        ("train.nmu_steps=3", "train.nmu_steps", "unknown key"),
        ("bogus=1", "bogus", "unknown key"),
        ("train.num_steps=ten", "train.num_steps", "expected an integer"),
        ("train.num_steps=2.5", "train.num_steps", "expected an integer"),
        ("compression.adaptive=3", "compression.adaptive", "expected true or false"),
        ("compression.min_bits=3", "compression.min_bits", "allowed: 2, 4, 8, 16, 32"),
        ("compression.sync_fraction=1", "compression.sync_fraction", "must be in [0, 1)"),
        ("compression.min_rank_fraction=0", "compression.min_rank_fraction", "must be in (0, 1]"),
        ("compression.min_compression_ratio=0.5", "compression.min_compression_ratio", "must be >= 1"),
        ("compression.num_inner_steps_max=-1", "compression.num_inner_steps_max", "must be >= 0"),
        ("algorithm.name=adam", "algorithm.name", "allowed"),
        ("algorithm.num_inner_steps=0", "algorithm.num_inner_steps", "H must be >= 1"),
        ("num_workers=0", "num_workers", "must be >= 1"),
        ("network.bandwidth=0Mbit", "network.bandwidth", "must be > 0"),
        ("network.bandwidth=fast", "network.bandwidth", "expected a rate"),
        ("network.latency=-5ms", "network.latency", "expected a duration"),
        ("data.path=/no/such/farsync/corpus", "data.path", "no such file"),
        ("train=3", "train", "expected a table"),
    ],
)
def test_bad_values_raise_config_error_naming_key_value_and_allowed(
    override: str, key: str, allowed: str
) -> None:
    # Execute
    with pytest.raises(ConfigError) as caught:
        load_config(None, [override])
    # Assert
    error = caught.value
    assert error.key == key
    assert allowed in error.allowed
    assert key in str(error) and repr(error.value) in str(error)


def test_a_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    # Execute / Assert
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.toml")


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "bad.toml"
    path.write_text("[train\nnum_steps = 3\n")
    # Execute / Assert
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_batch_larger_than_a_shard_is_refused_naming_train_batch_size() -> None:
    # Prepare: digits has 1347 training examples; 16 workers get ~84 each
    config = load_config(
        None, ["model.kind=mlp", "data.kind=digits", "num_workers=16", "train.batch_size=200"]
    )
    # Execute
    with pytest.raises(ConfigError) as caught:
        build_task(
            config.model, config.data, batch_size=200, num_eval_batches=1, rank=0, num_workers=16, seed=0
        )
    # Assert
    assert caught.value.key == "train.batch_size"
    assert "smallest worker shard" in caught.value.allowed


def test_cli_refuses_a_batch_larger_than_a_shard_before_writing_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    out = tmp_path / "run"
    argv = [
        "train",
        "--set",
        "model.kind=mlp",
        "--set",
        "data.kind=digits",
        "--set",
        "num_workers=16",
        "--set",
        "train.batch_size=200",
        "--out",
        str(out),
        "--no-progress",
    ]
    # Execute
    code = cli.main(argv)
    # Assert
    assert code == 2
    assert "train.batch_size" in capsys.readouterr().err
    assert not out.exists()


def test_cli_config_error_exits_2_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    # Execute
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "farsync.cli",
            "train",
            "--set",
            "algorithm.num_inner_steps=0",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    # Assert
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "algorithm.num_inner_steps" in lines[0] and "0" in lines[0] and ">= 1" in lines[0]
    assert "Traceback" not in done.stderr
    assert not out.exists()


def test_cli_resume_of_a_directory_without_config_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = cli.main(["train", "--resume", str(tmp_path / "nothing-here")])
    # Assert
    assert code == 2
    assert "--resume" in capsys.readouterr().err


def test_run_config_validate_catches_cross_section_conflicts() -> None:
    # Prepare
    config = RunConfig()
    config.model.kind = "mlp"  # data.kind is still "text"
    # Execute / Assert
    with pytest.raises(ConfigError, match="data.kind"):
        config.validate()


def test_outer_recipe_rule_values() -> None:
    """The rule's recipes, by hand: one worker trains plainly; at H >= 30 momentum 0.7 and lr 0.5 sqrt(M)
    capped at 1; halfway to plain averaging at H = 15."""
    assert outer_recipe(1, 30) == (1.0, 0.0)
    assert outer_recipe(1, 500) == (1.0, 0.0)
    assert outer_recipe(2, 30) == (0.71, 0.7)
    assert outer_recipe(4, 30) == (1.0, 0.7)
    assert outer_recipe(8, 100) == (1.0, 0.7)
    assert outer_recipe(2, 15) == (round(1.0 + (0.5 * 2**0.5 - 1.0) * 0.5, 2), 0.35)
