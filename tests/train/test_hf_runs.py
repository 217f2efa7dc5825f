"""Whole runs of Hugging Face models: DiLoCo and DiLoCoX training, bf16, BPE and local data, exact resume of
the data stream, ``farsync export`` and experiment loggers. Workers run as threads (tiny Llamas, seconds)."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hf_helpers import read_records, worker_losses  # noqa: E402

from farsync import cli  # noqa: E402
from farsync.algorithms.base import params_sha256  # noqa: E402
from farsync.config import RunConfig  # noqa: E402
from farsync.launch.local import launch  # noqa: E402
from farsync.models.hf import HFCausalLM  # noqa: E402
from farsync.train.checkpoint import find_latest, load_worker_state  # noqa: E402
from farsync.train.task import build_task  # noqa: E402

pytestmark = pytest.mark.usefixtures("private_cache")
"""Tokenizers and token caches go to each test's own directory (see tests/conftest.py)."""


def _initial_eval_loss(config: RunConfig) -> float:
    task = build_task(
        config.model,
        config.data,
        batch_size=config.train.batch_size,
        num_eval_batches=config.train.num_eval_batches,
        rank=0,
        num_workers=config.num_workers,
        seed=config.seed,
    )
    return task.evaluate(task.model)["eval_loss"]


@pytest.mark.parametrize(
    "overrides",
    [
        ("algorithm.name=diloco",),
        ("algorithm.name=dilocox", "train.precision=bf16", "data.tokenizer=bpe", "data.vocab_size=400"),
    ],
    ids=["diloco-fp32-bytes", "dilocox-bf16-bpe"],
)
def test_a_llama_trains_and_its_replicas_agree(
    overrides: tuple[str, ...], tmp_path: Path, tiny_hf: Callable[..., RunConfig]
) -> None:
    # Prepare
    config = tiny_hf("train.num_steps=12", "train.lr=0.003", *overrides)
    before = _initial_eval_loss(config)
    # Execute
    summary = launch(config, tmp_path / "run", mode="threads", progress=False)
    # Assert
    assert summary["final_eval_loss"] < before - 0.05
    assert len(set(summary["global_params_sha256"])) == 1
    assert summary["num_rounds"] == 3 and summary["bytes_sent_per_worker"] > 0
    assert all(math.isfinite(loss) for loss in worker_losses(tmp_path / "run"))


def test_bf16_changes_the_losses_but_keeps_fp32_weights(
    tmp_path: Path, tiny_hf: Callable[..., RunConfig]
) -> None:
    # Prepare
    config = tiny_hf("train.num_steps=4", "train.precision=bf16")
    task = build_task(
        config.model,
        config.data,
        batch_size=4,
        num_eval_batches=1,
        rank=0,
        num_workers=2,
        seed=0,
        precision="bf16",
    )
    x, y = next(task.batches)
    # Execute
    bf16_loss = task.loss(task.model, x, y)
    task.precision = "fp32"
    fp32_loss = task.loss(task.model, x, y)
    # Assert: same weights, a bf16 forward rounds differently, and the loss itself is fp32
    assert bf16_loss.dtype == torch.float32 and fp32_loss.dtype == torch.float32
    assert float(bf16_loss.detach()) != float(fp32_loss.detach())
    assert abs(float(bf16_loss.detach()) - float(fp32_loss.detach())) < 0.05
    assert all(p.dtype == torch.float32 for p in task.model.parameters())


