"""The ``[swarm]`` config: TOML into the typed SwarmSettings (nested loss and limits, free-form shapes), the
checks that run before anything is written, and the resolved config written back."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from farsync.config import ConfigError, build_section, read_config_data
from farsync.rl.grpo import LossConfig
from farsync.rl.swarm import SwarmSettings
from farsync.rl.swarm_messages import SwarmLimits
from farsync.rl.swarm_run import SwarmRunConfig, WarmStartSettings, config_toml, load_swarm_config

SHAPE = {"num_layers": 1, "width": 16, "num_heads": 2, "context_length": 16}

TOML = """
[swarm]
num_nodes = 3
num_rounds = 7
num_shared_groups = 0
lr = 1                      # an integer where a float is expected
malicious_fraction = 0.34
attack = "malformed"
attack_params = { kind = "nan" }
defences = ["reward_check", "judge"]
model_shape = { num_layers = 1, width = 16, num_heads = 2, context_length = 16 }
node_shapes = [{}, { width = 32 }, {}]
join_rounds = [0, 2, 0]

[swarm.loss]
loss = "dr_grpo"
clip_high = 0.3

[swarm.limits]
max_message_bytes = 4096

[warm_start]
num_steps = 40
stop_at_pass = 0.5
"""


def _load(text: str, overrides: list[str] | None = None, tmp_path: Path | None = None) -> SwarmRunConfig:
    assert tmp_path is not None
    path = tmp_path / "swarm.toml"
    path.write_text(text)
    return load_swarm_config(read_config_data(path, overrides))


def test_file_loads_into_swarm_settings(tmp_path: Path) -> None:
    config = _load(TOML, ["swarm.num_rounds=9", "swarm.loss.kl_coef=0.5"], tmp_path)
    assert config.swarm == SwarmSettings(
        num_nodes=3,
        num_rounds=9,
        num_shared_groups=0,
        lr=1.0,
        malicious_fraction=0.34,
        attack="malformed",
        attack_params={"kind": "nan"},
        defences=["reward_check", "judge"],
        model_shape=SHAPE,
        node_shapes=[{}, {"width": 32}, {}],
        join_rounds=[0, 2, 0],
        loss=LossConfig(loss="dr_grpo", clip_high=0.3, kl_coef=0.5),
        limits=SwarmLimits(max_message_bytes=4096),
    )
    assert isinstance(config.swarm.lr, float)
    assert config.warm_start == WarmStartSettings(num_steps=40, stop_at_pass=0.5)


def test_resolved_config_reads_back_equal(tmp_path: Path) -> None:
    config = _load(TOML, None, tmp_path)
    text = config_toml(config)
    assert tomllib.loads(text)["swarm"]["limits"]["max_message_bytes"] == 4096
    assert _load(text, None, tmp_path) == config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "swarm.num_nodez=3",
            "config error: swarm.num_nodez = 3: unknown key; allowed: attack, attack_params,",
        ),
        ("swarm.num_nodes=0", "config error: swarm.num_nodes = 0: must be >= 1"),
        ("swarm.num_nodes=2.5", "config error: swarm.num_nodes = 2.5: expected an integer"),
        ("swarm.transport=ftp", "config error: swarm.transport = 'ftp': allowed: 'memory', 'directory'"),
        (
            "swarm.loss.loss=ppo",
            "config error: swarm.loss.loss = 'ppo': allowed: 'grpo', 'dr_grpo', 'two_sided'",
        ),
        (
            "swarm.limits.max_bytes=3",
            "config error: swarm.limits.max_bytes = 3: unknown key; allowed: max_com",
        ),
        ("swarm.group_size=1", "config error: swarm.group_size = 1: must be in [2, limits.max_group_size]"),
        ("swarm.join_rounds=[0]", "config error: swarm.join_rounds = [0]: needs one round per node or none"),
        ("swarm.task=chess", "config error: swarm.task = 'chess': allowed: arithmetic, reversal, sorting"),
        ("swarm.defences=['wall']", "config error: swarm.defences = ['wall']: allowed items: reward_check, "),
        ("swarm.judge='no_such_mod:f'", "config error: swarm.judge = 'no_such_mod:f': cannot import module"),
        (
            "swarm.attack=nope",
            "config error: swarm.attack = 'nope': unknown attack 'nope'; allowed: in_context",
        ),
        (
            "swarm.attack_params={size=1}",
            "config error: swarm.attack = 'malformed': attack 'malformed' does not",
        ),
        (
            "swarm.model_shape={width=8}",
            "config error: swarm.model_shape = {'width': 8}: build_policy() missing",
        ),
        (
            "swarm.node_shapes=[{},{depth=2},{}]",
            "config error: swarm.node_shapes[1] = {'num_layers': 1, 'wid",
        ),
        (
            "warm_start.num_steps=-1",
            "config error: warm_start.num_steps = -1: must be >= 0 (0: no warm-start)",
        ),
        ("warm_start.stop_at_pass=2", "config error: warm_start.stop_at_pass = 2.0: must be in [0, 1]"),
        ("rl.num_steps=3", "config error: rl = {'num_steps': 3}: a config with a [swarm] table runs a swarm"),
    ],
)
def test_bad_key_or_value_is_one_line_naming_it(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(TOML, [override], tmp_path)
    text = str(caught.value)
    assert text.startswith(message), text
    assert "\n" not in text


def test_build_section_turns_a_validate_value_error_into_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        build_section(SwarmSettings, {"num_rounds": 0})
    assert caught.value.key == "swarm.num_rounds"
    assert str(caught.value) == "config error: swarm.num_rounds = 0: must be >= 1"
    with pytest.raises(ConfigError, match=r"config error: CONFIG = 3: expected a table"):
        build_section(SwarmSettings, 3)  # type: ignore[arg-type]
