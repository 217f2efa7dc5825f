"""Shared checks of the benchmark smoke tests: every benchmark at ``FARSYNC_BENCH_SMOKE=1`` size."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from farsync.bench.common import SMOKE_ENV


def smoke_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrinks the benchmarks to smoke-test size for this test (see :mod:`farsync.bench.common`)."""
    monkeypatch.setenv(SMOKE_ENV, "1")


def written(out_dir: Path, name: str) -> tuple[dict[str, Any], str]:
    """The ``<name>.json`` and ``<name>.md`` a benchmark wrote, both non-empty."""
    data = json.loads((out_dir / f"{name}.json").read_text())
    markdown = (out_dir / f"{name}.md").read_text()
    assert data and markdown.startswith("#")
    return data, markdown


def finite(*values: Any) -> bool:
    """True if every value is a real, finite number."""
    return all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values)
