"""``farsync bench rl``'s sections: part 1's GRPO legs, then the swarm and attack legs (``rl_swarm``), or only
those named with ``--section``; the section modules are replaced by fakes that record their calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from farsync.bench import SECTIONS, rl, rl_swarm, run_benchmark
from farsync.cli import main
from farsync.config import ConfigError


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Path, bool]]:
    made: list[tuple[str, Path, bool]] = []
    for name, module in (("rl", rl), ("rl_swarm", rl_swarm)):

        def fake(out_dir: Path, quick: bool, name: str = name) -> dict[str, Any]:
            made.append((name, out_dir, quick))
            return {"bench": name}

        monkeypatch.setattr(module, "run", fake)
    return made


def test_bench_rl_runs_grpo_then_swarm(tmp_path: Path, calls: list[tuple[str, Path, bool]]) -> None:
    assert list(SECTIONS["rl"]) == ["grpo", "swarm"]
    result = run_benchmark("rl", tmp_path, quick=True)
    assert calls == [("rl", tmp_path, True), ("rl_swarm", tmp_path, True)]
    assert result == {"grpo": {"bench": "rl"}, "swarm": {"bench": "rl_swarm"}}


def test_section_picks_one(tmp_path: Path, calls: list[tuple[str, Path, bool]]) -> None:
    assert run_benchmark("rl", tmp_path, sections=["swarm"]) == {"swarm": {"bench": "rl_swarm"}}
    assert calls == [("rl_swarm", tmp_path, False)]
    assert run_benchmark("rl_swarm", tmp_path, quick=True) == {"bench": "rl_swarm"}  # still its own bench


def test_cli_section_and_refusals(
    tmp_path: Path, calls: list[tuple[str, Path, bool]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "rl", "--section", "swarm", "--section", "grpo", "--out", str(tmp_path)]) == 0
    assert [name for name, _, _ in calls] == ["rl", "rl_swarm"]  # SECTIONS order, not the flags' order
    assert main(["bench", "rl", "--section", "attacks", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "farsync: config error: --section = 'attacks': bench rl has: grpo, swarm"
    with pytest.raises(
        ConfigError, match=r"--section = \['swarm'\]: bench core has no sections \(bench rl: "
    ):
        run_benchmark("core", tmp_path, sections=["swarm"])
    assert len(calls) == 2
