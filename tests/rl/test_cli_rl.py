"""``farsync rl``: a one-line config error with exit 2, and a tiny run that writes its directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from farsync.cli import main

TINY = [
    "--set", "model.num_layers=1", "--set", "model.width=32", "--set", "model.num_heads=2",
    "--set", "model.context_length=16", "--set", "rl.num_sft_steps=10", "--set", "rl.num_steps=2",
    "--set", "rl.num_groups_per_step=2", "--set", "rl.group_size=2", "--set", "rl.num_heldout=8",
    "--set", "rl.worker_backend=thread", "--set", "rl.mode=sync",
]  # fmt: skip


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rl.task=chess", "config error: rl.task = 'chess': allowed: 'arithmetic', 'reversal', 'sorting'"),
        ("rl.group_size=1", "config error: rl.group_size = 1: must be >= 2"),
        ("rl.mode=sometimes", "config error: rl.mode = 'sometimes'"),
    ],
)
def test_bad_setting_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, message: str
) -> None:
    assert main(["rl", "--set", override, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_tiny_run_prints_its_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["rl", *TINY, "--out", str(out), "--no-progress"]) == 0
    assert "rl sync on arithmetic: held-out pass@1" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["num_steps"] == 2
    assert main(["rl", *TINY, "--out", str(out)]) == 2  # not empty: refused without --overwrite or --resume