def _jsonl(path: Path, count: int) -> Path:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    lines = [
        json.dumps({"body": " ".join(words[(i + j) % len(words)] for j in range(30)), "id": i})
        for i in range(count)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_resumed_local_dataset_run_continues_the_data_stream_exactly(
    tmp_path: Path, tiny_hf: Callable[..., RunConfig]
) -> None:
    # Prepare: a JSONL dataset, a checkpoint every round, the uninterrupted run
    data = _jsonl(tmp_path / "docs.jsonl", 300)
    sets = (
        "data.kind=local",
        f"data.path={json.dumps(str(data))}",
        "data.text_field=body",
        "checkpoint.every_rounds=1",
        "checkpoint.keep=10",
    )
    config = tiny_hf(*sets)
    full = launch(config, tmp_path / "full", mode="threads", progress=False)
    target = tmp_path / "resumed"
    (target / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "full" / "config.toml", target / "config.toml")
    shutil.copytree(
        tmp_path / "full" / "checkpoints" / "round_000001", target / "checkpoints" / "round_000001"
    )
    # Execute
    resumed = launch(config, target, mode="threads", progress=False, resume=True)
    # Assert: the checkpoint holds the exact read position (4 batches of 4 windows), and the resumed run
    # draws exactly the batches the uninterrupted one drew after it: same losses, same final weights
    found = find_latest(target, 2)
    assert found is not None
    state = load_worker_state(tmp_path / "full" / "checkpoints" / "round_000001", 1)["batches"]
    assert state["batches_drawn"] == 4 and state["epoch"] * state["num_windows"] + state["index"] == 16
    assert resumed["global_params_sha256"] == full["global_params_sha256"]
    assert worker_losses(target, 1)[-4:] == worker_losses(tmp_path / "full", 1)[-4:]
    assert any(r["kind"] == "resume" for r in read_records(target))


def test_export_loads_offline_with_farsyncs_logits_and_final_weights(
    tmp_path: Path, tiny_hf: Callable[..., RunConfig], capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a finished run with a BPE tokenizer and a checkpoint at its last round
    config = tiny_hf("data.tokenizer=bpe", "data.vocab_size=300", "checkpoint.every_rounds=1")
    summary = launch(config, tmp_path / "run", mode="threads", progress=False)
    # Execute
    code = cli.main(
        ["export", str(tmp_path / "run"), "--out", str(tmp_path / "hf"), "--max-shard-size", "100KB"]
    )
    # Assert: a sharded safetensors directory that transformers loads offline, holding the global weights
    assert code == 0
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    assert params_sha256([p.detach() for p in loaded.parameters()]) == summary["global_params_sha256"][0]
    # farsync's model with the global weights of the last round's checkpoint gives the same logits
    task = build_task(
        config.model, config.data, batch_size=2, num_eval_batches=1, rank=0, num_workers=2, seed=0
    )
    assert isinstance(task.model, HFCausalLM) and task.tokenizer is not None
    state = load_worker_state(tmp_path / "run" / "checkpoints" / "round_000002", 0)
    with torch.no_grad():
        for param, value in zip(
            task.model.parameters(), state["algorithm"]["outer"]["params"].values(), strict=True
        ):
            param.copy_(value)
    ids = torch.tensor([task.tokenizer.encode("def main():\n    return 0\n")])
    assert tokenizer(["def main():\n    return 0\n"])["input_ids"] == ids.tolist()
    task.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, task.model(ids), atol=1e-5, rtol=0)


def test_export_refuses_what_it_cannot_export(
    tmp_path: Path, tiny_hf: Callable[..., RunConfig], capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a GPT run directory and an HF run directory without final weights
    gpt = tmp_path / "gpt"
    gpt.mkdir()
    (gpt / "config.toml").write_text("[model]\nkind = 'gpt'\n")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.toml").write_text("[model]\nkind = 'hf'\n")
    # Execute
    codes = [
        cli.main(["export", str(d), "--out", str(tmp_path / "out")])
        for d in (gpt, unfinished, tmp_path / "none")
    ]
    # Assert
    errors = capsys.readouterr().err.strip().splitlines()
    assert codes == [2, 2, 2] and len(errors) == 3
    assert "only Hugging Face models" in errors[0]
    assert "no final weights" in errors[1]
    assert "config.toml" in errors[2]


def test_tensorboard_events_are_written_beside_metrics(
    tmp_path: Path, tiny_hf: Callable[..., RunConfig]
) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # Prepare
    config = tiny_hf("train.num_steps=4", 'logging.backends=["tensorboard"]')
    # Execute
    launch(config, tmp_path / "run", mode="threads", progress=False)
    # Assert: worker 0's step losses, as in metrics.jsonl
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    logged = [event.value for event in events.Scalars("step/loss")]
    assert logged == pytest.approx(worker_losses(tmp_path / "run"), rel=1e-6)
    assert "eval/eval_loss" in events.Tags()["scalars"]
