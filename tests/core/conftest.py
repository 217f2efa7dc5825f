"""Shared fixtures for the core tests: a tiny GPT run configuration."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from farsync.config import RunConfig, load_config

TINY = [
    "model.num_layers=1",
    "model.width=32",
    "model.num_heads=2",
    "model.context_length=16",
    "train.batch_size=2",
    "train.num_eval_batches=2",
    "train.warmup_steps=2",
    "data.max_bytes=200000",
    "network.emulation=virtual",
]
"""A one-block, 32-wide GPT on 200 kB of the embedded corpus: a step takes milliseconds."""


@pytest.fixture(scope="session")
def tiny_overrides() -> list[str]:
    """The ``--set`` overrides of the tiny GPT run (for runs started on a command line)."""
    return list(TINY)


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., RunConfig]:
    """``tiny_config("num_workers=2", ...)``: the tiny GPT run with extra ``--set`` overrides."""

    def make(*overrides: str) -> RunConfig:
        return load_config(None, [*TINY, *overrides])

    return make
