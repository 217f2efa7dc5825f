"""A worker's task: its model, its shard of the data, its loss and its evaluation.

This module turns the ``model`` and ``data`` config sections into objects a training loop needs, so the
loop itself (:mod:`farsync.train.loop`) never looks at what kind of model or data it trains.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from farsync.config import DataConfig, ModelConfig
from farsync.data import (
    ArrayBatches,
    TokenBatches,
    dirichlet,
    eval_batches,
    iid,
    load_digits_split,
    load_npz,
    load_stdlib_corpus,
    load_text_files,
    pathological,
    shard_text,
)
from farsync.data.classification import flip_labels as flipped_labels
from farsync.models import CNN, GPT, MLP, GPTConfig

__all__ = ["MODEL_INIT_LOCK", "Task", "build_task", "check_batch_fits", "check_task"]

Batches = TokenBatches | ArrayBatches

MODEL_INIT_LOCK = threading.Lock()
"""Held while seeding torch's global RNG and initialising a model: workers run as threads share that RNG,
and without the lock one thread's init draws interleave with another's, so replicas start apart."""


@dataclass
class Task:
    """Everything model- and data-specific one worker needs."""

    model: nn.Module
    batches: Batches
    kind: str
    eval_data: list[tuple[torch.Tensor, torch.Tensor]]
    tokens_per_step: int
    num_samples: int
    """Items in this worker's shard (FedAvg weights by it)."""

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Mean loss over the held-out data (and accuracy for classification)."""
        was_training = model.training
        model.eval()
        total_loss, total_items, correct = 0.0, 0, 0
        for x, y in self.eval_data:
            logits = model(x)
            flat = logits.reshape(-1, logits.shape[-1])
            total_loss += float(F.cross_entropy(flat, y.reshape(-1), reduction="sum"))
            total_items += y.numel()
            correct += int((flat.argmax(-1) == y.reshape(-1)).sum())
        model.train(was_training)
        result = {"eval_loss": total_loss / max(total_items, 1)}
        if self.kind != "text":
            result["eval_accuracy"] = correct / max(total_items, 1)
        if not math.isfinite(result["eval_loss"]):
            result["eval_loss"] = float("inf")
        return result


def check_batch_fits(data: DataConfig, batch_size: int, num_workers: int, shard_sizes: list[int]) -> None:
    """Raises ConfigError-like ValueError when a shard is smaller than a batch."""
    smallest = min(shard_sizes)
    if batch_size > smallest:
        from farsync.config import ConfigError

        raise ConfigError(
            "train.batch_size",
            batch_size,
            f"must be <= the smallest worker shard ({smallest} examples with {num_workers} workers)",
        )


def build_model(config: ModelConfig, num_features: int = 64, num_classes: int = 10) -> nn.Module:
    if config.kind == "gpt":
        return GPT(
            GPTConfig(
                num_layers=config.num_layers,
                width=config.width,
                num_heads=config.num_heads,
                context_length=config.context_length,
            )
        )
    if config.kind == "mlp":
        return MLP(
            in_features=num_features, hidden=(config.width, config.width // 2), num_classes=num_classes
        )
    return CNN(num_classes=num_classes)


def _text_task(
    model_cfg: ModelConfig,
    data: DataConfig,
    batch_size: int,
    num_eval_batches: int,
    rank: int,
    num_parts: int,
    seed: int,
) -> tuple[Batches, list[tuple[torch.Tensor, torch.Tensor]], int, int]:
    if data.path:
        corpus = load_text_files(data.path, val_percent=data.val_percent, max_bytes=data.max_bytes)
    else:
        corpus = load_stdlib_corpus(val_percent=data.val_percent, max_bytes=data.max_bytes)
    scheme: Literal["iid", "dirichlet"] = "dirichlet" if data.partition == "dirichlet" else "iid"
    shards = shard_text(corpus, num_parts, scheme, alpha=data.alpha, seed=seed)
    context = model_cfg.context_length
    shard = shards[rank]
    batches = TokenBatches(shard, batch_size, context, seed=seed * 7919 + rank)
    evaluation = list(eval_batches(corpus.val_tokens, batch_size, context, num_eval_batches))
    return batches, evaluation, batch_size * context, shard.numel()


def partition_labels(labels: np.ndarray[Any, Any], num_parts: int, data: DataConfig, seed: int) -> list[Any]:
    if data.partition == "iid":
        return iid(len(labels), num_parts, seed)
    if data.partition == "dirichlet":
        return dirichlet(labels, num_parts, data.alpha, seed)
    return pathological(labels, num_parts, 2, seed)


def check_task(data: DataConfig, *, batch_size: int, num_workers: int, seed: int) -> None:
    """Raises ConfigError before anything starts when a worker's shard cannot hold one batch.

    Classification data only (cheap to load); text windows are drawn with replacement from each shard.
    """
    if data.kind == "text":
        return
    dataset = load_digits_split(seed=seed) if data.kind == "digits" else load_npz(data.path, seed=seed)
    parts = partition_labels(dataset.y_train.numpy(), num_workers, data, seed)
    check_batch_fits(data, batch_size, num_workers, [len(p) for p in parts])


def build_task(
    model_cfg: ModelConfig,
    data: DataConfig,
    *,
    batch_size: int,
    num_eval_batches: int,
    rank: int,
    num_workers: int,
    seed: int,
    flip_labels: bool = False,
) -> Task:
    """The model (initialised identically on every worker from ``seed``) and ``rank``'s data shard.

    ``flip_labels``: this worker is a simulated label-flipping attacker (``byzantine.attack = "label_flip"``)
    and trains on ``num_classes - 1 - y`` (classification data only).
    """
    if flip_labels and data.kind == "text":
        from farsync.config import ConfigError

        raise ConfigError(
            "byzantine.attack", "label_flip", "needs classification data (data.kind 'digits' or 'npz')"
        )
    if data.kind == "text":
        batches, evaluation, tokens_per_step, num_samples = _text_task(
            model_cfg, data, batch_size, num_eval_batches, rank, num_workers, seed
        )
        with MODEL_INIT_LOCK:
            torch.manual_seed(seed)
            model = build_model(model_cfg)
        return Task(model, batches, "text", evaluation, tokens_per_step, num_samples)
    dataset = load_digits_split(seed=seed) if data.kind == "digits" else load_npz(data.path, seed=seed)
    parts = partition_labels(dataset.y_train.numpy(), num_workers, data, seed)
    check_batch_fits(data, batch_size, num_workers, [len(p) for p in parts])
    index = torch.as_tensor(parts[rank], dtype=torch.long)
    x, y = dataset.x_train[index], dataset.y_train[index]
    if flip_labels:
        y = flipped_labels(y, dataset.num_classes)
    if model_cfg.kind == "cnn":
        x = x.reshape(-1, 1, 8, 8)
        test_x = dataset.x_test.reshape(-1, 1, 8, 8)
    else:
        test_x = dataset.x_test
    batches = ArrayBatches(x, y, batch_size, seed=seed * 7919 + rank)
    with MODEL_INIT_LOCK:
        torch.manual_seed(seed)
        model = build_model(model_cfg, dataset.num_features, dataset.num_classes)
    return Task(model, batches, "classification", [(test_x, dataset.y_test)], batch_size, len(index))


def iterate(batches: Batches) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    return iter(batches)
