"""Text corpora as byte tensors, with a deterministic train/validation split by file.

This module owns reading text from disk: the default corpus (the Python standard library's own ``.py``
sources, which every Python install carries, so no download is needed) and user-supplied text files.
Tokens are raw bytes, so a corpus is a set of 1-D ``uint8`` tensors.
"""

from __future__ import annotations

import logging
import os
import sysconfig
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["TEXT_SUFFIXES", "TextCorpus", "is_validation_file", "load_stdlib_corpus", "load_text_files"]

logger = logging.getLogger(__name__)

TEXT_SUFFIXES: tuple[str, ...] = (".txt", ".py", ".md")
"""File suffixes picked up when :func:`load_text_files` is given a directory."""


@dataclass
class TextCorpus:
    """Train files (kept separate so partitioners can group them) and concatenated validation bytes."""

    train_files: list[tuple[str, Tensor]]
    """``(relative path, uint8 bytes)`` per training file, sorted by path."""
    val_tokens: Tensor
    """All validation bytes concatenated, as a 1-D ``uint8`` tensor."""
    val_paths: list[str] = field(default_factory=list)
    """Relative paths of the files that went to validation (empty when bytes were held out instead)."""

    def train_tokens(self) -> Tensor:
        """All training bytes concatenated in file order, as a 1-D ``uint8`` tensor."""
        if not self.train_files:
            return torch.empty(0, dtype=torch.uint8)
        return torch.cat([tokens for _, tokens in self.train_files])

    @property
    def num_train_bytes(self) -> int:
        """Total number of training bytes."""
        return sum(int(tokens.numel()) for _, tokens in self.train_files)


def is_validation_file(relpath: str, val_percent: int) -> bool:
    """Whether ``relpath`` (POSIX separators) belongs to the validation split."""
    return zlib.crc32(relpath.encode("utf-8")) % 100 < val_percent


def _bytes_to_tensor(data: bytes) -> Tensor:
    # bytearray gives frombuffer a writable buffer, so the tensor owns a safe copy.
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _read_files(root: Path, relpaths: list[str], max_bytes: int | None) -> list[tuple[str, Tensor]]:
    files: list[tuple[str, Tensor]] = []
    total = 0
    for relpath in relpaths:
        try:
            data = (root / relpath).read_bytes()
        except OSError as error:
            logger.debug("skipping unreadable file %s: %s", relpath, error)
            continue
        if not data:
            continue
        if max_bytes is not None and total + len(data) > max_bytes:
            break
        total += len(data)
        files.append((relpath, _bytes_to_tensor(data)))
    return files


def _split(files: list[tuple[str, Tensor]], val_percent: int, source: str) -> TextCorpus:
    if not files:
        raise ValueError(f"no non-empty text files found at {source}")
    if not 0 <= val_percent < 100:
        raise ValueError(f"val_percent must be in [0, 100), got {val_percent}")
    train = [(path, tokens) for path, tokens in files if not is_validation_file(path, val_percent)]
    val = [(path, tokens) for path, tokens in files if is_validation_file(path, val_percent)]
    if val_percent == 0 or (train and val):
        val_tokens = torch.cat([tokens for _, tokens in val]) if val else torch.empty(0, dtype=torch.uint8)
        return TextCorpus(train_files=train, val_tokens=val_tokens, val_paths=[path for path, _ in val])
    # Too few files for a split by file (e.g. a single file): hold out the tail of every file instead.
    train_files: list[tuple[str, Tensor]] = []
    val_pieces: list[Tensor] = []
    for path, tokens in files:
        cut = tokens.numel() - tokens.numel() * val_percent // 100
        train_files.append((path, tokens[:cut]))
        val_pieces.append(tokens[cut:])
    return TextCorpus(train_files=train_files, val_tokens=torch.cat(val_pieces))


def load_text_files(
    path: str | os.PathLike[str], val_percent: int = 5, max_bytes: int | None = None
) -> TextCorpus:
    """Load a single file (any suffix) or a directory tree of ``*.txt``, ``*.py``, ``*.md`` files.

    Files are taken in sorted relative-path order, empty and unreadable files are skipped, and reading
    stops before the first file that would push the total past ``max_bytes``. A file goes to validation
    when ``crc32(relpath) % 100 < val_percent``; if that leaves train or validation empty, the last
    ``val_percent`` % of every file's bytes is held out instead.

    Raises ``FileNotFoundError`` if ``path`` does not exist and ``ValueError`` if it holds no text.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"text corpus path does not exist: {root}")
    if root.is_file():
        base, relpaths = root.parent, [root.name]
    else:
        base = root
        relpaths = sorted(
            candidate.relative_to(root).as_posix()
            for candidate in root.rglob("*")
            if candidate.suffix in TEXT_SUFFIXES and candidate.is_file()
        )
    return _split(_read_files(base, relpaths, max_bytes), val_percent, str(root))


def load_stdlib_corpus(val_percent: int = 5, max_bytes: int | None = 8_000_000) -> TextCorpus:
    """The default corpus: this interpreter's standard library ``.py`` sources.

    Files are found recursively under ``sysconfig.get_paths()["stdlib"]``, skipping ``site-packages``,
    and taken in sorted relative-path order until the next file would exceed ``max_bytes`` (``None``
    reads everything). The content, and so the split, depends on the Python version installed.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    relpaths: list[str] = []
    for directory, subdirectories, filenames in os.walk(root):
        subdirectories[:] = [name for name in subdirectories if name not in ("site-packages", "__pycache__")]
        for filename in filenames:
            if filename.endswith(".py"):
                relpaths.append((Path(directory) / filename).relative_to(root).as_posix())
    relpaths.sort()
    return _split(_read_files(root, relpaths, max_bytes), val_percent, str(root))
