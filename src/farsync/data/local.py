"""Local datasets: text, JSONL and Parquet files read with ``datasets``, tokenized once and cached.

This module owns turning local files into training windows for a language model:

1. :func:`resolve_data_files` - a file, a directory (searched recursively, hidden entries skipped) or a
   glob, of one format: ``"text"`` (``.txt``, ``.md``, ``.py``, ``.text``; each file is one document),
   ``"json"`` (``.jsonl`` / ``.json``, one document per record, in the ``text_field`` column) or
   ``"parquet"`` (``.parquet``, same).
2. :func:`tokenize_local_dataset` - loads them with ``datasets.load_dataset("text" | "json" | "parquet",
   data_files=...)`` (packaged builders and local files only, ``local_files_only=True``: never a hub name),
   encodes every document with a :class:`~farsync.data.tokenizer.Tokenizer`, puts the tokenizer's end-of-text
   id between documents (none for bytes, so byte ids equal :mod:`farsync.data.corpus`'s raw bytes for
   ``\\n``-terminated UTF-8 text), and caches the 1-D token array as ``.npy`` keyed by the files' resolved
   paths, sizes and modification times, the tokenizer's identity, the format and the text field.
3. :func:`load_local_dataset` - packs the tokens into windows of ``context_length + 1`` tokens with stride
   ``context_length`` (so every token but the first is a target exactly once, as in
   :func:`farsync.data.batches.eval_batches`), and holds out a deterministic, seeded ``val_fraction`` of the
   windows for validation.
4. :meth:`LocalDataset.train_batches` - the training windows of one worker (``rank`` of ``num_workers``,
   every worker gets the same number) drawn by :class:`WindowBatches`.

:class:`WindowBatches` yields the same ``(x, y)`` int64 ``[batch_size, context_length]`` pairs as
:class:`farsync.data.batches.TokenBatches`, but reads each window exactly once per epoch (shuffled) instead
of sampling start offsets with replacement, so its ``state_dict`` is an exact read position (seed, epoch,
index) and a resumed run neither repeats nor skips a window. ``TokenBatches`` is not reused because it
samples with replacement from one contiguous shard.

Problems raise :class:`LocalDataError` (a ``ValueError``) naming the path or setting;
:func:`check_local_dataset` is the cheap check for a launcher (it reads no more than a line or a schema per
file). ``datasets`` is an optional dependency (``pip install farsync[hf]``), imported only when loading.
"""

from __future__ import annotations

import glob
import hashlib
import importlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from farsync.data.tokenizer import Tokenizer, default_cache_dir

__all__ = [
    "DATA_FORMATS",
    "SUFFIX_FORMATS",
    "LocalDataError",
    "LocalDataFiles",
    "LocalDataset",
    "WindowBatches",
    "check_local_dataset",
    "load_local_dataset",
    "read_local_texts",
    "resolve_data_files",
    "tokenize_local_dataset",
]

logger = logging.getLogger(__name__)

DATA_FORMATS: tuple[str, ...] = ("text", "json", "parquet")
"""Formats accepted besides ``"auto"`` (the ``datasets`` packaged builder names)."""

SUFFIX_FORMATS: dict[str, str] = {
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".py": "text",
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
}
"""File suffixes picked up in a directory, and the format each implies for ``data_format="auto"``."""

_CACHE_VERSION = 1
_ENCODE_BATCH = 256
_GLOB_CHARS = frozenset("*?[")


class LocalDataError(ValueError):
    """A local dataset that cannot be used; the message names the path or setting and what is expected."""


