"""Composition of two compressors: the second compresses each payload tensor of the first.

The typical use is PowerSGD factors sent in 8 or 4 bits while 1-D tensors stay float32:
``Chain(LowRank(4), BlockQuantize(8), only_keys=("p", "q"))``.

Wire format: for every floating-point payload tensor ``key`` of the first compressor (restricted to
``only_keys`` when given), the second's payload tensors appear as ``f"{key}/{subkey}"``; the other payload
tensors are sent unchanged under ``key``. Integer tensors (such as top-k indices) always pass through,
because quantizing an index would corrupt it. The byte count is therefore that
of the final payload. How to rebuild each intermediate tensor (its shape, dtype and the second's ``meta``)
is kept in ``Encoded.meta["chain"]``, which depends only on shapes, never on values.
"""

from __future__ import annotations

from typing import Any

import torch

from farsync.compress.base import Compressor, Encoded

__all__ = ["Chain"]

_SEPARATOR = "/"


class Chain(Compressor):
    """Applies ``first``, then ``second`` to each floating-point payload tensor of ``first``.

    ``only_keys``, when given, limits the second stage to those payload keys of the first.

    The second sees the name ``f"{name}/{key}"`` so any per-tensor state it keeps is per factor.
    Decoding runs the second's decode on every intermediate tensor, then the first's decode.
    """

    def __init__(
        self, first: Compressor, second: Compressor, *, only_keys: tuple[str, ...] | None = None
    ) -> None:
        self.first = first
        self.second = second
        self.only_keys = only_keys
        self.name = f"{first.name}+{second.name}"

    def encode(self, name: str, tensor: torch.Tensor) -> Encoded:
        inner = self.first.encode(name, tensor)
        payload: dict[str, torch.Tensor] = {}
        layout: dict[str, dict[str, Any]] = {}
        for key, value in inner.payload.items():
            if not self._applies_to(key, value):
                payload[key] = value
                layout[key] = {"passthrough": True}
                continue
            encoded = self.second.encode(f"{name}{_SEPARATOR}{key}", value)
            for subkey, subvalue in encoded.payload.items():
                payload[f"{key}{_SEPARATOR}{subkey}"] = subvalue
            layout[key] = {
                "passthrough": False,
                "subkeys": list(encoded.payload),
                "shape": encoded.shape,
                "dtype": encoded.dtype,
                "meta": encoded.meta,
            }
        meta = {"chain": layout, "first_meta": inner.meta}
        return Encoded(payload=payload, shape=inner.shape, dtype=inner.dtype, meta=meta)

    def _applies_to(self, key: str, value: torch.Tensor) -> bool:
        return value.is_floating_point() and (self.only_keys is None or key in self.only_keys)

    def decode(self, encoded: Encoded) -> torch.Tensor:
        layout: dict[str, dict[str, Any]] = encoded.meta["chain"]
        inner_payload: dict[str, torch.Tensor] = {}
        for key, entry in layout.items():
            if entry["passthrough"]:
                inner_payload[key] = encoded.payload[key]
                continue
            sub_payload = {sub: encoded.payload[f"{key}{_SEPARATOR}{sub}"] for sub in entry["subkeys"]}
            sub_encoded = Encoded(sub_payload, entry["shape"], entry["dtype"], entry["meta"])
            inner_payload[key] = self.second.decode(sub_encoded).to(entry["dtype"])
        inner = Encoded(inner_payload, encoded.shape, encoded.dtype, encoded.meta["first_meta"])
        return self.first.decode(inner)

    def state_dict(self) -> dict[str, Any]:
        return {"first": self.first.state_dict(), "second": self.second.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.first.load_state_dict(state.get("first", {}))
        self.second.load_state_dict(state.get("second", {}))
