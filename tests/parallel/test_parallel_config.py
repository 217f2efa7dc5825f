"""Bad pipeline settings are config errors that name the key, the value and what is allowed."""

from __future__ import annotations

import pytest

from farsync.config import ConfigError, load_config

TINY_MODEL = ["model.num_layers=2", "model.width=32", "model.num_heads=2", "train.batch_size=4"]


@pytest.mark.parametrize(
    ("overrides", "key", "value", "allowed"),
    [
        (["num_workers=4", "parallel.num_stages=3"], "num_workers", 4, "multiple of parallel.num_stages (3)"),
        (["num_workers=6", "parallel.num_stages=3"], "parallel.num_stages", 3, "model.num_layers (2)"),
        (["parallel.num_microbatches=3"], "parallel.num_microbatches", 3, "divide train.batch_size (4)"),
        (["parallel.num_stages=0"], "parallel.num_stages", 0, ">= 1"),
        (["parallel.schedule=zigzag"], "parallel.schedule", "zigzag", "'gpipe', '1f1b'"),
        (
            ["model.kind=mlp", "data.kind=digits", "num_workers=2", "parallel.num_stages=2"],
            "parallel.num_stages",
            2,
            "model.kind = 'mlp'",
        ),
    ],
)
def test_bad_pipeline_settings_name_the_key(
    overrides: list[str], key: str, value: object, allowed: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, [*TINY_MODEL, *overrides])

    assert caught.value.key == key
    assert caught.value.value == value
    assert allowed in str(caught.value)


def test_a_valid_grid_loads() -> None:
    config = load_config(
        None, [*TINY_MODEL, "num_workers=4", "parallel.num_stages=2", "parallel.num_microbatches=2"]
    )

    assert (config.parallel.num_stages, config.num_workers // config.parallel.num_stages) == (2, 2)
