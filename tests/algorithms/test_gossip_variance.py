"""Variance correction (Tian et al. 2024): averaging uncorrelated matrices halves their variance; the
correction restores the inputs' mean variance and keeps the mean."""

from __future__ import annotations

import pytest
import torch

from farsync.algorithms.gossip import variance_corrected


def test_variance_is_restored_and_mean_kept() -> None:
    generator = torch.Generator().manual_seed(0)
    first = torch.randn(64, 64, generator=generator) * 2.0 + 1.0  # variance 4
    second = torch.randn(64, 64, generator=generator) * 2.0 + 1.0
    mixed = 0.5 * first + 0.5 * second
    assert float(mixed.var(unbiased=False)) == pytest.approx(2.0, rel=0.1)  # the vanishing variance
    corrected = variance_corrected(mixed, [first, second], [0.5, 0.5])
    target = 0.5 * float(first.var(unbiased=False)) + 0.5 * float(second.var(unbiased=False))
    assert float(corrected.var(unbiased=False)) == pytest.approx(target, rel=1e-4)
    assert float(corrected.mean()) == pytest.approx(float(mixed.mean()), abs=1e-5)


def test_identical_inputs_are_left_alone() -> None:
    matrix = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(variance_corrected(matrix.clone(), [matrix, matrix], [0.5, 0.5]), matrix)
