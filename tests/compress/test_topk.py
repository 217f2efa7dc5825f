"""Top-k sparsification: exactly the k largest magnitudes survive."""

import pytest
import torch

from farsync.compress import TopK, topk_count


def test_keeps_exactly_the_k_largest_magnitudes_and_zeros_the_rest() -> None:
    # Prepare: a permutation of distinct magnitudes with alternating signs.
    magnitudes = torch.randperm(100, generator=torch.Generator().manual_seed(8)).float() + 1
    signs = torch.where(torch.arange(100) % 2 == 0, 1.0, -1.0)
    tensor = (magnitudes * signs).view(10, 10)
    compressor = TopK(0.1)
    # Execute
    encoded = compressor.encode("w", tensor)
    decoded = compressor.decode(encoded)
    # Assert: values with |x| in 91..100 survive unchanged, everything else is zero.
    kept = tensor.abs() > 90
    assert torch.equal(decoded[kept], tensor[kept])
    assert torch.all(decoded[~kept] == 0)
    assert encoded.num_bytes == 10 * 4 + 10 * 4
    assert encoded.payload["indices"].dtype == torch.int32


@pytest.mark.parametrize(
    ("numel", "fraction", "expected"),
    [(10, 0.3, 3), (100, 0.29, 29), (1000, 1e-9, 1), (7, 1.0, 7), (0, 0.5, 0)],
)
def test_topk_count_rounds_and_keeps_at_least_one(numel: int, fraction: float, expected: int) -> None:
    # Prepare / Execute
    count = topk_count(numel, fraction)
    # Assert
    assert count == expected


def test_fraction_one_is_lossless() -> None:
    # Prepare
    tensor = torch.randn(4, 6, generator=torch.Generator().manual_seed(9))
    compressor = TopK(1.0)
    # Execute
    decoded = compressor.decode(compressor.encode("w", tensor))
    # Assert
    assert torch.equal(decoded, tensor)


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan")])
def test_rejects_fraction_outside_unit_interval(fraction: float) -> None:
    # Prepare / Execute / Assert
    with pytest.raises(ValueError, match="fraction="):
        TopK(fraction)
