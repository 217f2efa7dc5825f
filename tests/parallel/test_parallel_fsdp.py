"""FSDP2 inside a replica (farsync.parallel.fsdp): the sharded runner against the plain loop.

The runner at world size 1 (one replica of one shard, in this process) must train exactly like the plain
loop and resume from its own checkpoints exactly; 2 replicas x 2 shards (four processes, gloo) must
reproduce the unsharded 2-worker DiLoCo run's losses within 1e-5 and resume exactly. The model has an odd feed-forward width, so
some parameters shard unevenly (23 + 22 rows).
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

from hf_helpers import worker_losses  # noqa: E402

from farsync.comm.groups import open_store  # noqa: E402
from farsync.config import ConfigError, RunConfig  # noqa: E402
from farsync.launch.local import launch  # noqa: E402
from farsync.parallel.fsdp import ShardLayout, run_sharded_worker, transformer_blocks  # noqa: E402
from farsync.train import WorkerContext, WorkerResult, run_training  # noqa: E402
from farsync.train.task import build_task  # noqa: E402

pytestmark = pytest.mark.usefixtures("private_cache")
"""Tokenizers and token caches go to each test's own directory (see tests/conftest.py)."""

UNEVEN = ("model.intermediate_size=45",)


def _in_process(
    runner: Callable[[RunConfig, WorkerContext], WorkerResult],
    config: RunConfig,
    out: Path,
    resume: bool = False,
) -> tuple[WorkerResult, list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    store = open_store("127.0.0.1", 0, 1, is_master=True)
    ctx = WorkerContext(0, 1, store, out, records.append, resume=resume, group_prefix=f"t{os.getpid()}")
    return runner(config, ctx), records


def _losses(records: list[dict[str, Any]]) -> list[float]:
    return [float(r["loss"]) for r in records if r["kind"] == "step"]


def test_layout_and_blocks() -> None:
    # Prepare
    layout = ShardLayout(num_replicas=3, num_shards=2)
    # Assert: rank = replica x N + shard; a Llama's decoder layers are its blocks
    assert [(layout.replica(r), layout.shard(r)) for r in range(6)] == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
        (2, 0),
        (2, 1),
    ]
    assert layout.replica_ranks(1) == [2, 3] and layout.shard_ranks(1) == [1, 3, 5]


def test_blocks_of_a_llama(tiny_hf: Callable[..., RunConfig]) -> None:
    config = tiny_hf()
    task = build_task(
        config.model, config.data, batch_size=4, num_eval_batches=1, rank=0, num_workers=2, seed=0
    )
    blocks = transformer_blocks(task.model)
    assert len(blocks) == 2 and type(blocks[0]).__name__ == "LlamaDecoderLayer"


@pytest.mark.timeout(600)
def test_sharded_runner_at_world_size_one_trains_and_resumes_like_the_plain_loop(
    tmp_path: Path, tiny_hf: Callable[..., RunConfig]
) -> None:
    # Prepare
    config = tiny_hf("num_workers=1", "checkpoint.every_rounds=1", "checkpoint.keep=10", *UNEVEN)
    plain, plain_records = _in_process(run_training, config, tmp_path / "plain")
    # Execute: the sharded runner, then a run resumed from its round-1 checkpoint
    sharded, sharded_records = _in_process(run_sharded_worker, config, tmp_path / "sharded")
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(
        tmp_path / "sharded" / "checkpoints" / "round_000001", resumed_dir / "checkpoints" / "round_000001"
    )
    resumed, resumed_records = _in_process(run_sharded_worker, config, resumed_dir, resume=True)
    # Assert
    torch.testing.assert_close(_losses(sharded_records), _losses(plain_records), atol=1e-5, rtol=0)
    assert sharded.final_eval["eval_loss"] == pytest.approx(plain.final_eval["eval_loss"], abs=1e-5)
    assert resumed.global_params_sha256 == sharded.global_params_sha256
    assert _losses(resumed_records) == _losses(sharded_records)[4:]
    assert resumed.bytes_sent == sharded.bytes_sent
    assert (tmp_path / "sharded" / "final" / "model.safetensors").is_file()


