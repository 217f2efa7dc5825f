"""``compression.kind = "sparseloco"`` end to end: DiLoCo, Streaming DiLoCo and DiLoCoX train a tiny GPT on 2
threads, and DiLoCo's ledger holds exactly (M - 1) messages per round."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from helpers.tiny_runs import TINY_GPT

from farsync.compress import sparse_codec
from farsync.config import load_config
from farsync.launch.local import launch
from farsync.train.task import build_model

RUN = [
    *TINY_GPT,
    "num_workers=2",
    "train.num_steps=8",
    "algorithm.num_inner_steps=4",
    "checkpoint.every_rounds=0",
]
SPARSE = ["compression.kind=sparseloco", "compression.topk_fraction=0.03", "compression.chunk_size=16"]


def test_diloco_sends_m_minus_one_messages_per_round(tmp_path: Path) -> None:
    # Prepare
    config = load_config(None, [*RUN, *SPARSE, "network.emulation=virtual"])
    codec = sparse_codec("sparseloco", topk_fraction=0.03, chunk_size=16)
    shapes = [p.shape for p in build_model(config.model).parameters()]
    message = 4 + sum(codec.num_bytes(shape) for shape in shapes)
    # Execute
    summary = launch(config, tmp_path, progress=False, mode="threads")
    # Assert: 2 rounds, each worker sends its message once to the one other worker; far below DDP
    assert math.isfinite(summary["final_eval_loss"])
    assert summary["bytes_sent_per_worker"] == 2 * (2 - 1) * message
    assert summary["ddp_bytes_per_worker"] > 50 * summary["bytes_sent_per_worker"]


@pytest.mark.parametrize(
    "extra",
    [
        ["algorithm.name=streaming", "algorithm.num_fragments=1", "algorithm.streaming_tau=1"],
        ["algorithm.name=dilocox", "compression.kind=sparseloco_dct"],
    ],
    ids=["streaming", "dilocox_dct"],
)
def test_streaming_and_dilocox_train_with_sparse_pseudo_gradients(tmp_path: Path, extra: list[str]) -> None:
    # Prepare
    config = load_config(None, [*RUN, *SPARSE, *extra, "network.emulation=virtual"])
    # Execute
    summary = launch(config, tmp_path, progress=False, mode="threads")
    # Assert
    assert math.isfinite(summary["final_eval_loss"])
    assert 0 < summary["bytes_sent_per_worker"] < summary["ddp_bytes_per_worker"] / 20
