"""Data: text corpora, classification datasets, partitioners and resumable batch iterators.

This package owns everything between files on disk and a worker's minibatches; it never trains.
"""

from __future__ import annotations

from farsync.data.batches import ArrayBatches, TokenBatches, eval_batches
from farsync.data.classification import ClassificationData, flip_labels, load_digits_split, load_npz
from farsync.data.corpus import (
    TEXT_SUFFIXES,
    TextCorpus,
    is_validation_file,
    load_stdlib_corpus,
    load_text_files,
)
from farsync.data.partition import TextScheme, dirichlet, file_class, iid, pathological, shard_text

__all__ = [
    "TEXT_SUFFIXES",
    "ArrayBatches",
    "ClassificationData",
    "TextCorpus",
    "TextScheme",
    "TokenBatches",
    "dirichlet",
    "eval_batches",
    "file_class",
    "flip_labels",
    "iid",
    "is_validation_file",
    "load_digits_split",
    "load_npz",
    "load_stdlib_corpus",
    "load_text_files",
    "pathological",
    "shard_text",
]
