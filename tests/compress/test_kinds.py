"""The compression kinds: one list (the config's) and the codec each kind puts on the wire."""

import pytest
import torch

from farsync.compress import (
    KINDS,
    SPARSE_KINDS,
    BlockwiseCodec,
    Fp32Codec,
    ScaledHalfCodec,
    SparseLoCoCodec,
    sparse_codec,
    wire_codec,
)
from farsync.config import COMPRESSION_KINDS


def test_the_registry_is_the_configs_list_of_kinds() -> None:
    # Prepare / Execute / Assert: the config and compress are independent leaves; this keeps them one list.
    assert KINDS == COMPRESSION_KINDS


@pytest.mark.parametrize("kind", [kind for kind in KINDS if kind not in SPARSE_KINDS])
def test_every_kind_has_a_codec_that_round_trips_within_its_bound(kind: str) -> None:
    # Prepare
    values = torch.randn(512, generator=torch.Generator().manual_seed(50))
    codec = wire_codec(kind, bits=8, topk_fraction=1.0)
    # Execute
    decoded = codec.round_trip(values)
    # Assert
    assert decoded.shape == values.shape
    assert ((decoded - values).norm() / values.norm()).item() < (0.2 if kind == "int4" else 0.05)


@pytest.mark.parametrize("kind", SPARSE_KINDS)
def test_sparse_kinds_have_a_per_tensor_codec_and_no_flat_one(kind: str) -> None:
    # Prepare / Execute
    codec = sparse_codec(kind, topk_fraction=0.02, chunk_size=32)
    # Assert
    assert isinstance(codec, SparseLoCoCodec) and codec.transform == (
        "dct" if kind.endswith("dct") else "none"
    )
    with pytest.raises(ValueError, match=f"kind={kind!r} is laid out per tensor"):
        wire_codec(kind)


@pytest.mark.parametrize(
    ("bits", "expected"), [(16, ScaledHalfCodec), (8, BlockwiseCodec), (4, BlockwiseCodec), (32, Fp32Codec)]
)
def test_lowrank_factors_travel_in_the_factor_codec_at_bits(bits: int, expected: type) -> None:
    # Prepare / Execute
    codec = wire_codec("lowrank", bits=bits, block_size=32)
    # Assert
    assert isinstance(codec, expected) and codec.bits == bits


def test_value_kinds_ignore_bits() -> None:
    # Prepare / Execute / Assert: "int8" is int8 whatever compression.bits says.
    assert wire_codec("int8", bits=4).num_bytes(640) == wire_codec("int8", bits=16).num_bytes(640) == 640 + 40


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "gzip"}, r"kind='gzip' is unknown; allowed: none, fp16"),
        ({"kind": "lowrank", "bits": 3}, r"bits=3 .*allowed: \(32, 16, 8, 4, 2\)"),
        ({"kind": "topk", "topk_fraction": 1.5}, r"fraction=1.5"),
        ({"kind": "int8", "block_size": 0}, r"block_size=0"),
    ],
)
def test_bad_settings_raise_value_error_naming_the_value_and_what_is_allowed(
    kwargs: dict[str, object], message: str
) -> None:
    # Prepare / Execute / Assert
    with pytest.raises(ValueError, match=message):
        wire_codec(**kwargs)  # type: ignore[arg-type]