@dataclass(frozen=True)
class LocalDataFiles:
    """The files a dataset path resolved to."""

    data_format: str
    """One of :data:`DATA_FORMATS`."""
    files: tuple[Path, ...]
    """Resolved paths, in reading order (sorted by relative path in a directory, by path for a glob)."""
    text_field: str
    """Column holding the text (always ``"text"`` for the text format)."""

    @property
    def total_bytes(self) -> int:
        """Sum of the files' sizes on disk."""
        return sum(path.stat().st_size for path in self.files)

    def identity(self) -> list[list[Any]]:
        """``[path, size, mtime_ns]`` per file: what the token cache key is built from."""
        return [[str(path), path.stat().st_size, path.stat().st_mtime_ns] for path in self.files]


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _pick_format(files: list[Path], data_format: str, source: str) -> str:
    if data_format != "auto":
        return data_format
    formats = sorted({SUFFIX_FORMATS.get(path.suffix.lower(), "text") for path in files})
    if len(formats) > 1:
        raise LocalDataError(
            f"dataset path {source!r} mixes formats ({', '.join(formats)}); set the format to one of "
            f"{', '.join(DATA_FORMATS)} or point at files of one format"
        )
    return formats[0]


def resolve_data_files(
    path: str | os.PathLike[str], data_format: str = "auto", text_field: str = "text"
) -> LocalDataFiles:
    """The files behind ``path`` (a file, a directory or a glob) and their format.

    A directory contributes its non-hidden files with a suffix in :data:`SUFFIX_FORMATS` (restricted to
    ``data_format`` when that is not ``"auto"``); a single file or a glob match is taken whatever its suffix
    (``"auto"`` treats an unknown suffix as text). Raises :class:`LocalDataError` for a missing path, no
    matching files, mixed formats or an unknown format.
    """
    if data_format != "auto" and data_format not in DATA_FORMATS:
        raise LocalDataError(f"unknown data format {data_format!r}; allowed: auto, {', '.join(DATA_FORMATS)}")
    if not text_field:
        raise LocalDataError("text_field must be a non-empty column name")
    source = os.fspath(path)
    expanded = Path(source).expanduser()
    if _GLOB_CHARS & set(source) and not expanded.exists():
        matches = sorted(glob.glob(str(expanded), recursive=True))
        files = [Path(match).resolve() for match in matches if Path(match).is_file()]
        if not files:
            raise LocalDataError(f"dataset glob {source!r} matches no files")
    elif expanded.is_file():
        files = [expanded.resolve()]
    elif expanded.is_dir():
        root = expanded.resolve()
        wanted = {suffix for suffix, fmt in SUFFIX_FORMATS.items() if data_format in ("auto", fmt)}
        # Sorted by relative POSIX path, the order farsync.data.corpus.load_text_files reads a directory in.
        files = sorted(
            (
                candidate
                for candidate in root.rglob("*")
                if candidate.suffix.lower() in wanted
                and candidate.is_file()
                and not _is_hidden(candidate, root)
            ),
            key=lambda candidate: candidate.relative_to(root).as_posix(),
        )
        if not files:
            raise LocalDataError(
                f"dataset directory {source!r} holds no files with suffix {', '.join(sorted(wanted))}"
            )
    else:
        raise LocalDataError(
            f"dataset path {source!r} does not exist; expected a local file, directory or glob "
            "(hub dataset names are not supported)"
        )
    chosen = _pick_format(files, data_format, source)
    return LocalDataFiles(
        data_format=chosen, files=tuple(files), text_field="text" if chosen == "text" else text_field
    )


def _first_json_record(path: Path) -> Any:
    with open(path, encoding="utf-8", errors="replace") as stream:
        for line in stream:
            if line.strip():
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    return None  # a pretty-printed .json file: left to datasets to parse
    return None


def _check_columns(files: LocalDataFiles) -> None:
    field = files.text_field
    for path in files.files:
        if files.data_format == "json":
            record = _first_json_record(path)
            if isinstance(record, dict) and field not in record:
                raise LocalDataError(
                    f"JSON records in {str(path)!r} have no field {field!r} (fields: {', '.join(sorted(record))}); "
                    "set the text field to the column holding the text"
                )
        elif files.data_format == "parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:  # pragma: no cover - pyarrow comes with datasets
                return
            try:
                names = pq.read_schema(path).names
            except Exception as error:  # pyarrow raises ArrowInvalid and OSError subclasses
                raise LocalDataError(f"{str(path)!r} is not a readable Parquet file ({error})") from error
            if field not in names:
                raise LocalDataError(
                    f"Parquet file {str(path)!r} has no column {field!r} (columns: {', '.join(names)}); "
                    "set the text field to the column holding the text"
                )


