"""The message one swarm node shares with the others: a group of decoded completions with claimed rewards.

This module owns the wire format of SAPO's exchange (Gensyn 2025, "Sharing is Caring", arXiv 2509.08721):
nodes share *text*, never token ids or weights, so nodes whose models and tokenizers differ can use each
other's rollouts. One :class:`SharedGroup` is one prompt with the ``group_size`` completions the sender
sampled and the reward it claims for each. A receiver re-tokenizes the text with its own tokenizer.

A peer is untrusted. :func:`parse_group` checks everything before any field is used: the message size
(before JSON parsing), that it is a JSON object with exactly the known keys, every type (``true`` is not a
number), every length (one claimed reward per completion, bounded group size and text lengths), that texts
are printable and numbers finite. Any problem raises :class:`SwarmMessageRejected`, whose ``reason`` is a
short stable code for counting. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SWARM_SCHEMA_VERSION",
    "SharedGroup",
    "SwarmLimits",
    "SwarmMessageRejected",
    "encode_group",
    "parse_group",
]

SWARM_SCHEMA_VERSION = 1
"""Version of the shared-group message; another version is rejected (reason ``version``)."""


class SwarmMessageRejected(ValueError):
    """A shared-group message that cannot be used; ``reason`` is a short code (``size``, ``json``, ``keys``,
    ``type``, ``length``, ``range``, ``version``), the message says what was wrong and what is allowed."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(f"swarm message rejected ({reason}): {detail}")


@dataclass(frozen=True, kw_only=True)
class SwarmLimits:
    """What a receiving node accepts; anything outside is rejected before use."""

    max_message_bytes: int = 16 * 1024
    """Largest encoded message, checked before JSON parsing."""
    max_group_size: int = 64
    """Most completions in one group (at least 2: GRPO's advantages are relative)."""
    max_prompt_chars: int = 64
    """Longest prompt text."""
    max_completion_chars: int = 64
    """Longest completion text (an empty completion is allowed)."""
    max_id_chars: int = 64
    """Longest ``node_id`` or ``task_id``."""


@dataclass(frozen=True, kw_only=True)
class SharedGroup:
    """One prompt and the completions a node sampled for it, as shared with the swarm."""

    node_id: str
    """The sender."""
    round: int
    """The sender's training round when it sampled the group."""
    task_id: str
    """The problem's id in its task (``"arithmetic/train/17"``); receivers look the prompt up by it."""
    prompt: str
    """The prompt text."""
    completions: tuple[str, ...]
    """Decoded completions (end token not included)."""
    rewards: tuple[float, ...]
    """The reward the sender claims for each completion."""
    schema_version: int = field(default=SWARM_SCHEMA_VERSION)
    """Message version; see :data:`SWARM_SCHEMA_VERSION`."""


_KEYS: dict[str, type] = {
    "schema_version": int,
    "node_id": str,
    "round": int,
    "task_id": str,
    "prompt": str,
    "completions": list,
    "rewards": list,
}


def encode_group(group: SharedGroup) -> bytes:
    """The JSON bytes of ``group`` (UTF-8, compact); :func:`parse_group` inverts it."""
    record = {
        "schema_version": group.schema_version,
        "node_id": group.node_id,
        "round": group.round,
        "task_id": group.task_id,
        "prompt": group.prompt,
        "completions": list(group.completions),
        "rewards": [float(r) for r in group.rewards],
    }
    return json.dumps(record, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _reject_constant(name: str) -> None:
    raise SwarmMessageRejected("json", f"{name} is not a JSON number (NaN and Infinity are refused)")


def _typed(record: dict[str, Any], key: str) -> Any:
    value = record[key]
    expected = _KEYS[key]
    ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    if not ok:
        raise SwarmMessageRejected(
            "type", f"{key} must be a JSON {expected.__name__}, got {type(value).__name__}"
        )
    return value


def _text(value: Any, key: str, min_chars: int, max_chars: int) -> str:
    if not isinstance(value, str):
        raise SwarmMessageRejected("type", f"{key} must hold text, got {type(value).__name__}")
    if not min_chars <= len(value) <= max_chars or not value.isprintable():
        raise SwarmMessageRejected("length", f"{key} must be {min_chars} to {max_chars} printable characters")
    return value


def _load_object(data: bytes, limits: SwarmLimits) -> dict[str, Any]:
    if not isinstance(data, bytes | bytearray):
        raise SwarmMessageRejected("type", f"a message is bytes, got {type(data).__name__}")
    if len(data) > limits.max_message_bytes:
        raise SwarmMessageRejected("size", f"message of {len(data)} bytes exceeds {limits.max_message_bytes}")
    try:
        record = json.loads(bytes(data).decode("utf-8"), parse_constant=_reject_constant)
    except SwarmMessageRejected:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise SwarmMessageRejected("json", f"not UTF-8 JSON: {error}") from None
    if not isinstance(record, dict):
        raise SwarmMessageRejected("type", f"a message is a JSON object, got {type(record).__name__}")
    if set(record) != set(_KEYS):
        missing, unknown = sorted(set(_KEYS) - set(record)), sorted(set(record) - set(_KEYS))
        raise SwarmMessageRejected("keys", f"missing keys {missing}, unknown keys {unknown}")
    return record


def _rewards(record: dict[str, Any], num_completions: int) -> tuple[float, ...]:
    values: list[Any] = _typed(record, "rewards")
    if len(values) != num_completions:
        raise SwarmMessageRejected("length", f"{len(values)} rewards for {num_completions} completions")
    for value in values:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise SwarmMessageRejected("type", f"rewards must hold numbers, got {type(value).__name__}")
        if not (math.isfinite(value) and -1e6 <= value <= 1e6):
            raise SwarmMessageRejected("range", f"reward {value!r}; allowed [-1e6, 1e6]")
    return tuple(float(v) for v in values)


def parse_group(data: bytes, limits: SwarmLimits) -> SharedGroup:
    """Parses and checks one shared-group message; raises :class:`SwarmMessageRejected` on anything
    unexpected (see the module doc)."""
    record = _load_object(data, limits)
    version = _typed(record, "schema_version")
    if version != SWARM_SCHEMA_VERSION:
        raise SwarmMessageRejected(
            "version", f"schema_version {version}; this node reads {SWARM_SCHEMA_VERSION}"
        )
    round_index = _typed(record, "round")
    if not 0 <= round_index < 2**62:
        raise SwarmMessageRejected("range", f"round {round_index}; allowed 0 to 2**62")
    completions: list[Any] = _typed(record, "completions")
    if not 2 <= len(completions) <= limits.max_group_size:
        raise SwarmMessageRejected(
            "length", f"{len(completions)} completions; allowed 2 to {limits.max_group_size}"
        )
    texts = tuple(_text(c, "completions", 0, limits.max_completion_chars) for c in completions)
    return SharedGroup(
        node_id=_text(_typed(record, "node_id"), "node_id", 1, limits.max_id_chars),
        round=round_index,
        task_id=_text(_typed(record, "task_id"), "task_id", 1, limits.max_id_chars),
        prompt=_text(_typed(record, "prompt"), "prompt", 1, limits.max_prompt_chars),
        completions=texts,
        rewards=_rewards(record, len(texts)),
        schema_version=version,
    )
