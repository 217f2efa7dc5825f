"""The worker loop's ordering around the optimizer step: gradient clipping after the algorithm's hook."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from farsync.config import RunConfig
from farsync.launch.local import launch


def _clipped_gradients(
    monkeypatch: pytest.MonkeyPatch, config: RunConfig, out: Path
) -> dict[str, list[torch.Tensor]]:
    """Runs ``config`` in threads; returns, per worker thread, the gradients each clip call saw."""
    seen: dict[str, list[torch.Tensor]] = {}
    lock = threading.Lock()
    original = torch.nn.utils.clip_grad_norm_

    def recording_clip(parameters: Any, max_norm: float, *args: Any, **kwargs: Any) -> torch.Tensor:
        parameters = list(parameters)
        flat = torch.cat([p.grad.detach().reshape(-1).clone() for p in parameters if p.grad is not None])
        with lock:
            seen.setdefault(threading.current_thread().name, []).append(flat)
        return original(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    launch(config, out, mode="threads", progress=False)
    return seen


def test_ddp_clips_the_averaged_gradient_so_every_worker_clips_the_same_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_config: Callable[..., RunConfig]
) -> None:
    # Prepare
    config = tiny_config("num_workers=2", "train.num_steps=2", "algorithm.name=ddp", "train.grad_clip=0.5")
    # Execute
    seen = _clipped_gradients(monkeypatch, config, tmp_path / "run")
    # Assert: two workers, two steps each, and the gradient each clipped is the group's average
    assert sorted(len(calls) for calls in seen.values()) == [2, 2]
    first, second = seen.values()
    for step in range(2):
        assert torch.equal(first[step], second[step])


def test_diloco_clips_each_workers_own_gradient(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_config: Callable[..., RunConfig]
) -> None:
    # Prepare
    config = tiny_config("num_workers=2", "train.num_steps=1", "algorithm.num_inner_steps=1")
    # Execute
    seen = _clipped_gradients(monkeypatch, config, tmp_path / "run")
    # Assert: different data, different local gradients (nothing is averaged before the inner step)
    first, second = seen.values()
    assert not torch.equal(first[0], second[0])