def check_local_dataset(
    path: str | os.PathLike[str], data_format: str = "auto", text_field: str = "text"
) -> LocalDataFiles:
    """Cheap launcher check: the path resolves to non-empty files of one format holding ``text_field``.

    Reads at most the first record of each JSONL file and the schema of each Parquet file. Whether there
    are enough windows for every worker is only known after tokenizing (:func:`load_local_dataset`).
    """
    files = resolve_data_files(path, data_format, text_field)
    if files.total_bytes == 0:
        raise LocalDataError(f"dataset path {os.fspath(path)!r} is empty (all its files have 0 bytes)")
    _check_columns(files)
    return files


def _datasets() -> ModuleType:
    try:
        return importlib.import_module("datasets")
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        raise LocalDataError("local datasets need the datasets library: pip install farsync[hf]") from error


def _token_dtype(vocab_size: int) -> np.dtype[Any]:
    if vocab_size <= 256:
        return np.dtype(np.uint8)
    if vocab_size <= 2**15:
        return np.dtype(np.int16)
    return np.dtype(np.int32)


def _cache_key(files: LocalDataFiles, tokenizer: Tokenizer) -> str:
    description = {
        "version": _CACHE_VERSION,
        "format": files.data_format,
        "text_field": files.text_field,
        "files": files.identity(),
        "tokenizer": tokenizer.identity,
        "eos_id": tokenizer.eos_id,
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode("utf-8")).hexdigest()[:24]


def _load_rows(files: LocalDataFiles, cache_dir: Path) -> Any:
    datasets = _datasets()
    kwargs: dict[str, Any] = {}
    if files.data_format == "text":
        kwargs = {"sample_by": "document", "keep_linebreaks": True}
    try:
        dataset = datasets.load_dataset(
            files.data_format,
            data_files=[str(path) for path in files.files],
            split="train",
            cache_dir=str(cache_dir / "hf_datasets"),
            download_config=datasets.DownloadConfig(local_files_only=True),
            **kwargs,
        )
    except Exception as error:  # datasets wraps parse errors in several exception types
        raise LocalDataError(
            f"datasets could not read the {files.data_format} files {', '.join(str(p) for p in files.files[:3])}"
            f"{' ...' if len(files.files) > 3 else ''} ({type(error).__name__}: {error})"
        ) from error
    if files.text_field not in dataset.column_names:
        raise LocalDataError(
            f"the {files.data_format} dataset has no field {files.text_field!r} "
            f"(fields: {', '.join(dataset.column_names)}); set the text field to the column holding the text"
        )
    return dataset


def _encode_rows(
    dataset: Any, field: str, tokenizer: Tokenizer, dtype: np.dtype[Any]
) -> np.ndarray[Any, Any]:
    pieces: list[np.ndarray[Any, Any]] = []
    eos = tokenizer.eos_id
    row = 0
    for batch in dataset.select_columns([field]).iter(batch_size=_ENCODE_BATCH):
        texts = batch[field]
        for offset, text in enumerate(texts):
            if not isinstance(text, str):
                raise LocalDataError(
                    f"record {row + offset} has a {type(text).__name__} in field {field!r}; expected text"
                )
        row += len(texts)
        for ids in tokenizer.encode_batch([text for text in texts if text]):
            pieces.append(np.asarray(ids, dtype=dtype))
            if eos is not None:
                pieces.append(np.asarray([eos], dtype=dtype))
    if not pieces:
        return np.empty(0, dtype=dtype)
    return np.concatenate(pieces)


