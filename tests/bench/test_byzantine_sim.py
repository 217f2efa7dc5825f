"""The one-process simulation of ``farsync bench byzantine`` against the real pieces: the robust reducer
over gloo (shard by shard, with history and NNM), the workers' tasks, and per-worker gradients."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from farsync.bench.byzantine import DATASET
from farsync.bench.byzantine_sim import (
    SimulatedAggregation,
    _gradients,
    _tasks,
    noise_to_signal,
    run_simulated,
)
from farsync.comm.communicator import Communicator
from farsync.config import load_config
from farsync.reducers.robust import build_robust_reducer
from farsync.sim.ranks import run_ranks
from farsync.train.task import build_task

WORLD = 4


def test_noise_to_signal_by_hand() -> None:
    # Rows 1 and 3 around mean 2: RMS distance 1, mean norm 2.
    assert noise_to_signal(torch.tensor([[1.0, 0.0], [3.0, 0.0]])) == pytest.approx(0.5)


@pytest.mark.parametrize("preaggregation", ["nnm", "bucketing"])
def test_simulated_rounds_equal_the_robust_reducer_over_gloo(preaggregation: str) -> None:
    # Prepare: CenteredClip with history after NNM or bucketing (a new permutation each round: 3 buckets
    # of 2), 6 workers, 10 values (6 shards of 2, padded), 2 rounds.
    world = 6
    config = load_config(None, [
        f"num_workers={world}", "aggregation.rule=centered_clip", "aggregation.tau_scale=neighbors",
        "aggregation.clip_start=previous", "aggregation.num_iters=2",
        f"aggregation.preaggregation={preaggregation}",
    ])  # fmt: skip
    rounds = [torch.randn(world, 10, generator=torch.Generator().manual_seed(s)) for s in (5, 6)]
    rounds[1][3] += 50.0

    def body(rank: int, world: int, group: Any, store: Any) -> list[torch.Tensor]:
        reducer = build_robust_reducer(config.aggregation, Communicator(group, rank, world))
        return [reducer({"w": stack[rank].clone()})["w"] for stack in rounds]

    # Execute
    real = run_ranks(body, world, prefix="simeq")[0]
    simulated = SimulatedAggregation(config)
    # Assert
    for stack, expected in zip(rounds, real, strict=True):
        torch.testing.assert_close(simulated(stack), expected)


def test_tasks_are_the_workers_tasks() -> None:
    config = load_config(None, [
        f"num_workers={WORLD}", "model.kind=mlp", "model.width=16", "data.kind=npz",
        f"data.path={DATASET}", "train.batch_size=8", "byzantine.workers=[3]", "byzantine.attack=label_flip",
    ])  # fmt: skip
    tasks = _tasks(config)
    for rank in (0, 3):
        real = build_task(config.model, config.data, batch_size=8, num_eval_batches=1, rank=rank,
                          num_workers=WORLD, seed=0, flip_labels=rank == 3)  # fmt: skip
        for mine, theirs in zip(tasks[rank].model.parameters(), real.model.parameters(), strict=True):
            torch.testing.assert_close(mine, theirs)
        for _ in range(2):
            (x, y), (x_real, y_real) = next(tasks[rank].batches), next(real.batches)
            torch.testing.assert_close(x, x_real)
            torch.testing.assert_close(y, y_real)


def test_batched_gradients_equal_each_workers_own() -> None:
    config = load_config(None, [
        f"num_workers={WORLD}", "model.kind=mlp", "model.width=16", "data.kind=npz",
        f"data.path={DATASET}", "train.batch_size=8",
    ])  # fmt: skip
    tasks, twins = _tasks(config), _tasks(config)
    model = tasks[0].model
    batched = _gradients(model, tasks)
    for rank, twin in enumerate(twins):
        x, y = next(twin.batches)
        grads = torch.autograd.grad(twin.loss(model, x, y), list(model.parameters()))
        torch.testing.assert_close(batched[rank], torch.cat([g.reshape(-1) for g in grads]))


def _small_sync(steps: int, warmup: int) -> Any:
    return load_config(None, [
        f"num_workers={WORLD}", "model.kind=mlp", "model.width=16", "data.kind=npz", f"data.path={DATASET}",
        "train.batch_size=8", f"train.num_steps={steps}", f"train.warmup_steps={warmup}",
        "train.min_lr_ratio=0.0", "algorithm.name=ddp", "aggregation.worker_momentum=0.9",
    ])  # fmt: skip


def test_cosine_schedule_sets_each_steps_learning_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: record the rate of every SGD step of the synchronous regime.
    rates: list[float] = []
    step = torch.optim.SGD.step

    def recording(self: torch.optim.SGD, *args: Any, **kwargs: Any) -> Any:
        rates.append(float(self.param_groups[0]["lr"]))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording)
    # Execute: 4 steps, warm-up 1, cosine to 0 at step 4; then a constant rate.
    run_simulated(_small_sync(4, 1), "sync", lr=0.1, schedule="cosine")
    cosine = list(rates)
    rates.clear()
    run_simulated(_small_sync(4, 1), "sync", lr=0.1)
    # Assert: warm-up factor (0 + 1) / 1, then 0.5 (1 + cos(pi k / 3)) for k = 0, 1, 2.
    assert cosine == pytest.approx([0.1, 0.1, 0.075, 0.025])
    assert rates == pytest.approx([0.1] * 4)
    with pytest.raises(ValueError, match="schedule must be"):
        run_simulated(_small_sync(1, 0), "sync", schedule="linear")


def test_a_diverged_run_stops_and_is_scored_instead_of_crashing(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: from the third round on the vectors sent hold an infinity (an attack blew the model up).
    from farsync.bench import byzantine_sim

    calls = {"n": 0}
    forward = byzantine_sim._Attackers.__call__

    def blown_up(self: Any, honest: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        sent = forward(self, honest)
        return sent if calls["n"] < 3 else sent.fill_(float("inf"))

    monkeypatch.setattr(byzantine_sim._Attackers, "__call__", blown_up)
    # Execute
    outcome = run_simulated(_small_sync(4, 1), "sync", lr=0.1)
    # Assert: two rounds aggregated, then stopped; the model as it stood is scored.
    assert outcome["diverged"] is True
    assert outcome["num_rounds"] == 2
    assert 0.0 <= outcome["final_eval_accuracy"] <= 1.0
    monkeypatch.setattr(byzantine_sim._Attackers, "__call__", forward)
    clean = run_simulated(_small_sync(4, 1), "sync", lr=0.1)
    assert clean["diverged"] is False and clean["num_rounds"] == 4
