"""SparseLoCo (arXiv 2508.15706) hand-stepped on 2 gloo ranks, its bytes on 4, a bad peer, and the outer step.

Every tensor is 8 values in two runs of 4 (``chunk_size = 4``), ``k = 2`` per run (``topk_fraction = 0.5``),
``beta = 0.5``. The kept values of each worker are chosen as ``{p, p, q, q}``, which the 2-bit quantizer
carries exactly (codes 3 and 1, each bin's mean is its value), so every number below is exact.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from farsync.algorithms.diloco import DiLoCo
from farsync.comm.communicator import Communicator
from farsync.config import (
    SPARSE_OUTER_LR,
    AlgorithmConfig,
    CompressionConfig,
    ConfigError,
    PrivacyConfig,
    load_config,
    outer_recipe,
)
from farsync.reducers.budget import replaces_outer_momentum
from farsync.reducers.sparseloco import SparseLoCoReducer
from farsync.sim.ranks import run_ranks
from farsync.train.build import make_reducer

# Pseudo-gradients Delta_r per round (rows: rounds; one tensor "w" of 8 values).
DELTAS = {
    0: [
        [3.0, 0.0, 3.0, 0.5, -1.0, 0.25, 0.0, -1.0],  # keeps 3, 3 | -1, -1; 0.5 and 0.25 stay behind
        [1.0, 0.1, 0.0, 0.75, 0.2, -0.625, -0.5, 0.0],
    ],
    1: [
        [0.0, 2.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.3, 0.3, -0.9, 0.05, 0.0, -0.9],
    ],
}
# Round 2, worker 0: e = 0.5 * (0, 0, 0, 0.5, 0, 0.25, 0, 0) + Delta = (1, 0.1, 0, 1, 0.2, -0.5, -0.5, 0):
# keeps 1, 1 | -0.5, -0.5 (with beta = 1 it would keep 1.25 and -0.375; with beta = 0, 0.75 and -0.625).
EXPECTED_MEANS = [
    [1.5, 1.0, 1.5, 1.0, -0.5, 0.0, 0.0, -0.5],  # (3,0,3,0,-1,0,0,-1) and (0,2,0,2,0,0,0,0)
    [0.5, 0.0, 0.15, 0.65, -0.45, -0.25, -0.25, -0.45],  # (1,0,0,1,0,-.5,-.5,0) and (0,0,.3,.3,-.9,0,0,-.9)
]
EXPECTED_BUFFERS = {
    0: [0.0, 0.1, 0.0, 0.0, 0.2, 0.0, 0.0, 0.0],
    1: [0.0, 0.0, 0.0, 0.0, 0.0, 0.05, 0.0, 0.0],
}


def _reducer(comm: Communicator) -> SparseLoCoReducer:
    return SparseLoCoReducer(comm, fraction=0.5, chunk_size=4, error_decay=0.5)


def test_two_rounds_by_hand() -> None:
    # Prepare
    def on_rank(rank: int, world: int, group: Any, store: Any) -> tuple[list[list[float]], list[float]]:
        reducer = _reducer(Communicator(group, rank, world))
        # Execute
        means = [reducer({"w": torch.tensor(delta)})["w"].tolist() for delta in DELTAS[rank]]
        return means, reducer.buffers["w"].tolist()

    results = run_ranks(on_rank, 2)
    # Assert: the same average on both workers; each keeps its own unsent part
    for rank, (means, buffer) in enumerate(results):
        for got, expected in zip(means, EXPECTED_MEANS, strict=True):
            assert got == pytest.approx(expected, abs=1e-6)
        assert buffer == pytest.approx(EXPECTED_BUFFERS[rank], abs=1e-6)


def test_the_ledger_counts_m_minus_one_messages_per_worker() -> None:
    # Prepare: 4 workers; a 64 x 64 matrix and a 64-vector at 1/64 (paper chunks 64 x 64)
    shapes = {"w": (64, 64), "b": (64,)}

    def on_rank(rank: int, world: int, group: Any, store: Any) -> tuple[int, int, dict]:
        comm = Communicator(group, rank, world)
        reducer = make_reducer(comm, compression=CompressionConfig(kind="sparseloco", topk_fraction=1 / 64))
        generator = torch.Generator().manual_seed(rank)
        # Execute
        reducer({name: torch.randn(shape, generator=generator) for name, shape in shapes.items()})
        return comm.ledger.bytes_sent(), reducer.metrics()["compressed_bytes"], reducer.metrics()

    results = run_ranks(on_rank, 4)
    # Assert: message = 4 (weight) + 128 (64 offsets of 12 bits, 64 codes, table) + 18; sent 3 times
    for sent, message, metrics in results:
        assert message == 4 + 128 + 18
        assert sent == 3 * message == metrics["compression_bytes_sent"]


def test_a_peer_with_a_broken_message_is_left_out() -> None:
    # Prepare: worker 1's value table is NaN (right length), worker 0's update is all 2s
    def on_rank(rank: int, world: int, group: Any, store: Any) -> tuple[list[float], int]:
        reducer = _reducer(Communicator(group, rank, world))
        if rank == 1:
            encode = reducer._encode

            def broken(named: dict[str, torch.Tensor], weight: float) -> list[torch.Tensor]:
                messages = encode(named, weight)
                messages[0][:4] = torch.tensor([float("nan")]).view(torch.uint8)
                return messages

            reducer._encode = broken  # type: ignore[method-assign]
        # Execute
        mean = reducer({"w": torch.full((8,), 2.0)})["w"].tolist()
        return mean, reducer.num_rejected

    results = run_ranks(on_rank, 2)
    # Assert: both drop worker 1 and average worker 0's (2, 2 kept per run; the rest 0) alone
    for mean, rejected in results:
        assert rejected == 1
        assert sum(mean) == pytest.approx(8.0) and set(mean) == {0.0, 2.0}


def test_a_left_out_worker_subtracts_nothing_from_its_buffer() -> None:
    # Prepare
    reducer = _reducer(Communicator(None, 0, 1))
    # Execute: weight 0 (e.g. after a non-finite pseudo-gradient)
    reducer({"w": torch.tensor(DELTAS[0][0])}, weight=0.0)
    # Assert
    assert reducer.buffers["w"].tolist() == pytest.approx(DELTAS[0][0])


def test_the_outer_step_is_sgd_at_lr_one_without_momentum() -> None:
    # Prepare: one worker, theta = 0; its inner steps move the weight to -Delta (so pseudo-gradient = Delta)
    comm = Communicator(None, 0, 1)
    model = torch.nn.Linear(8, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    reducer = make_reducer(
        comm, compression=CompressionConfig(kind="sparseloco", topk_fraction=0.5, chunk_size=4)
    )
    algo = DiLoCo(model, optimizer, comm, AlgorithmConfig(num_inner_steps=1), reducer=reducer)
    delta = torch.tensor([[3.0, 0.0, 3.0, 0.5, -1.0, 0.25, 0.0, -1.0]])
    # Execute
    with torch.no_grad():
        model.weight.copy_(-delta)
    algo.outer_round()
    # Assert: rule resolved to (1, 0); theta <- theta - 1 * sent, sent = (3, 0, 3, 0, -1, 0, 0, -1)
    assert (algo.config.outer_lr, algo.config.outer_momentum) == (1.0, 0.0)
    assert model.weight.tolist()[0] == pytest.approx([-3.0, 0, -3.0, 0, 1.0, 0, 0, 1.0])


def test_the_rule_looks_through_a_privacy_wrapper() -> None:
    # Prepare: central DP clipping and noise around the SparseLoCo reducer
    comm = Communicator(None, 0, 1)
    model = torch.nn.Linear(4, 1)
    compression = CompressionConfig(kind="sparseloco")
    reducer = make_reducer(comm, compression=compression, privacy=PrivacyConfig(mode="central"))
    # Execute
    algo = DiLoCo(
        model, torch.optim.SGD(model.parameters(), lr=0.1), comm, AlgorithmConfig(), reducer=reducer
    )
    # Assert (one worker's recipe is (1, 0) anyway: the chain walk itself is what must find the buffer)
    assert not isinstance(reducer, SparseLoCoReducer)
    assert replaces_outer_momentum(reducer)
    assert (algo.config.outer_lr, algo.config.outer_momentum) == (1.0, 0.0)


def test_explicit_outer_settings_are_kept() -> None:
    # Prepare
    comm = Communicator(None, 0, 1)
    model = torch.nn.Linear(4, 1)
    reducer = make_reducer(comm, compression=CompressionConfig(kind="sparseloco_dct"))
    config = AlgorithmConfig(outer_lr=0.7, outer_momentum=0.5)
    # Execute
    algo = DiLoCo(model, torch.optim.SGD(model.parameters(), lr=0.1), comm, config, reducer=reducer)
    # Assert
    assert (algo.config.outer_lr, algo.config.outer_momentum) == (0.7, 0.5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["compression.error_decay=1.5"], r"compression.error_decay = 1.5: must be in \[0, 1\]"),
        (["compression.chunk_size=0"], r"compression.chunk_size = 0: must be >= 1"),
        (
            ["compression.kind=sparseloco", "aggregation.rule=median"],
            r"compression.kind = 'sparseloco': sends each worker's own sparse message",
        ),
    ],
)
def test_bad_config_is_a_config_error(overrides: list[str], message: str) -> None:
    # Prepare / Execute / Assert
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_the_rule_for_several_workers_is_plain_sgd_at_the_sparse_outer_lr() -> None:
    assert outer_recipe(4, 30, error_feedback_momentum=True) == (SPARSE_OUTER_LR, 0.0) == (2.0, 0.0)
    assert outer_recipe(4, 30) == (1.0, 0.7)
