"""Shared fixtures for the Hugging Face integration tests: a tiny Llama run on a slice of the embedded corpus.

Every test points ``FARSYNC_CACHE_DIR`` at its own temporary directory, so trained tokenizers and token
caches never leak between tests or into the user's cache.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from farsync.config import RunConfig, load_config

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


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tokenizers and token caches go to this test's own directory."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FARSYNC_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="session")
def tiny_hf() -> Callable[..., RunConfig]:
    """``tiny_hf("num_workers=2", ...)``: the tiny Llama run with extra ``--set`` overrides."""

    def make(*overrides: str) -> RunConfig:
        return load_config(None, [*TINY_HF, *overrides])

    return make
