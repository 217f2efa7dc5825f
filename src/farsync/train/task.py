"""A worker's task: its model, its shard of the data, its loss and its evaluation.

This module turns the ``model`` and ``data`` config sections into objects a training loop needs, so the
loop itself (:mod:`farsync.train.loop`) never looks at what kind of model or data it trains.

Text runs read a corpus (``data.kind = "text"``: the embedded stdlib sources or ``data.path``) or local
files through ``datasets`` (``data.kind = "local"``, :mod:`farsync.data.local`), encoded by
``data.tokenizer`` (bytes, a BPE trained on the run's training text, or a local ``tokenizer.json``;
:mod:`farsync.data.tokenizer`). The model is farsync's byte-level GPT or, with ``model.kind = "hf"``, a
Hugging Face causal LM built from a local description (:mod:`farsync.models.hf`). :func:`text_data` does
the expensive part (tokenizer training, tokenizing) once per machine: it caches under
``$FARSYNC_CACHE_DIR`` (default ``~/.cache/farsync``), so :func:`check_task` in the launcher prepares
what every worker then reads.

``train.precision = "bf16"``: :meth:`Task.loss` and :meth:`Task.evaluate` run the forward pass under
``torch.autocast`` in bfloat16; the parameters (master weights), gradients and optimizer states stay fp32
and the cross-entropy is computed in fp32.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from farsync.config import ConfigError, DataConfig, ModelConfig
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
from farsync.data.corpus import TextCorpus
from farsync.data.local import (
    LocalDataError,
    LocalDataset,
    WindowBatches,
    load_local_dataset,
    read_local_texts,
)
from farsync.data.tokenizer import Tokenizer, TokenizerError, make_tokenizer, tokenize_corpus
from farsync.models import CNN, GPT, MLP, GPTConfig
from farsync.models.hf import HFModelError, build_hf_model, check_hf_model_spec

__all__ = [
    "MODEL_INIT_LOCK",
    "Task",
    "TextData",
    "build_task",
    "build_text_model",
    "check_batch_fits",
    "check_task",
    "text_data",
]

Batches = TokenBatches | ArrayBatches | WindowBatches

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
    precision: str = "fp32"
    """``train.precision``: ``"bf16"`` runs forward passes under bfloat16 autocast (fp32 weights)."""
    tokenizer: Tokenizer | None = None
    """Text tasks: the tokenizer the data was encoded with (exported beside a Hugging Face model)."""

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        """bfloat16 autocast on ``device`` when ``precision = "bf16"``, else nothing."""
        if self.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.autocast(x.device):
            logits = model(x)
        # fp32 cross-entropy whatever the forward's dtype (a no-op for fp32 logits).
        logits = logits.float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Mean loss over the held-out data (and accuracy for classification)."""
        was_training = model.training
        model.eval()
        total_loss, total_items, correct = 0.0, 0, 0
        device = next(model.parameters()).device
        for x, y in self.eval_data:
            x, y = x.to(device), y.to(device)
            with self.autocast(device):
                logits = model(x)
            flat = logits.float().reshape(-1, logits.shape[-1])
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


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


@dataclass
class TextData:
    """A text run's tokenizer and its tokens before they are split across workers (one of the two sources)."""

    tokenizer: Tokenizer
    corpus: TextCorpus | None = None
    """``data.kind = "text"``: the corpus, its files encoded by :attr:`tokenizer`."""
    dataset: LocalDataset | None = None
    """``data.kind = "local"``: the tokenized dataset packed into windows."""


def _corpus(data: DataConfig) -> TextCorpus:
    if data.path:
        return load_text_files(data.path, val_percent=data.val_percent, max_bytes=data.max_bytes)
    return load_stdlib_corpus(val_percent=data.val_percent, max_bytes=data.max_bytes)


def _tokenizer(data: DataConfig, training_texts: Callable[[], list[str]]) -> Tokenizer:
    """``data.tokenizer``; ``training_texts()`` gives the texts a BPE is trained on (only called for bpe)."""
    try:
        if data.tokenizer == "bpe":
            return make_tokenizer("bpe", vocab_size=data.vocab_size, texts=training_texts())
        return make_tokenizer(data.tokenizer)
    except TokenizerError as error:
        raise ConfigError("data.tokenizer", data.tokenizer, _one_line(error)) from None


