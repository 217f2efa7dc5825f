"""Small classifiers for tabular features and 8x8 digit images.

This module owns the models used by the federated and Byzantine classification experiments: a
multilayer perceptron over flat features and a tiny convolutional network over 8x8 single-channel
images. Both return unnormalised logits.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["CNN", "MLP"]


class MLP(nn.Module):
    """Fully connected ReLU network: ``in_features -> hidden... -> num_classes``.

    ``hidden`` may be empty, which gives multinomial logistic regression.
    """

    def __init__(
        self, in_features: int = 64, hidden: Sequence[int] = (128, 64), num_classes: int = 10
    ) -> None:
        super().__init__()
        if in_features < 1 or num_classes < 1 or any(size < 1 for size in hidden):
            raise ValueError(
                f"MLP sizes must be >= 1, got in_features={in_features}, hidden={tuple(hidden)}, "
                f"num_classes={num_classes}"
            )
        layers: list[nn.Module] = []
        previous = in_features
        for size in hidden:
            layers += [nn.Linear(previous, size), nn.ReLU()]
            previous = size
        layers.append(nn.Linear(previous, num_classes))
        self.in_features = in_features
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``[B, in_features]`` (or any ``[B, ...]`` with that many elements) to ``[B, num_classes]``."""
        logits: Tensor = self.layers(x.reshape(x.shape[0], -1))
        return logits


class CNN(nn.Module):
    """Two 3x3 conv layers (with one 2x2 max-pool) and a linear head, for 8x8 single-channel images.

    Accepts ``[B, 1, 8, 8]``, ``[B, 8, 8]`` or flat ``[B, 64]`` input.
    """

    def __init__(self, num_classes: int = 10, channels: int = 16, image_size: int = 8) -> None:
        super().__init__()
        if num_classes < 1 or channels < 1 or image_size < 2 or image_size % 2 != 0:
            raise ValueError(
                f"CNN needs num_classes >= 1, channels >= 1 and an even image_size >= 2, got "
                f"num_classes={num_classes}, channels={channels}, image_size={image_size}"
            )
        self.image_size = image_size
        pooled = image_size // 2
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, kernel_size=3, padding=1),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(2 * channels * pooled * pooled, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Map a batch of images to ``[B, num_classes]`` logits."""
        images = x.reshape(x.shape[0], 1, self.image_size, self.image_size)
        logits: Tensor = self.classifier(self.features(images).flatten(1))
        return logits
