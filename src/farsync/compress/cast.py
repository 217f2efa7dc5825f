"""Half-precision casting: the simplest lossy compressor, halving the bytes of a float32 tensor."""

from __future__ import annotations

import torch

from farsync.compress.base import Compressor, Encoded

__all__ = ["Cast"]

_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16"}


class Cast(Compressor):
    """Casts to fp16 or bf16. Payload: ``values`` in that dtype, original shape (2 bytes per element).

    fp16 keeps 11 significant bits (relative error <= 2**-11) but overflows above 65504 and flushes values
    below about 6e-8 to zero; bf16 keeps float32's range with 8 significant bits (relative error <= 2**-8).
    """

    def __init__(self, dtype: torch.dtype) -> None:
        if dtype not in _NAMES:
            raise ValueError(f"dtype={dtype} is not supported; allowed: torch.float16, torch.bfloat16")
        self.dtype = dtype
        self.name = _NAMES[dtype]

    def encode(self, name: str, tensor: torch.Tensor) -> Encoded:
        values = tensor.detach().to(self.dtype, copy=True)
        return Encoded(payload={"values": values}, shape=tensor.shape, dtype=tensor.dtype)

    def decode(self, encoded: Encoded) -> torch.Tensor:
        return encoded.payload["values"].to(torch.float32).reshape(encoded.shape)