@pytest.mark.timeout(600)
def test_bf16_sharded_runner_keeps_fp32_master_weights(
    tmp_path: Path, tiny_hf: Callable[..., RunConfig]
) -> None:
    # Prepare
    config = tiny_hf("num_workers=1", "train.precision=bf16", "train.num_steps=4")
    fp32 = tiny_hf("num_workers=1", "train.num_steps=4")
    # Execute
    result, records = _in_process(run_sharded_worker, config, tmp_path / "bf16")
    reference, reference_records = _in_process(run_sharded_worker, fp32, tmp_path / "fp32")
    # Assert: bf16 compute rounds differently but trains like fp32; the saved weights are fp32
    assert all(math.isfinite(loss) for loss in _losses(records))
    assert _losses(records) != _losses(reference_records)
    torch.testing.assert_close(_losses(records), _losses(reference_records), atol=0.05, rtol=0)
    assert result.final_eval["eval_loss"] == pytest.approx(reference.final_eval["eval_loss"], abs=0.05)


def test_refused_combinations_name_the_key(tiny_hf: Callable[..., RunConfig]) -> None:
    cases = {
        ("num_workers=3", "parallel.num_shards=2"): "num_workers",
        ("num_workers=4", "parallel.num_shards=2", "algorithm.name=ddp"): "parallel.num_shards",
        ("num_workers=4", "parallel.num_shards=2", "algorithm.name=gossip"): "parallel.num_shards",
        ("num_workers=4", "parallel.num_shards=2", "train.batch_size=3"): "train.batch_size",
        ("num_workers=4", "parallel.num_shards=2", "privacy.mode=central"): "privacy.mode",
        ("num_workers=4", "parallel.num_shards=2", "parallel.num_stages=2"): "parallel.num_stages",
    }
    for overrides, key in cases.items():
        with pytest.raises(ConfigError) as caught:
            tiny_hf(*overrides)
        assert caught.value.key == key, overrides
    # composes: compression and robust aggregation on each shard group's shards
    tiny_hf("num_workers=6", "parallel.num_shards=2", "compression.kind=int8", "aggregation.rule=median")


@pytest.mark.timeout(900)  # four interpreters importing torch and transformers on a shared machine
@pytest.mark.skipif(os.environ.get("FARSYNC_PROCESS_TESTS", "1") == "0", reason="FARSYNC_PROCESS_TESTS=0")
def test_two_replicas_of_two_shards_reproduce_the_unsharded_two_worker_run(
    tmp_path: Path, tiny_hf: Callable[..., RunConfig]
) -> None:
    # Prepare
    unsharded = launch(
        tiny_hf("num_workers=2", *UNEVEN), tmp_path / "unsharded", mode="threads", progress=False
    )
    # Execute: the sharded run, then one resumed from its round-1 checkpoint
    config = tiny_hf("num_workers=4", "parallel.num_shards=2", "checkpoint.every_rounds=1", *UNEVEN)
    sharded = launch(config, tmp_path / "sharded", progress=False)
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(
        tmp_path / "sharded" / "checkpoints" / "round_000001", resumed_dir / "checkpoints" / "round_000001"
    )
    shutil.copy(tmp_path / "sharded" / "config.toml", resumed_dir / "config.toml")
    resumed = launch(config, resumed_dir, progress=False, resume=True)
    # Assert: replica r's losses (on either of its shards) are unsharded worker r's
    for replica in range(2):
        expected = worker_losses(tmp_path / "unsharded", replica)
        for shard in range(2):
            actual = worker_losses(tmp_path / "sharded", 2 * replica + shard)
            torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    assert sharded["final_eval_loss"] == pytest.approx(unsharded["final_eval_loss"], abs=1e-5)
    assert len(set(sharded["global_params_sha256"])) == 1  # whole-tensor hash: every rank agrees
    assert (tmp_path / "sharded" / "final" / "config.json").is_file()
    assert resumed["global_params_sha256"] == sharded["global_params_sha256"]
    assert worker_losses(resumed_dir, 3)[-4:] == worker_losses(tmp_path / "sharded", 3)[-4:]
