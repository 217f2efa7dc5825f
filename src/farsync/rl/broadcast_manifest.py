"""The manifest of one published policy version: its shards, their checksums and the tensors in each.

This module owns the typed JSON that describes a version on the relay (:mod:`farsync.rl.broadcast`), how a
state dict is cut into shards (batched by bytes, in the state dict's order), and the strict parser consumers
use: the manifest arrives from the relay, which a consumer does not trust, so :func:`parse_manifest` checks
size, keys, types, names, dtypes, shapes and totals before anything is fetched, and raises
:class:`ManifestRejected` with a one-line reason on anything else.

Layout of ``manifest.json``::

    {"format": "farsync-shardcast/1", "version": 7, "total_bytes": 3321856,
     "shards": [{"name": "shard-00000.safetensors", "num_bytes": 1048712, "sha256": "<64 hex>",
                 "tensors": [{"name": "embed.token.weight", "dtype": "float32", "shape": [256, 128]}, ...]},
                ...]}
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "MANIFEST_FORMAT",
    "DTYPES",
    "Manifest",
    "ManifestLimits",
    "ManifestRejected",
    "ShardSpec",
    "TensorSpec",
    "encode_manifest",
    "parse_manifest",
    "plan_shards",
]

MANIFEST_FORMAT = "farsync-shardcast/1"
"""Format tag of a manifest; another tag is rejected."""

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
"""Tensor dtypes a version may hold, by manifest name."""

_SHARD_NAME = re.compile(r"shard-\d{5}\.safetensors")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TENSOR_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,256}")


class ManifestRejected(ValueError):
    """A manifest that cannot be used; the message says what was wrong."""


@dataclass(frozen=True, kw_only=True)
class ManifestLimits:
    """What a consumer accepts from a relay; everything outside is rejected before use."""

    max_manifest_bytes: int = 4 * 1024 * 1024
    """Largest manifest file."""
    max_shards: int = 10_000
    """Most shards in one version."""
    max_shard_bytes: int = 1024**3
    """Largest shard file."""
    max_tensors: int = 100_000
    """Most tensors in one version."""


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a shard: its state-dict name, dtype name (a key of :data:`DTYPES`) and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ShardSpec:
    """One shard file: its name, size, sha256 (hex) and the tensors it holds."""

    name: str
    num_bytes: int
    sha256: str
    tensors: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class Manifest:
    """A published version: its number and shards."""

    version: int
    shards: tuple[ShardSpec, ...]

    @property
    def total_bytes(self) -> int:
        return sum(shard.num_bytes for shard in self.shards)


def plan_shards(state_dict: Mapping[str, Tensor], shard_bytes: int) -> list[list[str]]:
    """Groups the state dict's names, in order, into shards of about ``shard_bytes`` each.

    A shard is closed once adding the next tensor would pass ``shard_bytes``; a tensor larger than
    ``shard_bytes`` gets a shard of its own (tensors are never split).
    """
    if shard_bytes < 1:
        raise ValueError(f"shard_bytes must be >= 1, got {shard_bytes}")
    groups: list[list[str]] = []
    current: list[str] = []
    current_bytes = 0
    for name, tensor in state_dict.items():
        size = tensor.numel() * tensor.element_size()
        if current and current_bytes + size > shard_bytes:
            groups.append(current)
            current, current_bytes = [], 0
        current.append(name)
        current_bytes += size
    if current:
        groups.append(current)
    return groups


def dtype_name(dtype: torch.dtype) -> str:
    """The manifest name of ``dtype``; raises ``ValueError`` for a dtype a version may not hold."""
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"tensor dtype {dtype} cannot be broadcast; allowed: {sorted(DTYPES)}")
    return name


def encode_manifest(manifest: Manifest) -> bytes:
    """The JSON bytes of ``manifest``; :func:`parse_manifest` inverts it."""
    record = {
        "format": MANIFEST_FORMAT,
        "version": manifest.version,
        "total_bytes": manifest.total_bytes,
        "shards": [
            {
                "name": shard.name,
                "num_bytes": shard.num_bytes,
                "sha256": shard.sha256,
                "tensors": [
                    {"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in shard.tensors
                ],
            }
            for shard in manifest.shards
        ],
    }
    return json.dumps(record, separators=(",", ":")).encode()


def _int(value: Any, what: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ManifestRejected(f"{what} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _object(value: Any, what: str, keys: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != keys:
        found = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise ManifestRejected(f"{what} must be an object with keys {sorted(keys)}, got {found}")
    return value


def _tensor(value: Any) -> TensorSpec:
    record = _object(value, "a tensor entry", {"name", "dtype", "shape"})
    name, dtype, shape = record["name"], record["dtype"], record["shape"]
    if not isinstance(name, str) or _TENSOR_NAME.fullmatch(name) is None:
        raise ManifestRejected(f"tensor name {name!r} is not 1-256 characters of [A-Za-z0-9_.-]")
    if dtype not in DTYPES:
        raise ManifestRejected(f"tensor {name}: dtype {dtype!r} is not one of {sorted(DTYPES)}")
    if not isinstance(shape, list) or len(shape) > 8:
        raise ManifestRejected(f"tensor {name}: shape must be a list of at most 8 sizes")
    return TensorSpec(name, dtype, tuple(_int(size, f"tensor {name} size", 0, 2**40) for size in shape))


def _shard(value: Any, limits: ManifestLimits) -> ShardSpec:
    record = _object(value, "a shard entry", {"name", "num_bytes", "sha256", "tensors"})
    name, digest, tensors = record["name"], record["sha256"], record["tensors"]
    if not isinstance(name, str) or _SHARD_NAME.fullmatch(name) is None:
        raise ManifestRejected(f"shard name {name!r} is not shard-NNNNN.safetensors")
    if not isinstance(digest, str) or _SHA256.fullmatch(digest) is None:
        raise ManifestRejected(f"shard {name}: sha256 must be 64 lowercase hex digits")
    if not isinstance(tensors, list) or not tensors:
        raise ManifestRejected(f"shard {name}: tensors must be a non-empty list")
    num_bytes = _int(record["num_bytes"], f"shard {name} num_bytes", 1, limits.max_shard_bytes)
    return ShardSpec(name, num_bytes, digest, tuple(_tensor(t) for t in tensors))


def parse_manifest(data: bytes, limits: ManifestLimits, expected_version: int) -> Manifest:
    """Parses and checks a manifest read from a relay; raises :class:`ManifestRejected` on anything else."""
    if len(data) > limits.max_manifest_bytes:
        raise ManifestRejected(f"manifest of {len(data)} bytes exceeds {limits.max_manifest_bytes}")
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ManifestRejected(f"manifest is not UTF-8 JSON: {error}") from None
    record = _object(record, "the manifest", {"format", "version", "total_bytes", "shards"})
    if record["format"] != MANIFEST_FORMAT:
        raise ManifestRejected(f"manifest format {record['format']!r}; this reader reads {MANIFEST_FORMAT}")
    version = _int(record["version"], "version", 0, 2**62)
    if version != expected_version:
        raise ManifestRejected(f"manifest says version {version}, its directory says {expected_version}")
    shards = record["shards"]
    if not isinstance(shards, list) or not 0 < len(shards) <= limits.max_shards:
        raise ManifestRejected(f"shards must be a list of 1 to {limits.max_shards} entries")
    manifest = Manifest(version, tuple(_shard(s, limits) for s in shards))
    names = [t.name for shard in manifest.shards for t in shard.tensors]
    if len(names) > limits.max_tensors or len(set(names)) != len(names):
        raise ManifestRejected(f"tensor names must be unique and at most {limits.max_tensors}")
    if len({shard.name for shard in manifest.shards}) != len(manifest.shards):
        raise ManifestRejected("shard names must be unique")
    if record["total_bytes"] != manifest.total_bytes:
        raise ManifestRejected(
            f"total_bytes {record['total_bytes']!r} != sum of shard sizes {manifest.total_bytes}"
        )
    return manifest
