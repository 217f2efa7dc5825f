"""The shared-group message: round trip, and every malformed or oversized payload rejected with its reason."""

from __future__ import annotations

import json

import pytest

from farsync.rl.swarm_messages import (
    SharedGroup,
    SwarmLimits,
    SwarmMessageRejected,
    encode_group,
    parse_group,
)

LIMITS = SwarmLimits(max_message_bytes=1024, max_group_size=4, max_completion_chars=8)


def _group() -> SharedGroup:
    return SharedGroup(
        node_id="node1",
        round=3,
        task_id="arithmetic/train/5",
        prompt="47+48=",
        completions=("95", "93 zz"),
        rewards=(1.0, 0.0),
    )


def _record() -> dict[str, object]:
    record: dict[str, object] = json.loads(encode_group(_group()))
    return record


def test_round_trip() -> None:
    assert parse_group(encode_group(_group()), LIMITS) == _group()


def _with(**changes: object) -> bytes:
    record = _record()
    record.update(changes)
    return json.dumps(record).encode()


def _without(key: str) -> bytes:
    record = _record()
    del record[key]
    return json.dumps(record).encode()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"x" * 1025, "size"),
        (b'{"pad": "' + b"a" * 2000 + b'"}', "size"),
        (b"\xff\xfe not json", "json"),
        (b"[1, 2]", "type"),
        (_without("rewards"), "keys"),
        (_with(extra=1), "keys"),
        (_with(round=True), "type"),
        (_with(round=-1), "range"),
        (_with(schema_version=2), "version"),
        (_with(completions=["95"], rewards=[1.0]), "length"),
        (_with(completions=["1", "2", "3", "4", "5"], rewards=[0, 0, 0, 0, 0]), "length"),
        (_with(completions=["95", "123456789"]), "length"),
        (_with(completions=["95", "9\n5"]), "length"),
        (_with(completions=["95", 95]), "type"),
        (_with(rewards=[1.0]), "length"),
        (_with(rewards=[1.0, "1"]), "type"),
        (_with(rewards=[1.0, True]), "type"),
        (_with(rewards=[1.0, 1e9]), "range"),
        (encode_group(_group()).replace(b"[1.0,0.0]", b"[NaN,0.0]"), "json"),
        (_with(node_id=""), "length"),
        (_with(prompt=7), "type"),
    ],
)
def test_bad_payloads_are_rejected_with_their_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(SwarmMessageRejected) as caught:
        parse_group(payload, LIMITS)
    assert caught.value.reason == reason


def test_non_bytes_input_is_rejected() -> None:
    with pytest.raises(SwarmMessageRejected) as caught:
        parse_group("text", LIMITS)  # type: ignore[arg-type]
    assert caught.value.reason == "type"
