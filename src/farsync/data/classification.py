"""Small classification datasets as train/test tensors.

This module owns loading the classification data used by the federated and Byzantine experiments:
scikit-learn's bundled 8x8 digits (no download) and user arrays from an ``.npz`` file.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

__all__ = ["ClassificationData", "flip_labels", "load_digits_split", "load_npz"]


@dataclass
class ClassificationData:
    """A train/test split of features and integer labels."""

    x_train: Tensor
    """Training features, float32, ``[N_train, ...]``."""
    y_train: Tensor
    """Training labels, int64, ``[N_train]``."""
    x_test: Tensor
    """Test features, float32, ``[N_test, ...]``."""
    y_test: Tensor
    """Test labels, int64, ``[N_test]``."""
    num_classes: int
    """Number of classes (labels run from 0 to ``num_classes - 1``)."""
    num_features: int
    """Number of scalar features per example."""


def _split(
    features: NDArray[np.float32], labels: NDArray[np.int64], test_fraction: float, seed: int
) -> ClassificationData:
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    # Stratify whenever every class has two members, so train and test keep the label balance.
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 else None
    from sklearn.model_selection import train_test_split  # imported here: sklearn is slow to import

    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=test_fraction, random_state=seed, stratify=stratify
    )
    return ClassificationData(
        x_train=torch.from_numpy(np.ascontiguousarray(x_train)),
        y_train=torch.from_numpy(np.ascontiguousarray(y_train)),
        x_test=torch.from_numpy(np.ascontiguousarray(x_test)),
        y_test=torch.from_numpy(np.ascontiguousarray(y_test)),
        num_classes=int(labels.max()) + 1,
        num_features=int(np.prod(features.shape[1:])),
    )


def load_digits_split(test_fraction: float = 0.25, seed: int = 0) -> ClassificationData:
    """scikit-learn's 1,797 8x8 digits, pixels scaled to [0, 1], flat 64 features, stratified split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    features = (np.asarray(digits.data, dtype=np.float32) / 16.0).astype(np.float32)
    labels = np.asarray(digits.target, dtype=np.int64)
    return _split(features, labels, test_fraction, seed)


def load_npz(path: str | os.PathLike[str], test_fraction: float = 0.25, seed: int = 0) -> ClassificationData:
    """Load arrays ``x`` (features, any shape ``[N, ...]``) and ``y`` (integer labels ``[N]``) and split them.

    Features stored as ``uint8`` are taken as pixels and scaled to [0, 1] (divided by 255); any other
    numeric type is used as it is (float32).

    Raises ``FileNotFoundError`` if the file is missing and ``ValueError`` if it is not an ``.npz`` archive,
    lacks ``x`` or ``y``, holds non-numeric arrays, their lengths differ, or ``y`` is not non-negative
    integers. Every message names the file and what is wrong, in one line.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"npz dataset not found: {file}")
    if not zipfile.is_zipfile(file):
        raise ValueError(
            f"{file} is not an .npz archive; write one with numpy.savez(path, x=features, y=labels)"
        )
    with np.load(file) as arrays:
        missing = [key for key in ("x", "y") if key not in arrays.files]
        if missing:
            raise ValueError(f"{file} lacks array(s) {missing}; found {arrays.files}, need 'x' and 'y'")
        try:
            stored = np.asarray(arrays["x"])
            features = np.asarray(stored, dtype=np.float32)
            if stored.dtype == np.uint8:
                features /= 255.0
            raw_labels = np.asarray(arrays["y"])
        except ValueError as error:  # object arrays need pickle, which is never loaded from data files
            raise ValueError(f"{file}: x and y must be numeric arrays ({error})") from None
    if raw_labels.ndim != 1 or features.ndim == 0 or features.shape[0] != raw_labels.shape[0]:
        raise ValueError(
            f"{file}: x has shape {features.shape} and y has shape {raw_labels.shape}; need x [N, ...] and "
            "y [N] with the same N"
        )
    if not np.issubdtype(raw_labels.dtype, np.integer) or raw_labels.size == 0 or raw_labels.min() < 0:
        raise ValueError(
            f"{file}: y must be a non-empty array of non-negative integers, got {raw_labels.dtype}"
        )
    return _split(features, raw_labels.astype(np.int64), test_fraction, seed)


def flip_labels(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Map every class label ``c`` in ``y`` to ``num_classes - 1 - c``."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if y.numel() > 0 and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes - 1}], got range [{int(y.min())}, {int(y.max())}]"
        )
    return (num_classes - 1) - y
