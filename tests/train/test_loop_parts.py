"""TrainingLoop built by composition: the parts a runner passes are the ones the loop uses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch.distributed as dist
from torch import Tensor

from farsync.comm.clock import Clock
from farsync.comm.communicator import Communicator
from farsync.comm.ledger import ByteLedger
from farsync.config import RunConfig
from farsync.reducers.base import MeanReducer
from farsync.train import (
    LoopParts,
    TrainingLoop,
    WorkerContext,
    WorkerResult,
    plain_step,
    sync_communicator,
)


def _context(records: list[dict[str, Any]], prefix: str) -> WorkerContext:
    store = dist.HashStore()  # type: ignore[attr-defined]
    return WorkerContext(0, 1, store, None, records.append, group_prefix=prefix)


def test_the_loop_runs_the_runners_step_reducer_decoration_and_result(
    tiny_config: Callable[..., RunConfig],
) -> None:
    # Prepare: a world-size-1 DiLoCo run whose runner brings its own communicator, reducer, step and hooks
    config = tiny_config("num_workers=1", "train.num_steps=4", "algorithm.num_inner_steps=2")
    records: list[dict[str, Any]] = []
    ctx = _context(records, "parts")
    clock, ledger = Clock(config.network.emulation), ByteLedger(rank=0)
    comm = sync_communicator(config, ctx, ledger, clock)
    reducer = MeanReducer(comm)
    steps: list[int] = []

    def counting_step(loop: TrainingLoop, inputs: Tensor, targets: Tensor) -> float:
        steps.append(loop.step)
        return plain_step(loop, inputs, targets)

    def tag(record: dict[str, Any]) -> None:
        record["runner"] = "test"

    def finish(loop: TrainingLoop, result: WorkerResult) -> WorkerResult:
        result.extra["finished_at_round"] = loop.algorithm.round
        return result

    parts = LoopParts(
        clock=clock,
        ledger=ledger,
        comm=comm,
        reducer=reducer,
        step=counting_step,
        decorate=tag,
        finish=finish,
    )

    # Execute
    loop = TrainingLoop(config, ctx, parts)
    result = loop.run()

    # Assert: the algorithm was built with the runner's reducer (nothing swapped afterwards), the step ran
    # once per inner step, every record was decorated and the result went through the runner's hook
    assert loop.algorithm.reducer is reducer and loop.comm is comm
    assert steps == [0, 1, 2, 3]
    assert records and all(record["runner"] == "test" and record["worker"] == 0 for record in records)
    assert [r["round"] for r in records if r["kind"] == "round"] == [1, 2]
    assert result.num_steps == 4 and result.extra["finished_at_round"] == 2


def test_a_communicator_that_charges_another_ledger_is_refused(tiny_config: Callable[..., RunConfig]) -> None:
    # Prepare: a communicator built over a ledger the loop is not given
    config = tiny_config("num_workers=1")
    ctx = _context([], "mismatch")
    comm = Communicator(None, 0, 1, ledger=ByteLedger(rank=0), clock=Clock("off"))

    # Execute / Assert
    with pytest.raises(ValueError, match="must charge LoopParts.ledger"):
        TrainingLoop(config, ctx, LoopParts(comm=comm, ledger=ByteLedger(rank=0)))
