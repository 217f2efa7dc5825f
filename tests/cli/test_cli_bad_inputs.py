"""Inputs the launcher can check end before anything starts: one line, exit code 2, nothing written."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from safety_runs_helpers import TINY, run_cli, sets

MLP = ["model.kind=mlp", "model.width=16", "train.num_steps=2", "network.emulation=off", "num_workers=2"]


def _text_file(directory: Path) -> Path:
    path = directory / "notes.npz"
    path.write_text("these are words, not arrays\n" * 20)
    return path


def _npz_without_y(directory: Path) -> Path:
    path = directory / "features.npz"
    np.savez(path, x=np.zeros((20, 4), dtype=np.float32), labels=np.zeros(20, dtype=np.int64))
    return path


def _small_corpus(directory: Path) -> Path:
    path = directory / "small.txt"
    path.write_text("hello world line\n" * 300)  # 5 kB: two 4 kB chunks for four workers
    return path


@pytest.mark.parametrize(
    ("make_overrides", "key", "says"),
    [
        (lambda d: [*MLP, "data.kind=npz", f"data.path={_text_file(d)}"], "data.path", "not an .npz archive"),
        (
            lambda d: [*MLP, "data.kind=npz", f"data.path={_npz_without_y(d)}"],
            "data.path",
            "lacks array(s) ['y']",
        ),
        (
            lambda d: [*TINY, "num_workers=4", f"data.path={_small_corpus(d)}"],
            "data.path",
            "cannot be split across 4 workers",
        ),
        (
            lambda d: [
                *MLP,
                "data.kind=digits",
                "byzantine.workers=[1]",
                'byzantine.attack="nonexistent.module:fn"',
            ],
            "byzantine.attack",
            "cannot import module 'nonexistent.module'",
        ),
        (
            lambda d: [
                *MLP,
                "data.kind=digits",
                "num_workers=5",
                "aggregation.rule=krum",
                "aggregation.f=1",
                "byzantine.workers=[2, 3, 4]",
            ],
            "aggregation.f",
            "needs f >= 3",
        ),
        (
            lambda d: [
                *MLP,
                "data.kind=digits",
                "num_workers=4",
                "aggregation.rule=trimmed_mean",
                "byzantine.workers=[3]",
            ],
            "aggregation.beta",
            "fewer than the 1 Byzantine worker of 4",
        ),
    ],
    ids=[
        "npz-is-text",
        "npz-without-y",
        "corpus-too-small",
        "missing-plugin",
        "krum-f-too-small",
        "trim-too-little",
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_overrides: object, key: str, says: str
) -> None:
    # Prepare
    overrides = make_overrides(tmp_path)  # type: ignore[operator]
    out = tmp_path / "run"
    # Execute
    code, err = run_cli(capsys, "train", "--no-progress", "--out", str(out), *sets(overrides))
    # Assert
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"farsync: config error: {key} = ") and says in err[0], err[0]
    assert not out.exists()


def test_a_coordinator_port_in_use_is_a_config_error(capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: someone else listens on the port
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # Execute
        code, err = run_cli(capsys, "coordinator", "--port", str(port))
    # Assert
    assert code == 2 and len(err) == 1 and f"127.0.0.1:{port} is already in use" in err[0], err
