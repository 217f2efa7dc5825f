"""The swarm benchmark end to end at ``FARSYNC_BENCH_SMOKE=1`` size (its numbers mean nothing): every leg
runs, the tables and the targets are written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from farsync.bench import rl_swarm
from farsync.bench.common import SMOKE_ENV


def test_bench_rl_swarm_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SMOKE_ENV, "1")
    result = rl_swarm.run(tmp_path, quick=True)
    assert [row["leg"] for row in result["rows"]] == list(rl_swarm.LEGS)  # smoke size runs every leg
    assert json.loads((tmp_path / "rl_swarm.json").read_text())["targets"] == result["targets"]
    markdown = (tmp_path / "rl_swarm.md").read_text()
    assert "Sharing: 4 local / 4 shared" in markdown and "With the defence" in markdown
    rows = {row["leg"]: row for row in result["rows"]}
    assert rows["local"]["bytes_total"] == 0 < rows["swarm"]["bytes_total"]
    # The sharing legs have their own warm-start when their settings differ from the attack legs'.
    assert [w["legs"] for w in result["warm_starts"]] == ["attack", "sharing"]
    assert rows["local"]["warm_pass"] == rows["swarm"]["warm_pass"] == 0.05 != rows["poisoned"]["warm_pass"]
    assert rows["defended"]["checked"] > 0 and rows["poisoned"]["dropped_total"] == 0
