"""The threaded synchronous run of ``farsync bench byzantine``: the learning-rate schedule of its SGD."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from farsync.bench.byzantine import DATASET
from farsync.bench.byzantine_sync import run_sync
from farsync.config import load_config


def test_threaded_run_follows_the_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: 2 workers, 4 steps, warm-up 1, cosine to 0 at step 4; record every SGD step's rate.
    config = load_config(None, [
        "num_workers=2", "model.kind=mlp", "model.width=8", "data.kind=npz", f"data.path={DATASET}",
        "train.batch_size=8", "train.num_steps=4", "train.warmup_steps=1", "train.min_lr_ratio=0.0",
        "algorithm.name=ddp", "network.emulation=off",
    ])  # fmt: skip
    rates: list[float] = []
    step = torch.optim.SGD.step

    def recording(self: torch.optim.SGD, *args: Any, **kwargs: Any) -> Any:
        rates.append(float(self.param_groups[0]["lr"]))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording)
    # Execute
    run_sync(config, "cosine")
    cosine = sorted(rates)
    rates.clear()
    run_sync(config)
    # Assert: each worker steps at 0.1 x (1, 1, 0.75, 0.25), or 0.1 throughout without the schedule.
    assert cosine == pytest.approx(sorted([0.1, 0.1, 0.075, 0.025] * 2))
    assert rates == pytest.approx([0.1] * 8)
    with pytest.raises(ValueError, match="schedule must be"):
        run_sync(config, "linear")
