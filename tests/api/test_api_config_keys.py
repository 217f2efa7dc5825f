"""One meaning per key: ``algorithm.num_inner_steps`` is H only; report cadences and the federated fallback
have keys of their own, and setting one where it means nothing is a config error naming it.
"""

from __future__ import annotations

import pytest

from farsync import ConfigError, RunConfig, load_config


def test_defaults_keep_the_cadences_of_before() -> None:
    config = RunConfig()
    assert config.train.report_every == config.algorithm.num_inner_steps == 50
    assert config.federated.local_steps == 50


@pytest.mark.parametrize(
    ("overrides", "key", "says"),
    [
        (["algorithm.name=diloco", "train.report_every=10"], "train.report_every", "once per outer round"),
        (["algorithm.name=dilocox", "train.report_every=10"], "train.report_every", "only ddp and gossip"),
        (["algorithm.name=ddp", "train.report_every=0"], "train.report_every", ">= 1"),
        (["federated.local_steps=10"], "federated.local_steps", "only with federated.local_epochs = 0"),
        (["federated.local_epochs=0", "federated.local_steps=0"], "federated.local_steps", ">= 1"),
    ],
)
def test_a_key_where_it_means_nothing_is_a_config_error(overrides: list[str], key: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, overrides)
    assert caught.value.key == key
    assert says in str(caught.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["algorithm.name=ddp", "train.report_every=10"],
        ["algorithm.name=gossip", "train.report_every=10"],
        ["federated.local_epochs=0", "federated.local_steps=10"],
    ],
)
def test_each_key_is_accepted_where_it_means_something(overrides: list[str]) -> None:
    load_config(None, overrides)
