"""Tests for the TensorBoard / W&B metric loggers (farsync.report.loggers)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from farsync.report.loggers import (
    LoggerError,
    MetricsLogger,
    MultiLogger,
    TensorBoardLogger,
    check_logger_names,
    make_loggers,
    record_scalars,
)

pytestmark = pytest.mark.usefixtures("private_cache")
"""Tokenizers and token caches go to each test's own directory (see tests/conftest.py)."""

RECORDS: list[dict[str, Any]] = [
    {"kind": "step", "step": 1, "loss": 5.5, "lr": 0.001, "tokens": 64, "worker": 0},
    {"kind": "step", "step": 1, "loss": 9.0, "worker": 1},
    {"kind": "step", "step": 2, "loss": 4.25, "lr": 0.002, "tokens": 128, "worker": 0},
    {"kind": "eval", "step": 2, "round": 1, "eval_loss": 4.5, "worker": 0, "note": "text", "ok": True},
]


class _Recorder:
    def __init__(self, fail_on_close: bool = False) -> None:
        self.records: list[Mapping[str, Any]] = []
        self.closed = False
        self.fail_on_close = fail_on_close

    def log(self, record: Mapping[str, Any]) -> None:
        self.records.append(record)

    def close(self) -> None:
        self.closed = True
        if self.fail_on_close:
            raise RuntimeError("boom")


def test_record_scalars_names_and_filters() -> None:
    # Execute
    first = record_scalars(RECORDS[0])
    other_worker = record_scalars(RECORDS[1])
    all_workers = record_scalars(RECORDS[1], worker=None)
    evaluation = record_scalars(RECORDS[3])
    nested = record_scalars({"kind": "round", "step": 3, "compress": {"ratio": 8}})
    # Assert
    assert first == {"step/loss": 5.5, "step/lr": 0.001, "step/tokens": 64.0}
    assert other_worker is None and all_workers == {"step/loss/worker1": 9.0}
    assert evaluation == {"eval/round": 1.0, "eval/eval_loss": 4.5}
    assert nested == {"round/compress/ratio": 8.0}


def test_tensorboard_event_file_is_readable(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # Prepare
    board = TensorBoardLogger(tmp_path / "tb")
    # Execute
    for record in RECORDS:
        board.log(record)
    board.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    # Assert
    assert isinstance(board, MetricsLogger)
    assert set(events.Tags()["scalars"]) == {
        "step/loss",
        "step/lr",
        "step/tokens",
        "eval/round",
        "eval/eval_loss",
    }
    loss = events.Scalars("step/loss")
    assert [(point.step, point.value) for point in loss] == [(1, 5.5), (2, 4.25)]
    assert [(point.step, point.value) for point in events.Scalars("eval/eval_loss")] == [(2, 4.5)]


def test_make_loggers_tensorboard_under_run_dir(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    # Execute
    loggers = make_loggers(["tensorboard", "tensorboard"], tmp_path, "run", {"lr": 1.0})
    loggers.log(RECORDS[0])
    loggers.close()
    # Assert
    assert len(loggers.loggers) == 1
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_wandb_offline_run_writes_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-env"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    try:
        import wandb  # noqa: F401
    except Exception as error:  # a broken install raises more than ImportError
        pytest.skip(f"wandb unavailable: {error}")
    # Execute
    loggers = make_loggers(["wandb"], tmp_path / "run", "tiny-run", {"model": {"width": 32}, "lr": 0.1})
    run = loggers.loggers[0].run  # type: ignore[attr-defined]
    for record in RECORDS:
        loggers.log(record)
    summary_loss = run.summary["step/loss"]
    config = dict(run.config)
    loggers.close()
    # Assert
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert summary_loss == 4.25 and config == {"model": {"width": 32}, "lr": 0.1}
    assert run.name == "tiny-run"


def test_multi_logger_forwards_and_closes_everything() -> None:
    # Prepare
    first, failing, last = _Recorder(), _Recorder(fail_on_close=True), _Recorder()
    multi = MultiLogger([first, failing, last])
    # Execute
    multi.log(RECORDS[0])
    with pytest.raises(RuntimeError, match="boom"):
        multi.close()
    # Assert
    assert first.records == failing.records == last.records == [RECORDS[0]]
    assert first.closed and failing.closed and last.closed


def test_unknown_names_and_missing_libraries_name_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(LoggerError, match="unknown logger\\(s\\) 'mlflow'; allowed: tensorboard, wandb"):
        make_loggers(["mlflow"], tmp_path)
    with pytest.raises(LoggerError, match="must be a list"):
        check_logger_names("tensorboard")
    check_logger_names(["tensorboard"] if importlib.util.find_spec("tensorboard") else [])
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    with pytest.raises(LoggerError, match=r"'wandb' needs the wandb package: pip install farsync\[wandb\]"):
        check_logger_names(["wandb"])
    with pytest.raises(LoggerError, match=r"needs the wandb package: pip install farsync\[wandb\]"):
        make_loggers(["wandb"], tmp_path)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(
        LoggerError, match=r"needs the tensorboard package: pip install farsync\[tensorboard\]"
    ):
        TensorBoardLogger(tmp_path / "tb")
    assert make_loggers([], tmp_path).loggers == []