def read_local_texts(
    path: str | os.PathLike[str],
    *,
    data_format: str = "auto",
    text_field: str = "text",
    cache_dir: str | os.PathLike[str] | None = None,
) -> list[str]:
    """Every non-empty document of a local dataset, in file and record order (to train a tokenizer on).

    Reads through ``datasets`` as :func:`tokenize_local_dataset` does; raises :class:`LocalDataError` for an
    unusable path or a missing or non-text field.
    """
    files = check_local_dataset(path, data_format, text_field)
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "datasets"
    dataset = _load_rows(files, directory)
    texts: list[str] = []
    for batch in dataset.select_columns([files.text_field]).iter(batch_size=_ENCODE_BATCH):
        for text in batch[files.text_field]:
            if not isinstance(text, str):
                raise LocalDataError(
                    f"a record has a {type(text).__name__} in field {files.text_field!r}; expected text"
                )
            if text:
                texts.append(text)
    return texts


def _save_atomically(path: Path, array: np.ndarray[Any, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.save(stream, array)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def tokenize_local_dataset(
    path: str | os.PathLike[str],
    tokenizer: Tokenizer,
    *,
    data_format: str = "auto",
    text_field: str = "text",
    cache_dir: str | os.PathLike[str] | None = None,
) -> Tensor:
    """All documents' tokens concatenated in file and record order, as a 1-D tensor (cached on disk).

    The array is stored as ``<cache_dir>/tokens-<key>.npy`` (``cache_dir`` defaults to
    ``default_cache_dir() / "datasets"``; ``datasets``' own Arrow cache goes to ``<cache_dir>/hf_datasets``).
    A launcher can call this once before starting workers so that they all find the cache. The dtype is
    ``uint8`` for at most 256 ids, ``int16`` up to 32768, ``int32`` above. Raises :class:`LocalDataError`
    for an unusable path, a missing text field, or no text at all.
    """
    files = check_local_dataset(path, data_format, text_field)
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "datasets"
    cached = directory / f"tokens-{_cache_key(files, tokenizer)}.npy"
    if cached.is_file():
        logger.info("reusing cached tokens %s", cached)
        tokens = np.load(cached)
    else:
        dataset = _load_rows(files, directory)
        tokens = _encode_rows(dataset, files.text_field, tokenizer, _token_dtype(tokenizer.vocab_size))
        if tokens.size == 0:
            raise LocalDataError(f"dataset path {os.fspath(path)!r} holds no text (every document is empty)")
        _save_atomically(cached, tokens)
        logger.info("tokenized %d files into %d tokens, cached at %s", len(files.files), tokens.size, cached)
    return torch.from_numpy(np.ascontiguousarray(tokens))


def _derived_seed(seed: int, epoch: int) -> int:
    digest = hashlib.sha256(f"farsync-windows:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class WindowBatches(Iterator[tuple[Tensor, Tensor]]):
    """Infinite ``(x, y)`` int64 ``[batch_size, context_length]`` batches from fixed windows, epoch by epoch.

    ``windows`` is ``[num_windows, context_length + 1]``; ``y`` is ``x`` shifted left by one token. Each
    epoch visits every window exactly once in an order drawn from ``(seed, epoch)``; a batch that crosses
    an epoch boundary is filled from the next epoch, so every batch is full and the sequence of windows
    is a concatenation of permutations. :meth:`state_dict` is ``{"seed", "epoch", "index", "batches_drawn",
    "num_windows"}``: the next window read is position ``index`` of epoch ``epoch``'s order.
    """

    def __init__(self, windows: Tensor, batch_size: int, seed: int) -> None:
        if windows.ndim != 2 or windows.shape[0] < 1 or windows.shape[1] < 2:
            raise LocalDataError(
                f"windows must be a non-empty [n, context_length + 1] tensor, got {tuple(windows.shape)}"
            )
        if batch_size < 1:
            raise LocalDataError(f"batch_size must be >= 1, got {batch_size}")
        self.windows = windows
        self.batch_size = batch_size
        self.context_length = windows.shape[1] - 1
        self._seed = seed
        self._epoch = 0
        self._index = 0
        self._batches_drawn = 0
        self._order = self._order_of(0)

    def _order_of(self, epoch: int) -> Tensor:
        generator = torch.Generator()
        generator.manual_seed(_derived_seed(self._seed, epoch))
        return torch.randperm(self.windows.shape[0], generator=generator)

    @property
    def num_windows(self) -> int:
        """Windows per epoch."""
        return int(self.windows.shape[0])

    @property
    def epoch(self) -> int:
        """Epoch of the next window to be read (completed passes so far)."""
        return self._epoch

    @property
    def batches_drawn(self) -> int:
        """Number of batches returned so far (including those before a resume)."""
        return self._batches_drawn

    def __iter__(self) -> WindowBatches:
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        chosen: list[Tensor] = []
        needed = self.batch_size
        while needed > 0:
            taken = self._order[self._index : self._index + needed]
            chosen.append(taken)
            needed -= taken.numel()
            self._index += taken.numel()
            if self._index >= self.num_windows:
                self._epoch += 1
                self._index = 0
                self._order = self._order_of(self._epoch)
        rows = self.windows[torch.cat(chosen)].long()
        self._batches_drawn += 1
        return rows[:, :-1], rows[:, 1:]

    def state_dict(self) -> dict[str, Any]:
        """The exact read position (plain ints, JSON-safe)."""
        return {
            "seed": self._seed,
            "epoch": self._epoch,
            "index": self._index,
            "batches_drawn": self._batches_drawn,
            "num_windows": self.num_windows,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` taken on an iterator over the same windows (the seed is adopted)."""
        if int(state["num_windows"]) != self.num_windows:
            raise LocalDataError(
                f"batch state is for {state['num_windows']} windows but this worker has {self.num_windows}; "
                "the dataset, context_length, val_fraction or number of workers changed"
            )
        index = int(state["index"])
        if not 0 <= index < self.num_windows:
            raise LocalDataError(f"batch state index {index} is outside [0, {self.num_windows})")
        self._seed = int(state["seed"])
        self._epoch = int(state["epoch"])
        self._index = index
        self._batches_drawn = int(state["batches_drawn"])
        self._order = self._order_of(self._epoch)


Sharding = Literal["interleaved", "contiguous"]


@dataclass
class LocalDataset:
    """A tokenized local dataset packed into windows, with its train/validation split."""

    tokens: Tensor
    """All tokens, 1-D."""
    context_length: int
    """Tokens per input sequence; windows hold ``context_length + 1``."""
    train_ids: Tensor
    """Sorted indices (into :attr:`windows`) of the training windows."""
    val_ids: Tensor
    """Sorted indices of the validation windows."""
    vocab_size: int
    """The tokenizer's vocabulary size (every token id is below it)."""

    @property
    def windows(self) -> Tensor:
        """``[num_windows, context_length + 1]`` view of :attr:`tokens` with stride ``context_length``."""
        count = (self.tokens.numel() - 1) // self.context_length
        return self.tokens[: count * self.context_length + 1].unfold(
            0, self.context_length + 1, self.context_length
        )

    def worker_ids(self, rank: int, num_workers: int, sharding: Sharding = "interleaved") -> Tensor:
        """The training window indices of worker ``rank``: ``len(train_ids) // num_workers`` of them each.

        ``"interleaved"`` deals windows out in turn (every worker sees all files; IID-like); ``"contiguous"``
        gives each worker one run of consecutive windows (different documents per worker). The last
        ``len(train_ids) % num_workers`` windows are used by nobody.
        """
        if num_workers < 1 or not 0 <= rank < num_workers:
            raise LocalDataError(f"rank must be in [0, num_workers={num_workers}), got {rank}")
        per_worker = self.train_ids.numel() // num_workers
        if per_worker < 1:
            raise LocalDataError(
                f"only {self.train_ids.numel()} training windows of {self.context_length + 1} tokens for "
                f"{num_workers} workers; use more data, a shorter context_length or fewer workers"
            )
        if sharding == "interleaved":
            return self.train_ids[rank::num_workers][:per_worker]
        if sharding == "contiguous":
            return self.train_ids[rank * per_worker : (rank + 1) * per_worker]
        raise LocalDataError(f"unknown sharding {sharding!r}; allowed: interleaved, contiguous")

    def train_batches(
        self, rank: int, num_workers: int, batch_size: int, seed: int, sharding: Sharding = "interleaved"
    ) -> WindowBatches:
        """Worker ``rank``'s resumable batch iterator over its shard of the training windows."""
        return WindowBatches(self.windows[self.worker_ids(rank, num_workers, sharding)], batch_size, seed)

    def eval_batches(
        self, batch_size: int, max_batches: int | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Deterministic validation batches, each validation window once, in order.

        When ``max_batches`` limits the number of windows, they are spread evenly over the validation set
        (as :func:`farsync.data.batches.eval_batches` does). Raises :class:`LocalDataError` if there is no
        validation window.
        """
        if batch_size < 1:
            raise LocalDataError(f"batch_size must be >= 1, got {batch_size}")
        if max_batches is not None and max_batches < 1:
            raise LocalDataError(f"max_batches must be >= 1, got {max_batches}")
        ids = self.val_ids
        if ids.numel() == 0:
            raise LocalDataError("this dataset has no validation windows (val_fraction is 0)")
        if max_batches is not None and ids.numel() > max_batches * batch_size:
            ids = ids[torch.linspace(0, ids.numel() - 1, max_batches * batch_size).round().long()]
        windows = self.windows
        return _iterate(windows, ids, batch_size)


def _iterate(windows: Tensor, ids: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    for first in range(0, ids.numel(), batch_size):
        rows = windows[ids[first : first + batch_size]].long()
        yield rows[:, :-1], rows[:, 1:]


def load_local_dataset(
    path: str | os.PathLike[str],
    tokenizer: Tokenizer,
    context_length: int,
    *,
    data_format: str = "auto",
    text_field: str = "text",
    val_fraction: float = 0.05,
    split_seed: int = 0,
    num_workers: int = 1,
    cache_dir: str | os.PathLike[str] | None = None,
) -> LocalDataset:
    """Tokenize (or reuse the cache), pack into windows and split off validation.

    ``ceil(val_fraction * num_windows)`` windows (when ``val_fraction > 0``), chosen by a permutation seeded
    with ``split_seed``, go to validation; the rest train. Raises :class:`LocalDataError` when the tokens
    do not fill one window, when no training window would be left, or when there are fewer training
    windows than ``num_workers``.
    """
    if isinstance(context_length, bool) or context_length < 1:
        raise LocalDataError(f"context_length must be >= 1, got {context_length}")
    if not 0.0 <= val_fraction < 1.0:
        raise LocalDataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if num_workers < 1:
        raise LocalDataError(f"num_workers must be >= 1, got {num_workers}")
    tokens = tokenize_local_dataset(
        path, tokenizer, data_format=data_format, text_field=text_field, cache_dir=cache_dir
    )
    num_windows = (tokens.numel() - 1) // context_length
    if num_windows < 1:
        raise LocalDataError(
            f"dataset path {os.fspath(path)!r} has {tokens.numel()} tokens, too few for one window of "
            f"context_length + 1 = {context_length + 1}"
        )
    num_val = math.ceil(val_fraction * num_windows) if val_fraction > 0 else 0
    generator = torch.Generator()
    generator.manual_seed(split_seed)
    order = torch.randperm(num_windows, generator=generator)
    val_ids, _ = order[:num_val].sort()
    train_ids, _ = order[num_val:].sort()
    if train_ids.numel() < num_workers:
        raise LocalDataError(
            f"dataset path {os.fspath(path)!r} gives {train_ids.numel()} training windows of {context_length + 1} "
            f"tokens ({num_val} more for validation), fewer than the {num_workers} workers; use more data, a "
            "shorter context_length or fewer workers"
        )
    logger.info(
        "local dataset %s: %d tokens, %d train / %d validation windows",
        os.fspath(path),
        tokens.numel(),
        train_ids.numel(),
        val_ids.numel(),
    )
    return LocalDataset(
        tokens=tokens,
        context_length=context_length,
        train_ids=train_ids,
        val_ids=val_ids,
        vocab_size=tokenizer.vocab_size,
    )
