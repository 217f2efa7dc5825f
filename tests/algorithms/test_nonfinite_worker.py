"""A worker with a NaN pseudo-gradient is left out of the sync with a warning; the others carry on (3 ranks)."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
import torch
from torch import nn

from farsync.algorithms.diloco import DiLoCo
from farsync.algorithms.dilocox import DiLoCoX
from farsync.algorithms.overlap import OverlappedDiLoCo
from farsync.algorithms.streaming import StreamingDiLoCo
from farsync.comm.communicator import Communicator
from farsync.config import AlgorithmConfig
from farsync.reducers.base import MeanReducer
from farsync.sim.ranks import run_ranks

BAD_RANK, H = 2, 2
_INIT_LOCK = threading.Lock()


class _Recording(MeanReducer):
    def __init__(self, comm: Communicator) -> None:
        super().__init__(comm)
        self.inputs: list[dict[str, torch.Tensor]] = []
        self.outputs: list[dict[str, torch.Tensor]] = []

    def reduce(self, named: dict[str, torch.Tensor], weight: float = 1.0) -> dict[str, torch.Tensor]:
        self.inputs.append({k: v.clone() for k, v in named.items()})
        out = super().reduce(named, weight)
        self.outputs.append({k: v.clone() for k, v in out.items()})
        return out


def _run(cls: type[DiLoCo], overlap: str, rank: int, world: int, group: Any) -> dict[str, Any]:
    with _INIT_LOCK:  # rank threads share torch's global generator: initialise one at a time
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    config = AlgorithmConfig(num_inner_steps=H, overlap=overlap, num_fragments=2, streaming_tau=1)  # type: ignore[arg-type]
    comm = Communicator(group, rank, world)
    reducer = _Recording(comm)
    algorithm = cls(model, optimizer, comm, config, reducer=reducer)
    with algorithm:
        for step in range(4 * H):
            x = torch.full((4, 3), 0.2 * (rank + 1) + 0.01 * step)
            if rank == BAD_RANK and step == 0:
                x[0, 0] = float("nan")  # poisons this worker's weights in its first round
            model(x).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    return {"sha": algorithm.global_sha256(), "global": algorithm.global_tensors(), "reducer": reducer}


@pytest.mark.parametrize(
    ("cls", "overlap"),
    [
        (OverlappedDiLoCo, "delayed"),
        (OverlappedDiLoCo, "eager"),
        (OverlappedDiLoCo, "naive"),
        (DiLoCoX, "delayed"),
        (StreamingDiLoCo, "delayed"),
    ],
)
def test_nan_worker_is_left_out_and_the_round_goes_on(
    cls: type[DiLoCo], overlap: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        results = run_ranks(
            lambda r, w, g, s: _run(cls, overlap, r, w, g), 3, prefix=f"nan-{cls.__name__}-{overlap}"
        )
    warnings = [r.getMessage() for r in caplog.records if "NaN/Inf" in r.getMessage()]
    assert warnings and all(message.startswith(f"worker {BAD_RANK}:") for message in warnings)
    # The first sync's average is the mean of the two good workers only.
    first = [r["reducer"] for r in results]
    for name, averaged in first[0].outputs[0].items():
        expected = (first[0].inputs[0][name] + first[1].inputs[0][name]) / 2
        torch.testing.assert_close(averaged, expected)
    assert all(torch.isfinite(t).all() for t in results[0]["global"])
    assert len({r["sha"] for r in results}) == 1
