"""Streaming DiLoCo: fragment assignment, schedule, the mixing formula and peak bytes per sync."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch
from torch import nn

from farsync.algorithms.diloco import DiLoCo
from farsync.algorithms.fragments import fragment_offsets, fragments_starting, split_fragments
from farsync.algorithms.streaming import StreamingDiLoCo
from farsync.comm.communicator import Communicator
from farsync.config import AlgorithmConfig, ConfigError, ModelConfig
from farsync.reducers.base import MeanReducer
from farsync.sim.ranks import run_ranks
from farsync.train.task import build_model


def test_gpt_blocks_are_strided_and_embed_head_balance_the_fragments() -> None:
    model = build_model(ModelConfig(num_layers=4, width=32, num_heads=2, context_length=16))
    sizes = {name: p.numel() for name, p in model.named_parameters()}
    fragments = split_fragments(sizes, 2)
    assert all(name.startswith(("blocks.0.", "blocks.2.", "embed.")) for name in fragments[0])
    assert all(name.startswith(("blocks.1.", "blocks.3.", "head.")) for name in fragments[1])
    assert sorted(sum(fragments, [])) == sorted(sizes)
    four = split_fragments(sizes, 4)
    assert {n.split(".")[0] for n in four[0]} == {"embed", "blocks"} and "head.linear.weight" in four[1]


def test_more_fragments_than_layers_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="algorithm.num_fragments"):
        split_fragments({"layers.0.weight": 4, "layers.1.weight": 4}, 3)


def test_schedule_offsets_and_starting_steps() -> None:
    offsets = fragment_offsets(8, 4)
    assert offsets == [0, 2, 4, 6]
    starts = {step: fragments_starting(step, 8, offsets) for step in range(0, 17)}
    assert {s: f for s, f in starts.items() if f} == {
        2: [1],
        4: [2],
        6: [3],
        8: [0],
        10: [1],
        12: [2],
        14: [3],
        16: [0],
    }


_INIT_LOCK = threading.Lock()


class _Recording(MeanReducer):
    def __init__(self, comm: Communicator) -> None:
        super().__init__(comm)
        self.calls: list[list[str]] = []

    def reduce(self, named: dict[str, torch.Tensor], weight: float = 1.0) -> dict[str, torch.Tensor]:
        self.calls.append(sorted(named))
        return super().reduce(named, weight)


def test_world_size_one_mixes_alpha_local_with_the_outer_step() -> None:
    # Prepare: two one-weight layers, P = 2, H = 4, tau = 1; outer SGD lr 1 without momentum, so a fragment's
    # outer step at world size 1 returns the local value at its sync start s; at s + 1 the local weight is
    # alpha * x(s + 1) + (1 - alpha) * x(s).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    config = AlgorithmConfig(
        name="streaming",
        num_inner_steps=4,
        num_fragments=2,
        streaming_tau=1,
        streaming_alpha=0.25,
        outer_lr=1.0,
        outer_momentum=0.0,
    )
    comm = Communicator(None, 0, 1)
    reducer = _Recording(comm)
    algorithm = StreamingDiLoCo(model, optimizer, comm, config, reducer=reducer)
    history: list[list[float]] = []
    # Execute: a constant gradient of 1 on each weight (SGD moves each by -0.1 per step)
    with algorithm:
        for _ in range(8):
            for p in model.parameters():
                p.grad = torch.ones_like(p)
            optimizer.step()
            history.append([float(p.detach()) for p in model.parameters()])
    # Assert: fragment 1 ("1.weight") starts at steps 2, 6; fragment 0 at 4, 8 (applied in finish)
    assert reducer.calls == [["1.weight"], ["0.weight"], ["1.weight"], ["0.weight"]]
    initial = [h + 0.1 for h in history[0]]
    # fragment 1: sync at s=2 sees x(2) = init - 0.2; at step 3 x = 0.25 * (init - 0.3) + 0.75 * (init - 0.2)
    expected_1_at_3 = 0.25 * (initial[1] - 0.3) + 0.75 * (initial[1] - 0.2)
    assert history[2][1] == pytest.approx(expected_1_at_3, abs=1e-6)
    expected_0_at_5 = 0.25 * (initial[0] - 0.5) + 0.75 * (initial[0] - 0.4)
    assert history[4][0] == pytest.approx(expected_0_at_5, abs=1e-6)
    assert history[1][1] == pytest.approx(initial[1] - 0.2, abs=1e-6)  # untouched before its due step


def _peak(cls: type[DiLoCo], rank: int, world: int, group: Any) -> tuple[int, str]:
    with _INIT_LOCK:  # rank threads share torch's global generator: initialise one at a time
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    config = AlgorithmConfig(num_inner_steps=4, num_fragments=2, streaming_tau=1)
    comm = Communicator(group, rank, world)
    algorithm = cls(model, optimizer, comm, config)
    with algorithm:
        for _ in range(8):
            model(torch.full((2, 16), 0.1 * (rank + 1))).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    return comm.ledger.peak_sync_bytes, algorithm.global_sha256()


def test_peak_bytes_per_sync_drop_to_about_one_over_p_and_ranks_end_equal() -> None:
    diloco = run_ranks(lambda r, w, g, s: _peak(DiLoCo, r, w, g), 2, prefix="peak-diloco")
    streaming = run_ranks(lambda r, w, g, s: _peak(StreamingDiLoCo, r, w, g), 2, prefix="peak-streaming")
    ratio = streaming[0][0] / diloco[0][0]
    assert 0.45 <= ratio <= 0.55
    assert streaming[0][1] == streaming[1][1]
