"""Fixtures shared across the test folders: a tiny GPT run and a tiny Llama run, and a private token cache.

They live here, at the top of ``tests/``, because the tests that use them now sit in several package
folders (``train/``, ``launch/``, ``parallel/``, ...). Helper modules are not here: they are plain modules in
``tests/helpers/``, put on ``sys.path`` by pytest's ``pythonpath`` option in ``pyproject.toml``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tiny_runs import TINY_GPT

from farsync.config import RunConfig, load_config

TINY = [*TINY_GPT, "network.emulation=virtual"]
"""A one-block, 32-wide GPT on 200 kB of the embedded corpus: a step takes milliseconds."""

TINY_HF = [
    "model.kind=hf",
    "model.architecture=llama",
    "model.num_layers=2",
    "model.width=32",
    "model.num_heads=2",
    "model.context_length=16",
    "train.batch_size=4",
    "train.num_eval_batches=2",
    "train.warmup_steps=2",
    "train.num_steps=8",
    "train.eval_every=4",
    "algorithm.num_inner_steps=4",
    "data.max_bytes=200000",
    "network.emulation=off",
    "num_workers=2",
]
"""A two-block, 32-wide Llama (byte vocabulary) on 200 kB of the stdlib corpus: 8 steps take seconds."""


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


@pytest.fixture(scope="session")
def tiny_hf() -> Callable[..., RunConfig]:
    """``tiny_hf("num_workers=2", ...)``: the tiny Llama run with extra ``--set`` overrides."""

    def make(*overrides: str) -> RunConfig:
        return load_config(None, [*TINY_HF, *overrides])

    return make


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tokenizers and token caches go to this test's own directory (``FARSYNC_CACHE_DIR``).

    Not autouse: the modules that train tokenizers or cache tokens (the Hugging Face, tokenizer, dataset,
    export and logger tests) ask for it with ``pytestmark = pytest.mark.usefixtures("private_cache")``, so
    nothing leaks between tests or into the user's cache.
    """
    cache = tmp_path / "cache"
    monkeypatch.setenv("FARSYNC_CACHE_DIR", str(cache))
    return cache
