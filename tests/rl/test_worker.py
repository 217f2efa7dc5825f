"""Inference workers: sync samples its share per version and waits; async throttles on the channel; what
they send passes the trainer's intake."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import torch

from farsync.rl.intake import RolloutIntake
from farsync.rl.messages import RolloutLimits
from farsync.rl.policy import build_policy
from farsync.rl.tasks import CharTokenizer, make_task
from farsync.rl.transport import InProcessRolloutChannel, InProcessWeights
from farsync.rl.worker import WorkerSettings, run_worker

SHAPE = {
    "num_layers": 1,
    "width": 32,
    "num_heads": 2,
    "context_length": 16,
    "vocab_size": CharTokenizer().vocab_size,
}


def _settings(mode: str, **changes: object) -> WorkerSettings:
    values: dict[str, object] = {
        "worker_id": "w1",
        "worker_index": 1,
        "num_workers": 2,
        "task": "arithmetic",
        "task_seed": 0,
        "num_heldout": 16,
        "model_shape": SHAPE,
        "mode": mode,
        "groups_per_version": 2,
        "group_size": 3,
        "max_new_tokens": 4,
        "temperature": 1.0,
        "max_pending": 6,
        "wait_s": 0.05,
    }
    values.update(changes)
    return WorkerSettings(**values)  # type: ignore[arg-type]


def _wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _start(
    settings: WorkerSettings,
) -> tuple[InProcessWeights, InProcessRolloutChannel, threading.Event, threading.Thread]:
    torch.manual_seed(0)
    weights, channel, stop = InProcessWeights(), InProcessRolloutChannel(), threading.Event()
    weights.publish(0, build_policy(**SHAPE).state_dict())
    thread = threading.Thread(target=run_worker, args=(settings, weights, channel, stop.is_set), daemon=True)
    thread.start()
    return weights, channel, stop, thread


def test_sync_worker_samples_its_share_per_version_then_waits() -> None:
    weights, channel, stop, thread = _start(_settings("sync"))
    _wait_for(lambda: channel.pending() == 2 * 3)
    time.sleep(0.3)
    assert channel.pending() == 6  # its share of version 0 is done: it waits for version 1
    weights.publish(1, build_policy(**SHAPE).state_dict())
    _wait_for(lambda: channel.pending() == 12)
    stop.set()
    thread.join(5.0)
    assert not thread.is_alive()
    messages = channel.pull(100, timeout_s=0.1)
    intake = RolloutIntake(
        make_task("arithmetic", seed=0, num_heldout=16),
        make_task("arithmetic", seed=0, num_heldout=16).reward,
        RolloutLimits(vocab_size=SHAPE["vocab_size"]),
        max_staleness=1,
    )
    for message in messages:
        intake.add(message, current_version=1)
    assert intake.counters.rejected == {}
    assert intake.counters.accepted == 12
    assert intake.num_ready(1) == 4


def test_async_worker_pauses_while_the_channel_is_full() -> None:
    _, channel, stop, thread = _start(_settings("async"))
    _wait_for(lambda: channel.pending() >= 6)
    time.sleep(0.3)
    assert channel.pending() == 6  # max_pending reached: no new group
    channel.pull(3, timeout_s=0.1)
    _wait_for(lambda: channel.pending() == 6)
    stop.set()
    thread.join(5.0)
    assert not thread.is_alive()


def test_worker_draws_only_the_kept_problems() -> None:
    from farsync.rl.messages import parse_rollout

    _, channel, stop, thread = _start(_settings("async", problem_indices=[5, 9]))
    _wait_for(lambda: channel.pending() >= 6)
    stop.set()
    thread.join(5.0)
    limits = RolloutLimits(vocab_size=SHAPE["vocab_size"])
    task_ids = {parse_rollout(m, limits).task_id for m in channel.pull(100, timeout_s=0.1)}
    assert task_ids == {"arithmetic/train/9"}  # worker 1 of 2 takes every other kept problem