def text_data(data: DataConfig, context_length: int, num_workers: int, seed: int) -> TextData:
    """The tokenizer and tokens of a text run (``data.kind`` "text" or "local"), from the cache when there.

    A BPE tokenizer is trained on the training files of the corpus (kind text) or on every document of the
    local dataset (kind local). Raises :class:`ConfigError` naming ``data.path`` or ``data.tokenizer``.
    """
    if data.kind == "local":
        local = dict(data_format=data.format, text_field=data.text_field)
        try:
            tokenizer = _tokenizer(data, lambda: read_local_texts(data.path, **local))
            dataset = load_local_dataset(
                data.path,
                tokenizer,
                context_length,
                val_fraction=data.val_percent / 100,
                split_seed=seed,
                num_workers=num_workers,
                **local,
            )
        except LocalDataError as error:
            raise ConfigError("data.path", data.path, _one_line(error)) from None
        return TextData(tokenizer, dataset=dataset)
    corpus = _corpus(data)

    def training_files() -> list[str]:
        return [bytes(tokens.numpy()).decode("utf-8", errors="replace") for _, tokens in corpus.train_files]

    tokenizer = _tokenizer(data, training_files)
    if data.tokenizer != "bytes":
        corpus = tokenize_corpus(corpus, tokenizer)
    return TextData(tokenizer, corpus=corpus)


def _text_task(
    model_cfg: ModelConfig,
    data: DataConfig,
    batch_size: int,
    num_eval_batches: int,
    rank: int,
    num_parts: int,
    seed: int,
) -> tuple[Batches, list[tuple[torch.Tensor, torch.Tensor]], int, int, Tokenizer]:
    context = model_cfg.context_length
    prepared = text_data(data, context, num_parts, seed)
    if prepared.dataset is not None:
        windows = prepared.dataset.train_batches(rank, num_parts, batch_size, seed=seed * 7919 + rank)
        evaluation = list(prepared.dataset.eval_batches(batch_size, num_eval_batches))
        return windows, evaluation, batch_size * context, windows.num_windows * context, prepared.tokenizer
    assert prepared.corpus is not None
    corpus = prepared.corpus
    scheme: Literal["iid", "dirichlet"] = "dirichlet" if data.partition == "dirichlet" else "iid"
    shards = shard_text(corpus, num_parts, scheme, alpha=data.alpha, seed=seed)
    shard = shards[rank]
    batches = TokenBatches(shard, batch_size, context, seed=seed * 7919 + rank)
    evaluation = list(eval_batches(corpus.val_tokens, batch_size, context, num_eval_batches))
    return batches, evaluation, batch_size * context, shard.numel(), prepared.tokenizer


def _hf_key(model_cfg: ModelConfig) -> tuple[str, str]:
    return (
        ("model.hf_path", model_cfg.hf_path)
        if model_cfg.hf_path
        else ("model.architecture", model_cfg.architecture)
    )


def build_text_model(model_cfg: ModelConfig, vocab_size: int, seed: int) -> nn.Module:
    """The configured language model, initialised from ``seed`` (farsync's GPT, or a Hugging Face LM)."""
    if model_cfg.kind != "hf":
        torch.manual_seed(seed)
        return build_model(model_cfg)
    try:
        return build_hf_model(
            None if model_cfg.hf_path else model_cfg.architecture,
            None if model_cfg.hf_path else model_cfg.hf_size(),
            model_cfg.hf_path or None,
            vocab_size,
            model_cfg.context_length,
            seed=seed,
        )
    except HFModelError as error:
        raise ConfigError(*_hf_key(model_cfg), _one_line(error)) from None


def partition_labels(labels: np.ndarray[Any, Any], num_parts: int, data: DataConfig, seed: int) -> list[Any]:
    if data.partition == "iid":
        return iid(len(labels), num_parts, seed)
    if data.partition == "dirichlet":
        return dirichlet(labels, num_parts, data.alpha, seed)
    return pathological(labels, num_parts, 2, seed)


