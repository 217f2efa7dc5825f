"""DiLoCo with one worker, outer learning rate 1 and no momentum is the inner optimizer's own trajectory:
the outer step ``theta - 1 * (theta - x)`` lands on the worker's weights. So at M = 1 the outer recipe can
only add to plain training, never be forced to lose to it (issue 17: the rule's M = 1 recipe once ended
+4.1% above DDP)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_runs import TINY_GPT

from farsync.config import load_config
from farsync.launch.local import launch


def _run(tmp_path: Path, name: str, algorithm: list[str]) -> dict[str, float]:
    config = load_config(
        None,
        [
            *TINY_GPT,
            "num_workers=1",
            "train.num_steps=20",
            "train.eval_every=10",
            "checkpoint.every_rounds=0",
            "network.emulation='off'",
            *algorithm,
        ],
    )
    return launch(config, tmp_path / name, mode="threads", progress=False)


def test_one_worker_outer_lr_1_no_momentum_is_plain_training(tmp_path: Path) -> None:
    plain = _run(tmp_path, "ddp", ["algorithm.name=ddp"])
    diloco = _run(
        tmp_path,
        "diloco",
        [
            "algorithm.name=diloco",
            "algorithm.num_inner_steps=5",
            "algorithm.outer_lr=1.0",
            "algorithm.outer_momentum=0.0",
        ],
    )
    assert diloco["final_eval_loss"] == pytest.approx(plain["final_eval_loss"], abs=1e-5)
    # With momentum the outer step is not the identity, and the run leaves that trajectory.
    momentum = _run(
        tmp_path,
        "momentum",
        [
            "algorithm.name=diloco",
            "algorithm.num_inner_steps=5",
            "algorithm.outer_lr=1.0",
            "algorithm.outer_momentum=0.5",
        ],
    )
    assert abs(momentum["final_eval_loss"] - plain["final_eval_loss"]) > 1e-4
