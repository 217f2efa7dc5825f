"""Named benchmarks (``farsync bench NAME``). Benchmarks use the core; the core never imports them.

Each benchmark is a module here with ``run(out_dir: Path, quick: bool) -> dict``: it writes
``<name>.json`` and ``<name>.md`` under ``out_dir`` and returns the JSON content.

A benchmark with sections (:data:`SECTIONS`) runs each section's module in turn (``farsync bench rl``: part
1's GRPO legs, then the swarm and attack legs of :mod:`farsync.bench.rl_swarm`), or only those named with
``--section``; each section keeps its own files (``rl.md``, ``rl_swarm.md``), and a section's module stays
a benchmark of its own name (``farsync bench rl_swarm``).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["BENCHMARKS", "SECTIONS", "run_benchmark"]

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

SECTIONS: dict[str, dict[str, str]] = {"rl": {"grpo": "rl", "swarm": "rl_swarm"}}
"""Benchmarks made of sections: section name -> the module that runs it, in running order."""


def run_benchmark(
    name: str, out_dir: Path, quick: bool = False, sections: Sequence[str] | None = None
) -> dict[str, Any]:
    """Runs benchmark ``name``; returns its JSON content, or for a benchmark with sections
    ``{section: JSON content}`` of the sections run (``sections``: those named, in :data:`SECTIONS` order;
    ``None``: all)."""
    from farsync.config import ConfigError

    if name not in BENCHMARKS:
        raise ConfigError("bench NAME", name, "allowed: " + ", ".join(BENCHMARKS))
    parts = SECTIONS.get(name)
    if sections and parts is None:
        with_sections = "; ".join(f"bench {b}: {', '.join(s)}" for b, s in SECTIONS.items())
        raise ConfigError("--section", list(sections), f"bench {name} has no sections ({with_sections})")
    if parts is not None:
        for section in sections or ():
            if section not in parts:
                raise ConfigError("--section", section, f"bench {name} has: " + ", ".join(parts))
    out_dir.mkdir(parents=True, exist_ok=True)
    if parts is None:
        module = importlib.import_module(f"farsync.bench.{name}")
        result: dict[str, Any] = module.run(out_dir, quick)
        return result
    chosen = [s for s in parts if not sections or s in sections]
    return {s: importlib.import_module(f"farsync.bench.{parts[s]}").run(out_dir, quick) for s in chosen}