def check_task(
    data: DataConfig,
    *,
    batch_size: int,
    num_workers: int,
    seed: int,
    context_length: int = 0,
    model: ModelConfig | None = None,
) -> None:
    """Raises ConfigError before anything starts when the data cannot be loaded or split so that every
    worker's shard holds one batch (classification) or one training window of ``context_length + 1``
    tokens (text, when ``context_length`` or ``model`` is given; the validation tokens must hold one window
    too), or when ``model`` (``kind = "hf"``) cannot be built for the tokenizer's vocabulary.

    For text with a BPE tokenizer or local files this trains the tokenizer and tokenizes the data, into the
    cache every worker then reads (see the module docstring). ``num_workers`` is the number of data shards.
    """
    if model is not None and model.kind in ("gpt", "hf"):
        context_length = model.context_length
    if data.kind in ("text", "local"):
        if context_length > 0:
            _check_text(data, num_workers, seed, context_length, model)
        return
    try:
        dataset = load_digits_split(seed=seed) if data.kind == "digits" else load_npz(data.path, seed=seed)
    except (ValueError, OSError) as error:
        raise ConfigError("data.path", data.path, str(error)) from None
    parts = partition_labels(dataset.y_train.numpy(), num_workers, data, seed)
    check_batch_fits(data, batch_size, num_workers, [len(p) for p in parts])


def _check_text(
    data: DataConfig, num_workers: int, seed: int, context_length: int, model: ModelConfig | None
) -> None:
    where = data.path or "the embedded corpus"
    try:
        prepared = text_data(data, context_length, num_workers, seed)
    except (ValueError, OSError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(
            "data.path", data.path, f"{where} cannot be split across {num_workers} workers: {error}"
        ) from None
    if model is not None and model.kind == "hf":
        try:
            check_hf_model_spec(
                None if model.hf_path else model.architecture,
                None if model.hf_path else model.hf_size(),
                model.hf_path or None,
                prepared.tokenizer.vocab_size,
                context_length,
            )
        except HFModelError as error:
            raise ConfigError(*_hf_key(model), _one_line(error)) from None
    if prepared.corpus is None:
        return  # load_local_dataset checked one training window per worker and the validation split
    corpus = prepared.corpus
    unit = "bytes" if data.tokenizer == "bytes" else "tokens"
    try:
        scheme: Literal["iid", "dirichlet"] = "dirichlet" if data.partition == "dirichlet" else "iid"
        shards = shard_text(corpus, num_workers, scheme, alpha=data.alpha, seed=seed)
    except (ValueError, OSError) as error:
        raise ConfigError(
            "data.path", data.path, f"{where} cannot be split across {num_workers} workers: {error}"
        ) from None
    need = context_length + 1
    smallest = min(int(shard.numel()) for shard in shards)
    if smallest < need:
        raise ConfigError(
            "data.path",
            data.path,
            f"{where} is too small for {num_workers} workers: the smallest shard holds {smallest} {unit}, "
            f"a training window needs {need} (model.context_length + 1)",
        )
    if corpus.val_tokens.numel() < need:
        raise ConfigError(
            "data.path",
            data.path,
            f"{where} leaves {corpus.val_tokens.numel()} validation {unit}, an evaluation window needs {need}",
        )


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
    precision: str = "fp32",
) -> Task:
    """The model (initialised identically on every worker from ``seed``) and ``rank``'s data shard.

    ``flip_labels``: this worker is a simulated label-flipping attacker (``byzantine.attack = "label_flip"``)
    and trains on ``num_classes - 1 - y`` (classification data only). ``precision``: ``train.precision``.
    """
    if flip_labels and data.kind in ("text", "local"):
        raise ConfigError(
            "byzantine.attack", "label_flip", "needs classification data (data.kind 'digits' or 'npz')"
        )
    if data.kind in ("text", "local"):
        batches, evaluation, tokens_per_step, num_samples, tokenizer = _text_task(
            model_cfg, data, batch_size, num_eval_batches, rank, num_workers, seed
        )
        with MODEL_INIT_LOCK:
            model = build_text_model(model_cfg, tokenizer.vocab_size, seed)
        return Task(
            model, batches, "text", evaluation, tokens_per_step, num_samples, precision, tokenizer=tokenizer
        )
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
    return Task(
        model, batches, "classification", [(test_x, dataset.y_test)], batch_size, len(index), precision
    )


def iterate(batches: Batches) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    return iter(batches)
