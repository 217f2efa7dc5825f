"""The rollout record that inference workers send to trainers: a typed, versioned JSON message.

This module owns the wire format of one rollout (one sampled completion of one prompt) and its strict parser.
A rollout comes from an inference worker that the trainer does not trust, so :func:`parse_rollout` checks
everything before any field is used: the size of the message, that it is a JSON object with exactly the
known keys, every type (a JSON ``true`` is not an integer), every length (one sampling log-probability per
completion token), every token id against the vocabulary, and that numbers are finite and in range. Any
problem raises :class:`RolloutRejected`, whose ``reason`` is a short stable code for counting and whose
message says what was wrong and what is allowed. Nothing is ever unpickled.

The record carries its ``policy_version`` (the weights it was sampled with: staleness is measured from it),
the ``worker_id``, ``seed`` and ``temperature`` used to sample (so a verifier can replay the sampling), the
``reward`` the worker claims (trainers recompute verifiable rewards; the claim is kept for comparison) and
an optional opaque ``fingerprint`` (a proof of the activations, see :mod:`farsync.rl.proofs`), carried as
base64 in JSON.

The checks of one field live in small ``_field`` helpers so a shared schema validator
(``farsync.comm.schema``, when it exists) can replace them in one place.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ROLLOUT_SCHEMA_VERSION",
    "Rollout",
    "RolloutLimits",
    "RolloutRejected",
    "encode_rollout",
    "parse_rollout",
]

ROLLOUT_SCHEMA_VERSION = 1
"""Version of the rollout message; a message with another version is rejected (reason ``version``)."""

_MAX_SEED = 2**63 - 1


class RolloutRejected(ValueError):
    """A rollout message that cannot be used; ``reason`` is a short code (``size``, ``json``, ``keys``,
    ``type``, ``length``, ``vocab``, ``range``, ``version``), the message says what was wrong."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(f"rollout rejected ({reason}): {detail}")


@dataclass(frozen=True, kw_only=True)
class RolloutLimits:
    """What a receiver accepts; everything outside is rejected before use."""

    vocab_size: int
    """Token ids must be in ``[0, vocab_size)``."""
    max_prompt_tokens: int = 512
    """Longest prompt accepted."""
    max_completion_tokens: int = 512
    """Longest completion accepted (an empty completion is allowed: the sampler stopped at once)."""
    max_message_bytes: int = 256 * 1024
    """Largest encoded message accepted, checked before JSON parsing."""
    max_fingerprint_bytes: int = 16 * 1024
    """Largest decoded fingerprint accepted."""
    max_id_chars: int = 128
    """Longest ``task_id``, ``group_id`` or ``worker_id``."""
    max_group_size: int = 1024
    """Largest ``group_size``."""


@dataclass(frozen=True, kw_only=True)
class Rollout:
    """One sampled completion of one prompt, as sent by an inference worker."""

    task_id: str
    """The problem's id in its task (``"arithmetic/train/17"``): the trainer looks the answer up by it."""
    group_id: str
    """Rollouts of one prompt sampled together share it; GRPO normalises rewards within a group."""
    group_size: int
    """How many rollouts the group has."""
    prompt_ids: tuple[int, ...]
    """Token ids of the prompt."""
    completion_ids: tuple[int, ...]
    """Token ids the worker sampled after the prompt."""
    sampling_logprobs: tuple[float, ...]
    """Log-probability of each completion token under the sampling policy (at ``temperature``)."""
    reward: float
    """The reward the worker claims; trainers recompute verifiable rewards."""
    policy_version: int
    """Version of the weights the completion was sampled with."""
    worker_id: str
    """Which inference worker sampled it."""
    seed: int
    """Seed of the worker's sampling generator for this group."""
    temperature: float
    """Sampling temperature (> 0)."""
    fingerprint: bytes = b""
    """Opaque proof of the activations (empty: none); see :mod:`farsync.rl.proofs`."""
    schema_version: int = field(default=ROLLOUT_SCHEMA_VERSION)
    """Message version; see :data:`ROLLOUT_SCHEMA_VERSION`."""


_KEYS: dict[str, type] = {
    "schema_version": int,
    "task_id": str,
    "group_id": str,
    "group_size": int,
    "prompt_ids": list,
    "completion_ids": list,
    "sampling_logprobs": list,
    "reward": float,
    "policy_version": int,
    "worker_id": str,
    "seed": int,
    "temperature": float,
    "fingerprint": str,
}


