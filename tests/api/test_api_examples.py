"""The examples next to ``wrap_your_loop.py``: they use only farsync's public names and run alone and under
``torchrun --standalone --nproc-per-node 2`` (real processes: the point is that a user's script works as is).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import farsync

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
EXAMPLES = ["wrap_your_loop.py", "wrap_dilocox.py", "wrap_streaming.py", "wrap_robust.py"]
ALLOWED_MODULES = ("torch", "farsync")


def _farsync_names_used(tree: ast.AST) -> set[str]:
    """Names taken from ``farsync``: ``farsync.X`` attributes and ``from farsync import X``."""
    used: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "farsync"
        ):
            used.add(node.attr)
        if isinstance(node, ast.ImportFrom) and node.module == "farsync":
            used.update(alias.name for alias in node.names)
    return used


def _modules_imported(tree: ast.AST) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            modules.add("." * node.level + (node.module or ""))
    return modules


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_imports_only_farsync_public_names(example: str) -> None:
    # Prepare
    tree = ast.parse((EXAMPLES_DIR / example).read_text())
    # Execute
    modules = _modules_imported(tree)
    used = _farsync_names_used(tree)
    # Assert: farsync itself (no submodule), torch, and names that farsync.__all__ lists
    farsync_modules = {m for m in modules if m.split(".")[0] == "farsync"}
    assert farsync_modules == {"farsync"}, f"{example} imports farsync internals: {sorted(farsync_modules)}"
    assert all(m.split(".")[0] in ALLOWED_MODULES for m in modules), sorted(modules)
    assert used, f"{example} uses no farsync name"
    assert used <= set(farsync.__all__), (
        f"{example} uses non-public names: {sorted(used - set(farsync.__all__))}"
    )


def _env() -> dict[str, str]:
    src = str(Path(farsync.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    env.update(OMP_NUM_THREADS="1", FARSYNC_THREADS="1")
    return env


def _torchrun() -> list[str]:
    script = Path(sys.executable).with_name("torchrun")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "torch.distributed.run"]


# What the last line printed by rank 0 must say, alone and with two workers.
FINAL_LINE = {
    "wrap_your_loop.py": ("outer rounds 10", "outer rounds 10"),
    "wrap_dilocox.py": ("outer rounds 10", "outer rounds 10"),
    "wrap_streaming.py": ("fragment syncs 24", "fragment syncs 24"),
    # Under torchrun the last worker is faulty; its oversized updates get it excluded.
    "wrap_robust.py": ("excluded workers []", "excluded workers [1]"),
}


def _last_line(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@pytest.mark.timeout(300)
@pytest.mark.parametrize("example", EXAMPLES)
def test_example_runs_alone(example: str) -> None:
    # Execute
    done = subprocess.run(
        [sys.executable, str(EXAMPLES_DIR / example)], capture_output=True, text=True, timeout=280, env=_env()
    )
    # Assert
    assert done.returncode == 0, done.stderr[-3000:]
    assert FINAL_LINE[example][0] in _last_line(done.stdout), done.stdout[-2000:]


@pytest.mark.timeout(400)
@pytest.mark.parametrize("example", EXAMPLES)
def test_example_runs_under_torchrun_with_two_processes(example: str) -> None:
    # Execute
    command = [*_torchrun(), "--standalone", "--nproc-per-node", "2", str(EXAMPLES_DIR / example)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=380, env=_env())
    # Assert
    assert done.returncode == 0, done.stderr[-3000:]
    line = _last_line(done.stdout)
    assert FINAL_LINE[example][1] in line, done.stdout[-2000:]
    assert "bytes sent 0.0 kB" not in line  # two workers really talked
