"""summary.json reports the global model's eval loss beside the workers' own, and warns when the global model
is the worse one (a broken outer step or compression, invisible in the workers' training losses)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from farsync.report.summary import local_eval_summary


def _results(local: list[float | None]) -> list[dict[str, Any]]:
    return [
        {"rank": rank, "final_eval": {"eval_loss": 9.0, "local_eval_loss": loss}}
        for rank, loss in enumerate(local)
    ]


def test_a_global_model_worse_than_the_local_ones_is_reported_and_warned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Prepare: the run, global 3.70 against local ~2.35.
    results = _results([2.34, 2.36])
    # Execute
    with caplog.at_level(logging.WARNING, logger="farsync.report.summary"):
        summary = local_eval_summary(3.70, results)
    # Assert
    assert summary["final_local_eval_loss"] == pytest.approx(2.35)
    assert summary["final_local_eval_loss_by_worker"] == [2.34, 2.36]
    assert summary["global_worse_than_local"] is True
    assert sum("worse than the workers' own weights" in r.getMessage() for r in caplog.records) == 1


def test_a_global_model_at_least_as_good_is_not_warned(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="farsync.report.summary"):
        summary = local_eval_summary(2.35, _results([2.35, 2.40]))  # DDP: equal; DiLoCo: usually better
    assert summary["global_worse_than_local"] is False
    assert not caplog.records


def test_runners_without_a_local_evaluation_add_nothing() -> None:
    assert local_eval_summary(2.0, _results([2.1, None])) == {}
