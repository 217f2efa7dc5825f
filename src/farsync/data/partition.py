"""Pure functions that split a dataset's items among workers.

This module owns the data-heterogeneity knobs: IID splits, label-skewed Dirichlet splits
(Hsu et al. 2019, "Measuring the Effects of Non-Identical Data Distribution"), the pathological
shard split of McMahan et al. 2017 ("Communication-Efficient Learning of Deep Networks from
Decentralized Data"), and their application to byte corpora. Every partitioner returns one sorted
``np.ndarray`` of item indices per part; together they cover every item exactly once.
"""

from __future__ import annotations

import zlib
from typing import Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from farsync.data.corpus import TextCorpus

__all__ = ["TextScheme", "dirichlet", "file_class", "iid", "pathological", "shard_text"]

TextScheme = Literal["iid", "dirichlet"]

IndexArray = NDArray[np.int64]


def _check_parts(num_items: int, num_parts: int) -> None:
    if num_parts < 1:
        raise ValueError(f"num_parts must be >= 1, got {num_parts}")
    if num_parts > num_items:
        raise ValueError(f"cannot split {num_items} items into {num_parts} parts (more parts than items)")


def _check_labels(labels: NDArray[np.integer] | NDArray[np.int64]) -> NDArray[np.int64]:
    array = np.asarray(labels)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got shape {array.shape} dtype {array.dtype}")
    return array.astype(np.int64)


def iid(num_items: int, num_parts: int, seed: int) -> list[IndexArray]:
    """Shuffle ``range(num_items)`` and cut it into ``num_parts`` parts whose sizes differ by at most one."""
    _check_parts(num_items, num_parts)
    order = np.random.default_rng(seed).permutation(num_items).astype(np.int64)
    return [np.sort(part) for part in np.array_split(order, num_parts)]


def dirichlet(
    labels: NDArray[np.integer] | NDArray[np.int64],
    num_parts: int,
    alpha: float,
    seed: int,
    min_size: int = 1,
    max_attempts: int = 1000,
) -> list[IndexArray]:
    """Label-skewed split: each class's items are divided among parts in proportions ~ Dir(alpha).

    Small ``alpha`` concentrates each class on few parts; large ``alpha`` approaches IID. The draw is
    repeated until every part holds at least ``min_size`` items; ``RuntimeError`` after ``max_attempts``.
    """
    label_array = _check_labels(labels)
    _check_parts(label_array.size, num_parts)
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if min_size * num_parts > label_array.size:
        raise ValueError(f"min_size={min_size} x num_parts={num_parts} exceeds {label_array.size} items")
    rng = np.random.default_rng(seed)
    class_members = [np.flatnonzero(label_array == value) for value in np.unique(label_array)]
    for _ in range(max_attempts):
        parts: list[list[IndexArray]] = [[] for _ in range(num_parts)]
        for members in class_members:
            shuffled = rng.permutation(members)
            proportions = rng.dirichlet(np.full(num_parts, alpha))
            cuts = (np.cumsum(proportions)[:-1] * shuffled.size).astype(np.int64)
            for part, piece in zip(parts, np.split(shuffled, cuts), strict=True):
                part.append(piece)
        result = [np.sort(np.concatenate(pieces)).astype(np.int64) for pieces in parts]
        if min(part.size for part in result) >= min_size:
            return result
    raise RuntimeError(
        f"dirichlet split found no draw with every part >= {min_size} items after {max_attempts} attempts "
        f"(num_parts={num_parts}, alpha={alpha}, items={label_array.size}); raise alpha or lower min_size"
    )


def pathological(
    labels: NDArray[np.integer] | NDArray[np.int64], num_parts: int, shards_per_part: int = 2, seed: int = 0
) -> list[IndexArray]:
    """McMahan et al. (2017) shard split: sort by label, cut into equal shards, deal shards at random.

    Each part gets ``shards_per_part`` shards, so it sees at most that many labels when every shard
    lies within one label (class sizes divisible by the shard size); a shard straddling a label
    boundary adds one more.
    """
    label_array = _check_labels(labels)
    if shards_per_part < 1:
        raise ValueError(f"shards_per_part must be >= 1, got {shards_per_part}")
    _check_parts(label_array.size, num_parts)
    num_shards = num_parts * shards_per_part
    if num_shards > label_array.size:
        raise ValueError(
            f"{num_parts} parts x {shards_per_part} shards = {num_shards} shards exceeds {label_array.size} items"
        )
    rng = np.random.default_rng(seed)
    # Shuffle before the stable sort so the order inside each label is random, not the input order.
    shuffled = rng.permutation(label_array.size)
    by_label = shuffled[np.argsort(label_array[shuffled], kind="stable")].astype(np.int64)
    shards = np.array_split(by_label, num_shards)
    dealt = rng.permutation(num_shards).reshape(num_parts, shards_per_part)
    return [np.sort(np.concatenate([shards[s] for s in row])) for row in dealt]


def file_class(relpath: str, num_classes: int) -> int:
    """A file's class for text skew: ``crc32`` of its top-level package or module name, mod ``num_classes``."""
    top_level = relpath.split("/", 1)[0].removesuffix(".py")
    return zlib.crc32(top_level.encode("utf-8")) % num_classes


def shard_text(
    corpus: TextCorpus,
    num_parts: int,
    scheme: TextScheme = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    chunk_size: int = 4096,
    num_classes: int = 10,
) -> list[Tensor]:
    """Split the training bytes into one 1-D ``uint8`` shard per worker.

    Each training file is cut into ``chunk_size``-byte chunks (the last one per file may be shorter;
    chunks never cross files). ``"iid"`` deals chunks uniformly at random, so every worker sees a
    similar mix. ``"dirichlet"`` labels each chunk with its file's :func:`file_class` and applies
    :func:`dirichlet`, so workers see different parts of the code base. A shard is its chunks
    concatenated in corpus order.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    chunks: list[Tensor] = []
    chunk_labels: list[int] = []
    for relpath, tokens in corpus.train_files:
        label = file_class(relpath, num_classes)
        for piece in torch.split(tokens, chunk_size):
            chunks.append(piece)
            chunk_labels.append(label)
    if scheme == "iid":
        parts = iid(len(chunks), num_parts, seed)
    elif scheme == "dirichlet":
        parts = dirichlet(np.asarray(chunk_labels, dtype=np.int64), num_parts, alpha, seed)
    else:
        raise ValueError(f"scheme must be one of 'iid', 'dirichlet', got {scheme!r}")
    return [torch.cat([chunks[int(i)] for i in part]) for part in parts]
