"""The compressor interface: what one tensor looks like on the wire, and the no-op compressor.

A compressor turns one pseudo-gradient tensor into an :class:`Encoded` (a dict of tensors that is sent, plus
the metadata a receiver can rebuild without it being sent) and turns an :class:`Encoded` back into a float32
tensor. Compressors are pure: they never touch the network. ``comm/`` sends ``Encoded.payload`` and the byte
ledger counts :attr:`Encoded.num_bytes`.

Decoding a peer's payload: every compressor here produces payload tensors whose shapes and dtypes, and a
``meta`` dict, that depend only on the original tensor's shape and dtype and on the compressor's settings,
never on the values. A receiver that encoded a tensor of the same shape can therefore decode a peer's
payload with ``dataclasses.replace(local_encoded, payload=peer_payload)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Compressor", "Encoded", "Identity"]


@dataclass
class Encoded:
    """What goes on the wire for one tensor."""

    payload: dict[str, torch.Tensor]
    """Every tensor here is sent; the byte ledger counts the sum of their sizes."""
    shape: torch.Size
    """Shape of the original tensor."""
    dtype: torch.dtype
    """Dtype of the original tensor."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Side information both ends derive from shapes and settings alone; not sent and not counted."""

    @property
    def num_bytes(self) -> int:
        """Bytes sent for this tensor: the sum of ``numel * element_size`` over the payload."""
        return sum(t.numel() * t.element_size() for t in self.payload.values())


class Compressor(ABC):
    """Encodes a tensor into an :class:`Encoded` and decodes it back to float32.

    ``name`` in :meth:`encode` keys any per-tensor state (warm-started factors, residuals); use the parameter
    name. Stateless compressors inherit the empty :meth:`state_dict`.
    """

    name: str

    @abstractmethod
    def encode(self, name: str, tensor: torch.Tensor) -> Encoded:
        """Compress ``tensor``; ``name`` selects its per-tensor state."""

    @abstractmethod
    def decode(self, encoded: Encoded) -> torch.Tensor:
        """Reconstruct a float32 tensor of the original shape."""

    def state_dict(self) -> dict[str, Any]:
        """Per-worker state, ``torch.save``-able. Empty for stateless compressors."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - stateless default
        """Restore what :meth:`state_dict` returned. Stateless compressors ignore it."""


class Identity(Compressor):
    """Sends the tensor as float32, unchanged. Payload: ``values`` fp32, original shape."""

    name = "none"

    def encode(self, name: str, tensor: torch.Tensor) -> Encoded:
        # Copy so that later in-place updates of the caller's tensor cannot change what is sent.
        values = tensor.detach().to(torch.float32, copy=True)
        return Encoded(payload={"values": values}, shape=tensor.shape, dtype=tensor.dtype)

    def decode(self, encoded: Encoded) -> torch.Tensor:
        return encoded.payload["values"].to(torch.float32).reshape(encoded.shape)
