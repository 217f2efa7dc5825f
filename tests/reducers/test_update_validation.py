"""Update validation and the strike book."""

import json
import logging

import pytest
import torch

from farsync.reducers.validation import StrikeBook, validate_update


def check(update: torch.Tensor, max_norm: float | None = None) -> str | None:
    reason: str | None = validate_update(
        update, expected_numel=2, expected_dtype=torch.float32, max_norm=max_norm
    )
    return reason


def test_accepts_well_formed_update() -> None:
    assert check(torch.tensor([3.0, 4.0]), max_norm=5.0) is None
    assert check(torch.tensor([3.0e30, 4.0e30])) is None


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), float("-inf")])
def test_rejects_non_finite_values(bad_value: float) -> None:
    assert check(torch.tensor([1.0, bad_value])) == "non-finite values"


@pytest.mark.parametrize(
    ("update", "reason"),
    [
        (torch.zeros(3), "wrong shape: expected (2,), got (3,)"),
        (torch.zeros(1, 2), "wrong shape: expected (2,), got (1, 2)"),
        (torch.zeros(2, dtype=torch.float64), "wrong dtype: expected torch.float32, got torch.float64"),
    ],
)
def test_rejects_wrong_shape_and_dtype(update: torch.Tensor, reason: str) -> None:
    assert check(update) == reason


def test_rejects_norm_above_bound() -> None:
    assert check(torch.tensor([3.0, 4.0]), max_norm=4.5) == "norm 5 above bound 4.5"


def test_norm_does_not_overflow_in_float32() -> None:
    # The fp32 norm of this update would be inf; the float64 one is 5e30.
    assert check(torch.tensor([3.0e30, 4.0e30]), max_norm=1.0e30) == "norm 5e+30 above bound 1e+30"


def test_strikes_exclude_after_max_strikes(caplog: pytest.LogCaptureFixture) -> None:
    # Prepare
    book = StrikeBook(max_strikes=2)
    # Execute
    with caplog.at_level(logging.WARNING, logger="farsync.reducers.validation"):
        first = book.record(worker=3, round=0, reason="non-finite values")
        second = book.record(worker=3, round=4, reason="norm 9 above bound 1")
    book.record(worker=1, round=4, reason="non-finite values")
    # Assert
    assert (first, second) == (False, True)
    assert book.is_excluded(3) and not book.is_excluded(1) and not book.is_excluded(7)
    assert book.excluded == [3]
    assert "worker 3 strike 1/2 in round 0: non-finite values" in caplog.text
    assert "worker 3 excluded after 2 strikes" in caplog.text


def test_strike_book_round_trips_through_json() -> None:
    book = StrikeBook(max_strikes=1)
    book.record(worker=5, round=2, reason="wrong dtype")
    book.record(worker=0, round=3, reason="non-finite values")
    restored = StrikeBook(max_strikes=1)
    restored.load_state_dict(json.loads(json.dumps(book.state_dict())))
    assert restored.excluded == [0, 5]
    assert restored.state_dict() == book.state_dict()


def test_strike_book_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_strikes"):
        StrikeBook(max_strikes=0)
    with pytest.raises(ValueError, match="strikes"):
        StrikeBook(max_strikes=1).load_state_dict({"max_strikes": 1, "strikes": "none"})
    with pytest.raises(ValueError, match="max_norm"):
        check(torch.zeros(2), max_norm=-1.0)
