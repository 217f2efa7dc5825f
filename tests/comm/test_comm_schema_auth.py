"""The message schema and the signing layer: each check rejects what it should, with a one-line reason."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import pytest

from farsync.comm.auth import (
    SequenceGuard,
    check_mac,
    coordinator_key,
    derive_key,
    open_envelope,
    seal,
    session_key,
)
from farsync.comm.schema import MessageRejected, Rejections, encode, parse, rule, validate


@dataclass(frozen=True)
class Inner:
    name: str = rule(max_length=4)


@dataclass(frozen=True)
class Sample:
    slot: int = rule(minimum=0, maximum=7)
    rate: float = rule(minimum=0.0)
    flag: bool
    label: str = rule(max_length=8, choices=("a", "bb"))
    members: tuple[int, ...] = rule(max_length=3)
    inner: Inner
    note: str | None = rule(max_length=5, default=None)


DROP = object()
GOOD = {"slot": 3, "rate": 1, "flag": True, "label": "bb", "members": [1, 2], "inner": {"name": "ok"}}


def _reason(data: object, max_bytes: int = 1000) -> MessageRejected:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    with pytest.raises(MessageRejected) as caught:
        parse(raw, Sample, max_bytes=max_bytes)
    return caught.value


def test_a_good_message_parses_to_its_typed_form_and_round_trips() -> None:
    message = parse(json.dumps(GOOD).encode(), Sample, max_bytes=1000)
    assert message == Sample(3, 1.0, True, "bb", (1, 2), Inner("ok"))
    assert isinstance(message.rate, float) and message.note is None
    assert validate(json.loads(encode(message)), Sample) == message


def test_oversize_is_rejected_before_decoding() -> None:
    error = _reason(b"x" * 2000, max_bytes=1000)  # not JSON either: the size check came first
    assert error.kind == "size" and "2000 bytes exceeds the limit of 1000" in error.reason


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"slot": DROP}, "missing field 'slot'"),
        ({"slot": True}, "Sample.slot: expected an integer"),
        ({"slot": "3"}, "Sample.slot: expected an integer"),
        ({"slot": 8}, "above the maximum 7"),
        ({"slot": -1}, "below the minimum 0"),
        ({"rate": "fast"}, "Sample.rate: expected a finite number"),
        ({"flag": 1}, "Sample.flag: expected true or false"),
        ({"label": "c"}, "is not one of"),
        ({"label": "b" * 9}, "9 characters exceed the limit of 8"),
        ({"members": [1, 2, 3, 4]}, "4 items exceed the limit of 3"),
        ({"members": [1, "2"]}, "Sample.members[1]: expected an integer"),
        ({"inner": {"name": "long!"}}, "Inner.name: 5 characters"),
        ({"extra": 1}, "unknown field 'extra'"),
    ],
)
def test_each_bad_field_is_rejected_naming_it(change: dict[str, object], words: str) -> None:
    data = {k: v for k, v in {**GOOD, **change}.items() if v is not DROP}
    assert words in _reason(data).reason


def test_not_json_nan_and_deep_nesting_are_rejected_not_raised() -> None:
    assert _reason(b"not json at all").kind == "json"
    assert _reason(b'{"slot": NaN}').kind == "json"
    assert _reason(b"[" * 5000 + b"]" * 5000, max_bytes=20000).kind in ("json", "schema")
    assert "expected an object" in _reason([1, 2]).reason


def test_seal_and_check_mac_accept_the_key_and_reject_tampering_and_other_keys() -> None:
    key = derive_key(b"token", "session", "nonce", 0, "abc")
    raw = seal(key, "abc", '{"type":"leave","finished":false}')
    check_mac(key, open_envelope(raw, 1000))  # genuine: passes
    tampered = raw.replace("false", "true ")
    with pytest.raises(MessageRejected, match="signature") as caught:
        check_mac(key, open_envelope(tampered, 1000))
    assert caught.value.kind == "signature"
    with pytest.raises(MessageRejected, match="signature"):
        check_mac(derive_key(b"other-token", "session", "nonce", 0, "abc"), open_envelope(raw, 1000))
    with pytest.raises(MessageRejected, match="signature"):
        check_mac(key, open_envelope(seal(None, "abc", '{"a":1}'), 1000))  # unsigned while a key is due
    check_mac(None, open_envelope(seal(None, "abc", '{"a":1}'), 1000))  # an open run checks nothing


def test_keys_differ_by_purpose_and_identity() -> None:
    base = session_key(b"t", "n", 0, "abc")
    assert base == derive_key(b"t", "session", "n", 0, "abc")
    others = [
        session_key(b"t", "n", 1, "abc"),
        session_key(b"t", "n", 0, "abd"),
        session_key(b"t", "m", 0, "abc"),
        session_key(b"u", "n", 0, "abc"),
        coordinator_key(b"t", "n"),
    ]
    assert base not in others and len(set(others)) == len(others)
    assert session_key(None, "n", 0, "abc") is None and coordinator_key(None, "n") is None


def test_sequence_guard_rejects_replays_and_reordering_per_channel() -> None:
    guard = SequenceGuard()
    guard.accept("abc", "main", 1)
    guard.accept("abc", "main", 2)
    guard.accept("abc", "beat", 1)  # another channel has its own numbers
    for stale in (2, 1):
        with pytest.raises(MessageRejected, match="replayed or reordered") as caught:
            guard.accept("abc", "main", stale)
        assert caught.value.kind == "replay"
    guard.accept("abc", "main", 5)  # gaps are fine (a dropped message)


def test_rejections_are_counted_by_kind_and_logged_once_per_sender(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.rejections")
    rejections = Rejections("peer", log, max_senders=2)
    with caplog.at_level(logging.WARNING, logger="test.rejections"):
        for sender in ("a", "a", "b", "c", "d"):
            rejections.record(sender, MessageRejected("bad", "json"))
        rejections.record("a", MessageRejected("forged", "signature"))
    assert rejections.total == 6 and rejections.by_kind == {"json": 5, "signature": 1}
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 3  # a, b, then one line for every further sender
    assert "source: a" in lines[0] and "more than 2 senders" in lines[2]
