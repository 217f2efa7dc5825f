"""Named benchmarks (``farsync bench NAME``). Benchmarks use the core; the core never imports them.

Each benchmark is a module here with ``run(out_dir: Path, quick: bool) -> dict``: it writes
``<name>.json`` and ``<name>.md`` under ``out_dir`` and returns the JSON content.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

__all__ = ["BENCHMARKS", "run_benchmark"]

BENCHMARKS = (
    "core",
    "dilocox",
    "quality",
    "frontier",
    "byzantine",
    "federated",
    "chaos",
    "hf",
    "rl",
    "rl_swarm",
)


def run_benchmark(name: str, out_dir: Path, quick: bool = False) -> dict[str, Any]:
    if name not in BENCHMARKS:
        from farsync.config import ConfigError

        raise ConfigError("bench NAME", name, "allowed: " + ", ".join(BENCHMARKS))
    module = importlib.import_module(f"farsync.bench.{name}")
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = module.run(out_dir, quick)
    return result
