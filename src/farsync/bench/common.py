"""Helpers shared by benchmarks: run a config (cached by its content), and write JSON + markdown tables.

``FARSYNC_BENCH_SMOKE=1`` (:func:`smoke`) shrinks every benchmark's ``--quick`` version further, to the
smallest sizes that still go through each of its rows, with runs as threads: the tests use it to check that
a benchmark runs end to end and writes its tables. Its numbers mean nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Literal

from farsync.config import RunConfig, load_config
from farsync.launch.local import launch

__all__ = [
    "SMOKE_ENV",
    "config_digest",
    "markdown_table",
    "run_cached",
    "smoke",
    "versus_ddp",
    "write_results",
]

logger = logging.getLogger(__name__)

SMOKE_ENV = "FARSYNC_BENCH_SMOKE"


def smoke() -> bool:
    """True when ``FARSYNC_BENCH_SMOKE=1``: benchmarks run at smoke-test size (module docstring)."""
    return os.environ.get(SMOKE_ENV, "") == "1"


def config_digest(config: RunConfig) -> str:
    """What identifies a run for the cache: the settings that differ from the defaults.

    A field added to the config later (with a default that keeps old behaviour) leaves every digest as it
    was, so a cached run is not redone because the code grew an option; changing a setting, or a default a
    run relies on, changes it.
    """
    default = RunConfig()
    changed = []
    for section in dataclasses.fields(config):
        value, base = getattr(config, section.name), getattr(default, section.name)
        if dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                if getattr(value, f.name) != getattr(base, f.name):
                    changed.append(f"{section.name}.{f.name}={getattr(value, f.name)!r}")
        elif value != base:
            changed.append(f"{section.name}={value!r}")
    return hashlib.sha256("\n".join(sorted(changed)).encode()).hexdigest()[:16]


def run_cached(
    name: str,
    overrides: list[str],
    runs_dir: Path,
    *,
    mode: Literal["processes", "threads"] = "processes",
    progress: bool = False,
) -> dict[str, Any]:
    """Runs the config given by ``overrides`` (unless a finished run with the identical resolved config is
    already under ``runs_dir/name``) and returns its summary with the run's name and config hash."""
    config = load_config(None, overrides)
    if smoke():
        mode = "threads"  # spawning interpreters would cost a smoke test more than the runs themselves
    digest = config_digest(config)
    out = runs_dir / name
    summary_path, digest_path = out / "summary.json", out / "config.sha"
    if summary_path.is_file() and digest_path.is_file() and digest_path.read_text() == digest:
        summary: dict[str, Any] = json.loads(summary_path.read_text())
        logger.info("bench: reusing %s (%s)", name, digest)
    else:
        begin = time.perf_counter()
        print(f"[bench] running {name} ...", flush=True)
        summary = launch(config, out, progress=progress, mode=mode)
        digest_path.write_text(digest)
        print(
            f"[bench] {name}: eval loss {summary['final_eval_loss']:.4f} "
            f"({time.perf_counter() - begin:.0f}s real)",
            flush=True,
        )
    return {"name": name, "config_sha": digest, "overrides": overrides, **summary}


def versus_ddp(row: dict[str, Any], ddp: dict[str, Any], *, wall_key: str = "wall_s") -> dict[str, float]:
    """A run's figures against the DDP run's, as the tables print them:

    - ``loss_vs_ddp``: ``loss / ddp_loss - 1`` (final eval loss; +0.03 = 3% worse than DDP, negative = better);
    - ``bytes_vs_ddp``: ``ddp_bytes / bytes`` (times fewer bytes sent per worker; a run that sends nothing
      counts as 1 byte);
    - ``speedup_vs_ddp``: ``ddp_wall / wall`` (``wall_key`` names the wall-clock figure).
    """
    return {
        "loss_vs_ddp": row["final_eval_loss"] / ddp["final_eval_loss"] - 1.0,
        "bytes_vs_ddp": ddp["bytes_sent_per_worker"] / max(row["bytes_sent_per_worker"], 1),
        "speedup_vs_ddp": ddp[wall_key] / row[wall_key],
    }


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """``columns`` = (title, key, format spec); missing values print as '-'."""
    lines = ["| " + " | ".join(title for title, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for _, key, spec in columns:
            value = row.get(key)
            cells.append("-" if value is None else format(value, spec) if spec else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(out_dir: Path, name: str, data: dict[str, Any], markdown: str) -> None:
    (out_dir / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (out_dir / f"{name}.md").write_text(markdown + "\n")
