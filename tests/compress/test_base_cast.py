"""Identity and Cast: exact and half-precision round trips, byte counts."""

import pytest
import torch

from farsync.compress import Cast, Encoded, Identity


def test_identity_round_trip_is_exact_and_counts_four_bytes_per_value() -> None:
    # Prepare
    tensor = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    # Execute
    encoded = Identity().encode("w", tensor)
    decoded = Identity().decode(encoded)
    # Assert
    assert torch.equal(decoded, tensor)
    assert encoded.num_bytes == 15 * 4


def test_identity_payload_does_not_alias_the_input() -> None:
    # Prepare
    tensor = torch.ones(4)
    encoded = Identity().encode("b", tensor)
    # Execute
    tensor.add_(1.0)
    # Assert
    assert torch.equal(encoded.payload["values"], torch.ones(4))


def test_num_bytes_sums_every_payload_tensor() -> None:
    # Prepare
    encoded = Encoded(
        payload={"a": torch.zeros(3, dtype=torch.int8), "b": torch.zeros(2, dtype=torch.float64)},
        shape=torch.Size([3]),
        dtype=torch.float32,
    )
    # Execute
    num_bytes = encoded.num_bytes
    # Assert
    assert num_bytes == 3 * 1 + 2 * 8


@pytest.mark.parametrize(("dtype", "relative_bound"), [(torch.float16, 2**-11), (torch.bfloat16, 2**-8)])
def test_cast_relative_error_is_within_half_an_ulp(dtype: torch.dtype, relative_bound: float) -> None:
    # Prepare
    tensor = torch.randn(1000, generator=torch.Generator().manual_seed(1)) * 10
    compressor = Cast(dtype)
    # Execute
    encoded = compressor.encode("w", tensor)
    decoded = compressor.decode(encoded)
    # Assert
    relative_error = (decoded - tensor).abs() / tensor.abs()
    assert relative_error.max().item() <= relative_bound
    assert decoded.dtype == torch.float32
    assert encoded.num_bytes == 1000 * 2


def test_cast_rejects_float32() -> None:
    # Prepare / Execute / Assert
    with pytest.raises(ValueError, match="dtype"):
        Cast(torch.float32)
