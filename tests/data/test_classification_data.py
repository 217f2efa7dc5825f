"""Tests for the classification dataset loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from farsync.data import load_digits_split, load_npz


def test_digits_split_sizes_range_and_stratification() -> None:
    # Prepare / Execute
    data = load_digits_split(test_fraction=0.25, seed=0)
    # Assert
    assert data.x_train.shape[0] + data.x_test.shape[0] == 1797
    assert data.x_test.shape[0] == 450
    assert data.x_train.shape[1] == data.num_features == 64 and data.num_classes == 10
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert float(data.x_train.min()) == 0.0 and float(data.x_train.max()) == 1.0
    class_counts = torch.bincount(torch.cat([data.y_train, data.y_test]), minlength=10)
    test_counts = torch.bincount(data.y_test, minlength=10)
    assert torch.all((test_counts - class_counts * 0.25).abs() <= 1)


def test_npz_round_trip(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "data.npz"
    np.savez(path, x=np.ones((40, 2, 3)), y=np.repeat(np.arange(4), 10))
    # Execute
    data = load_npz(path, test_fraction=0.5, seed=1)
    # Assert
    assert data.x_train.shape == (20, 2, 3) and data.num_features == 6 and data.num_classes == 4
    assert torch.equal(torch.bincount(data.y_test), torch.full((4,), 5))


def test_npz_errors_name_the_problem(tmp_path: Path) -> None:
    # Prepare
    no_y = tmp_path / "no_y.npz"
    np.savez(no_y, x=np.zeros((4, 2)))
    mismatched = tmp_path / "mismatched.npz"
    np.savez(mismatched, x=np.zeros((4, 2)), y=np.zeros(3, dtype=np.int64))
    # Execute / Assert
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_npz(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match=r"lacks array\(s\) \['y'\]"):
        load_npz(no_y)
    with pytest.raises(ValueError, match=r"x has shape \(4, 2\) and y has shape \(3,\)"):
        load_npz(mismatched)


def test_npz_uint8_features_are_pixels_scaled_to_one(tmp_path: Path) -> None:
    # Prepare: 0, 51 and 255 as uint8 pixels, and the same values as float (left as they are).
    x = np.array([[0, 51], [255, 0], [51, 255], [0, 0]] * 2, dtype=np.uint8)
    y = np.array([0, 1] * 4)
    np.savez(tmp_path / "pixels.npz", x=x, y=y)
    np.savez(tmp_path / "floats.npz", x=x.astype(np.float32), y=y)
    # Execute
    pixels, floats = load_npz(tmp_path / "pixels.npz"), load_npz(tmp_path / "floats.npz")
    # Assert
    assert pixels.x_train.unique().tolist() == pytest.approx([0.0, 0.2, 1.0])
    assert float(floats.x_train.max()) == 255.0


def test_shipped_mnist_sample_loads() -> None:
    data = load_npz(Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "mnist_5k_14x14.npz")
    assert data.num_features == 196 and data.num_classes == 10
    assert len(data.y_train) + len(data.y_test) == 5000
    assert 0.0 <= float(data.x_train.min()) and float(data.x_train.max()) <= 1.0
