"""Top-k count: rounding, at least one kept (the selection itself is tested with the codec)."""

import pytest

from farsync.compress import topk_count


@pytest.mark.parametrize(
    ("numel", "fraction", "expected"),
    [(10, 0.3, 3), (100, 0.29, 29), (1000, 1e-9, 1), (7, 1.0, 7), (0, 0.5, 0)],
)
def test_topk_count_rounds_and_keeps_at_least_one(numel: int, fraction: float, expected: int) -> None:
    # Prepare / Execute
    count = topk_count(numel, fraction)
    # Assert
    assert count == expected
