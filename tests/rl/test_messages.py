"""Rollout messages: a round trip, and every kind of malformed message rejected with its reason."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from farsync.rl.messages import Rollout, RolloutLimits, RolloutRejected, encode_rollout, parse_rollout

LIMITS = RolloutLimits(
    vocab_size=32,
    max_prompt_tokens=8,
    max_completion_tokens=6,
    max_message_bytes=4096,
    max_fingerprint_bytes=64,
)


def _rollout() -> Rollout:
    return Rollout(
        task_id="arithmetic/train/3",
        group_id="w0-v2-7",
        group_size=4,
        prompt_ids=(1, 2, 3),
        completion_ids=(4, 5),
        sampling_logprobs=(-0.5, -1.25),
        reward=1.0,
        policy_version=2,
        worker_id="w0",
        seed=123,
        temperature=1.0,
        fingerprint=b"\x00\x01proof",
    )


def _edited(**changes: Any) -> bytes:
    record = json.loads(encode_rollout(_rollout()))
    for key, value in changes.items():
        if value is KeyError:
            del record[key]
        else:
            record[key] = value
    return json.dumps(record).encode()


def test_round_trip_keeps_every_field() -> None:
    rollout = _rollout()
    assert parse_rollout(encode_rollout(rollout), LIMITS) == rollout


def test_empty_completion_is_allowed() -> None:
    rollout = replace(_rollout(), completion_ids=(), sampling_logprobs=())
    assert parse_rollout(encode_rollout(rollout), LIMITS).completion_ids == ()


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"\xff\xfe", "json"),
        (b"[1, 2]", "type"),
        (b'{"a": NaN}', "json"),
        (b"x" * 5000, "size"),
        (_edited(extra=1), "keys"),
        (_edited(seed=KeyError), "keys"),
        (_edited(schema_version=2), "version"),
        (_edited(policy_version=True), "type"),
        (_edited(policy_version=-1), "range"),
        (_edited(prompt_ids=[1, 2, 32]), "vocab"),
        (_edited(prompt_ids=[1, -1]), "vocab"),
        (_edited(prompt_ids=[]), "length"),
        (_edited(prompt_ids=list(range(9))), "length"),
        (_edited(completion_ids=[1, 2.0]), "type"),
        (_edited(sampling_logprobs=[-0.5]), "length"),
        (_edited(sampling_logprobs=[-0.5, 0.7]), "range"),
        (_edited(sampling_logprobs=[-0.5, "x"]), "type"),
        (_edited(reward="1"), "type"),
        (_edited(reward=1e300), "range"),
        (_edited(temperature=0.0), "range"),
        (_edited(group_size=0), "range"),
        (_edited(worker_id=""), "range"),
        (_edited(task_id="a\nb"), "range"),
        (_edited(fingerprint="not base64!"), "type"),
        (_edited(fingerprint="QUJD" * 100), "size"),
    ],
)
def test_malformed_messages_are_rejected_with_their_reason(message: bytes, reason: str) -> None:
    with pytest.raises(RolloutRejected) as caught:
        parse_rollout(message, LIMITS)
    assert caught.value.reason == reason, str(caught.value)
