"""Tests for the small classifiers."""

from __future__ import annotations

import pytest
import torch

from farsync.models import CNN, MLP, count_parameters


@pytest.mark.parametrize("shape", [(5, 64), (5, 1, 8, 8), (5, 8, 8)])
def test_cnn_and_mlp_map_digits_to_logits(shape: tuple[int, ...]) -> None:
    # Prepare
    torch.manual_seed(0)
    images = torch.rand(shape)
    # Execute
    cnn_logits, mlp_logits = CNN()(images), MLP()(images)
    # Assert
    assert cnn_logits.shape == mlp_logits.shape == (5, 10)


def test_mlp_sizes_follow_arguments() -> None:
    # Prepare / Execute
    logistic = MLP(in_features=4, hidden=(), num_classes=3)
    deep = MLP(in_features=4, hidden=(8,), num_classes=3)
    # Assert
    assert count_parameters(logistic) == 4 * 3 + 3
    assert count_parameters(deep) == (4 * 8 + 8) + (8 * 3 + 3)
    assert logistic(torch.zeros(2, 4)).shape == (2, 3)


def test_mlp_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="hidden"):
        MLP(hidden=(0,))


def test_count_parameters_trainable_only() -> None:
    # Prepare
    model = MLP(in_features=4, hidden=(), num_classes=3)
    model.layers[0].bias.requires_grad_(False)
    # Execute / Assert
    assert count_parameters(model, trainable_only=True) == 12
    assert count_parameters(model) == 15