def encode_rollout(rollout: Rollout) -> bytes:
    """The JSON bytes of ``rollout`` (UTF-8, compact); :func:`parse_rollout` inverts it."""
    record: dict[str, Any] = {
        "schema_version": rollout.schema_version,
        "task_id": rollout.task_id,
        "group_id": rollout.group_id,
        "group_size": rollout.group_size,
        "prompt_ids": list(rollout.prompt_ids),
        "completion_ids": list(rollout.completion_ids),
        "sampling_logprobs": [float(v) for v in rollout.sampling_logprobs],
        "reward": float(rollout.reward),
        "policy_version": rollout.policy_version,
        "worker_id": rollout.worker_id,
        "seed": rollout.seed,
        "temperature": float(rollout.temperature),
        "fingerprint": base64.b64encode(rollout.fingerprint).decode("ascii"),
    }
    return json.dumps(record, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _reject_constant(name: str) -> None:
    raise RolloutRejected("json", f"{name} is not a JSON number (NaN and Infinity are refused)")


def _typed(record: dict[str, Any], key: str) -> Any:
    value = record[key]
    expected = _KEYS[key]
    if expected is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise RolloutRejected("type", f"{key} must be a JSON {expected.__name__}, got {type(value).__name__}")
    return value


def _identifier(record: dict[str, Any], key: str, limits: RolloutLimits) -> str:
    value: str = _typed(record, key)
    if not 0 < len(value) <= limits.max_id_chars or not value.isprintable():
        raise RolloutRejected("range", f"{key} must be 1 to {limits.max_id_chars} printable characters")
    return value


def _token_ids(
    record: dict[str, Any], key: str, max_len: int, vocab_size: int, min_len: int
) -> tuple[int, ...]:
    values: list[Any] = _typed(record, key)
    if not min_len <= len(values) <= max_len:
        raise RolloutRejected("length", f"{key} has {len(values)} tokens; allowed {min_len} to {max_len}")
    for value in values:
        if not isinstance(value, int) or isinstance(value, bool):
            raise RolloutRejected("type", f"{key} must hold integers, got {type(value).__name__}")
        if not 0 <= value < vocab_size:
            raise RolloutRejected("vocab", f"{key} holds id {value}; allowed 0 to {vocab_size - 1}")
    return tuple(values)


def _logprobs(record: dict[str, Any], num_tokens: int) -> tuple[float, ...]:
    values: list[Any] = _typed(record, "sampling_logprobs")
    if len(values) != num_tokens:
        raise RolloutRejected(
            "length", f"sampling_logprobs has {len(values)} values for {num_tokens} completion tokens"
        )
    for value in values:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise RolloutRejected("type", f"sampling_logprobs must hold numbers, got {type(value).__name__}")
        if not -1e4 <= value <= 1e-4:
            raise RolloutRejected(
                "range", f"sampling_logprobs holds {value}; a log-probability is in [-1e4, 0]"
            )
    return tuple(float(v) for v in values)


def _bounded(value: float, key: str, low: float, high: float) -> None:
    if not (math.isfinite(value) and low <= value <= high):
        raise RolloutRejected("range", f"{key} = {value!r}; allowed [{low}, {high}]")


def _fingerprint(record: dict[str, Any], limits: RolloutLimits) -> bytes:
    text: str = _typed(record, "fingerprint")
    if len(text) > 4 * (limits.max_fingerprint_bytes // 3 + 1):
        raise RolloutRejected("size", f"fingerprint exceeds {limits.max_fingerprint_bytes} bytes")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise RolloutRejected("type", "fingerprint must be base64 text") from None


def _load_object(data: bytes, limits: RolloutLimits) -> dict[str, Any]:
    if not isinstance(data, bytes | bytearray):
        raise RolloutRejected("type", f"a message is bytes, got {type(data).__name__}")
    if len(data) > limits.max_message_bytes:
        raise RolloutRejected("size", f"message of {len(data)} bytes exceeds {limits.max_message_bytes}")
    try:
        record = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except RolloutRejected:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise RolloutRejected("json", f"not UTF-8 JSON: {error}") from None
    if not isinstance(record, dict):
        raise RolloutRejected("type", f"a message is a JSON object, got {type(record).__name__}")
    if set(record) != set(_KEYS):
        missing = sorted(set(_KEYS) - set(record))
        unknown = sorted(set(record) - set(_KEYS))
        raise RolloutRejected("keys", f"missing keys {missing}, unknown keys {unknown}")
    return record


def parse_rollout(data: bytes, limits: RolloutLimits) -> Rollout:
    """Parses and checks one rollout message; raises :class:`RolloutRejected` on anything unexpected."""
    record = _load_object(data, limits)
    version = _typed(record, "schema_version")
    if version != ROLLOUT_SCHEMA_VERSION:
        raise RolloutRejected(
            "version", f"schema_version {version}; this receiver reads {ROLLOUT_SCHEMA_VERSION}"
        )
    prompt = _token_ids(record, "prompt_ids", limits.max_prompt_tokens, limits.vocab_size, 1)
    completion = _token_ids(record, "completion_ids", limits.max_completion_tokens, limits.vocab_size, 0)
    group_size = _typed(record, "group_size")
    _bounded(group_size, "group_size", 1, limits.max_group_size)
    reward = float(_typed(record, "reward"))
    _bounded(reward, "reward", -1e6, 1e6)
    policy_version = _typed(record, "policy_version")
    _bounded(policy_version, "policy_version", 0, _MAX_SEED)
    seed = _typed(record, "seed")
    _bounded(seed, "seed", 0, _MAX_SEED)
    temperature = float(_typed(record, "temperature"))
    _bounded(temperature, "temperature", 1e-3, 100.0)
    return Rollout(
        task_id=_identifier(record, "task_id", limits),
        group_id=_identifier(record, "group_id", limits),
        group_size=group_size,
        prompt_ids=prompt,
        completion_ids=completion,
        sampling_logprobs=_logprobs(record, len(completion)),
        reward=reward,
        policy_version=policy_version,
        worker_id=_identifier(record, "worker_id", limits),
        seed=seed,
        temperature=temperature,
        fingerprint=_fingerprint(record, limits),
        schema_version=version,
    )
