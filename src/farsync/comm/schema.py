"""Typed messages from peers: declared once as frozen dataclasses, parsed from JSON, rejected when malformed.

Every byte string a farsync process reads from the network (a coordinator request, a reply, a store value,
later an RL peer's rollout header) goes through :func:`parse` or :func:`validate` with its message type.
A message type is a frozen dataclass whose fields are ``int``, ``float``, ``bool``, ``str``, a nested
message type, ``tuple[X, ...]`` of one of those, ``dict[str, Any]`` (JSON left as is, for payloads that
are checked by a further type) or ``X | None``. Limits ride on each field's metadata through :func:`rule`:
``minimum``/``maximum`` for numbers, ``max_length`` for strings, tuples and dicts, ``choices`` for strings.
Unbounded fields get :data:`DEFAULT_MAX_STRING` and :data:`DEFAULT_MAX_ITEMS`.

What a check refuses, :class:`MessageRejected` says in one line (the caller counts it and logs it once per
sender; it never propagates as a crash): a raw message over ``max_bytes`` (checked before any decoding),
bytes that are not UTF-8 JSON, a top level that is not an object, a missing or unknown field, a wrong type
(``bool`` is not an ``int``; NaN and infinities are not numbers), a value out of range, a string or list
too long. Nothing here unpickles or evaluates: JSON only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = [
    "DEFAULT_MAX_ITEMS",
    "DEFAULT_MAX_STRING",
    "MessageRejected",
    "Rejections",
    "decode_json",
    "encode",
    "parse",
    "rule",
    "validate",
]

DEFAULT_MAX_STRING = 256
"""Longest string a field without ``max_length`` accepts."""
DEFAULT_MAX_ITEMS = 1024
"""Most items a tuple or dict field without ``max_length`` accepts."""

Message = TypeVar("Message")


class MessageRejected(Exception):
    """A peer's message failed a check; ``reason`` is one line naming the field and what is allowed,
    ``kind`` a short category for counters (``size``, ``json``, ``schema``, ``signature``, ``replay``...)."""

    def __init__(self, reason: str, kind: str = "schema") -> None:
        super().__init__(reason)
        self.reason, self.kind = reason, kind


class Rejections:
    """Counts rejected messages by kind and logs the first rejection of each sender (never a flood of logs).

    Args:
        who: the process that rejects (prefix of the log line).
        log: where the warnings go.
        max_senders: senders whose first rejection is logged; later new senders are logged once together
            (a stranger can invent any number of sender names).
    """

    def __init__(self, who: str, log: logging.Logger, max_senders: int = 256) -> None:
        self.who, self.log, self.max_senders = who, log, max_senders
        self.total = 0
        self.by_kind: dict[str, int] = {}
        self._logged: set[str] = set()
        self._overflow_logged = False

    def record(self, sender: str, error: MessageRejected) -> None:
        self.total += 1
        self.by_kind[error.kind] = self.by_kind.get(error.kind, 0) + 1
        if sender in self._logged:
            return
        if len(self._logged) < self.max_senders:
            self._logged.add(sender)
            self.log.warning(
                "%s: rejected a message (sender or source: %s): %s (further ones from there counted, not logged)",
                self.who,
                sender[:40] or "unnamed",
                error.reason,
            )
        elif not self._overflow_logged:
            self._overflow_logged = True
            self.log.warning(
                "%s: rejecting messages from more than %d senders; counting them silently",
                self.who,
                self.max_senders,
            )


def rule(
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    max_length: int | None = None,
    choices: tuple[str, ...] | None = None,
    default: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with limits (``field: int = rule(minimum=0)``); ``default`` makes it optional."""
    limits = {"minimum": minimum, "maximum": maximum, "max_length": max_length, "choices": choices}
    return dataclasses.field(default=default, metadata={"limits": limits})


def decode_json(raw: bytes | str, max_bytes: int) -> Any:
    """JSON from ``raw`` after the size check; any decoding failure is a :class:`MessageRejected`."""
    if not isinstance(raw, bytes | str):
        raise MessageRejected(f"expected bytes, got {type(raw).__name__}", "json")
    if len(raw) > max_bytes:
        raise MessageRejected(f"message of {len(raw)} bytes exceeds the limit of {max_bytes}", "size")
    try:
        return json.loads(raw, parse_constant=_no_constants)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise MessageRejected(f"not JSON ({str(error).splitlines()[0][:80]})", "json") from None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def parse(raw: bytes | str, message_type: type[Message], *, max_bytes: int) -> Message:
    """``raw`` (at most ``max_bytes``) decoded and checked as ``message_type``."""
    return validate(decode_json(raw, max_bytes), message_type)


def validate(data: Any, message_type: type[Message], *, ignore_unknown: bool = False) -> Message:
    """Decoded JSON checked field by field as ``message_type``; returns the typed message.

    ``ignore_unknown`` checks only the declared fields of a larger object (other fields are dropped).
    """
    if not isinstance(data, dict):
        raise MessageRejected(f"{message_type.__name__}: expected an object, got {_json_name(data)}")
    fields = _fields(message_type)
    unknown = sorted(set(data) - set(fields))
    if unknown and not ignore_unknown:
        raise MessageRejected(f"{message_type.__name__}: unknown field {str(unknown[0])[:40]!r}")
    values: dict[str, Any] = {}
    for name, (annotation, limits, required) in fields.items():
        if name not in data:
            if required:
                raise MessageRejected(f"{message_type.__name__}: missing field {name!r}")
            continue
        values[name] = _check(f"{message_type.__name__}.{name}", data[name], annotation, limits)
    return message_type(**values)


def encode(message: Any) -> str:
    """Canonical JSON of a message (sorted keys, no spaces): what is signed and sent."""
    is_instance = dataclasses.is_dataclass(message) and not isinstance(message, type)
    data = dataclasses.asdict(message) if is_instance else message
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)


_FIELDS: dict[type[Any], dict[str, tuple[Any, dict[str, Any], bool]]] = {}


def _fields(message_type: type[Any]) -> dict[str, tuple[Any, dict[str, Any], bool]]:
    known = _FIELDS.get(message_type)
    if known is not None:
        return known
    hints = typing.get_type_hints(message_type)
    fields: dict[str, tuple[Any, dict[str, Any], bool]] = {}
    for field in dataclasses.fields(message_type):
        if not field.init:
            continue
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        fields[field.name] = (hints[field.name], dict(field.metadata.get("limits", {})), required)
    _FIELDS[message_type] = fields
    return fields


def _json_name(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list"}
    names.update({dict: "an object", type(None): "null"})
    return names.get(type(value), type(value).__name__)


def _check(where: str, value: Any, annotation: Any, limits: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        inner = [option for option in options if option is not type(None)]
        return _check(where, value, inner[0], limits)
    if origin is tuple:
        item_type = typing.get_args(annotation)[0]
        if not isinstance(value, list):
            raise MessageRejected(f"{where}: expected a list, got {_json_name(value)}")
        _check_length(where, value, limits.get("max_length") or DEFAULT_MAX_ITEMS, "items")
        return tuple(_check(f"{where}[{i}]", item, item_type, {}) for i, item in enumerate(value))
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise MessageRejected(f"{where}: expected an object, got {_json_name(value)}")
        _check_length(where, value, limits.get("max_length") or DEFAULT_MAX_ITEMS, "entries")
        return value
    if dataclasses.is_dataclass(annotation):
        return validate(value, annotation)  # type: ignore[arg-type]
    return _check_scalar(where, value, annotation, limits)


def _check_scalar(where: str, value: Any, annotation: Any, limits: Mapping[str, Any]) -> Any:
    if annotation is bool:
        if not isinstance(value, bool):
            raise MessageRejected(f"{where}: expected true or false, got {_json_name(value)}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MessageRejected(f"{where}: expected an integer, got {_json_name(value)}")
        return _check_range(where, value, limits)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise MessageRejected(f"{where}: expected a finite number, got {_json_name(value)}")
        return _check_range(where, float(value), limits)
    if annotation is str:
        if not isinstance(value, str):
            raise MessageRejected(f"{where}: expected a string, got {_json_name(value)}")
        _check_length(where, value, limits.get("max_length") or DEFAULT_MAX_STRING, "characters")
        choices = limits.get("choices")
        if choices is not None and value not in choices:
            raise MessageRejected(f"{where}: {value[:40]!r} is not one of {list(choices)}")
        return value
    raise TypeError(f"{where}: unsupported field type {annotation!r} in a message schema")


def _check_range(where: str, value: float, limits: Mapping[str, Any]) -> Any:
    minimum, maximum = limits.get("minimum"), limits.get("maximum")
    if minimum is not None and value < minimum:
        raise MessageRejected(f"{where}: {value} is below the minimum {minimum}")
    if maximum is not None and value > maximum:
        raise MessageRejected(f"{where}: {value} is above the maximum {maximum}")
    return value


def _check_length(where: str, value: Any, max_length: int, unit: str) -> None:
    if len(value) > max_length:
        raise MessageRejected(f"{where}: {len(value)} {unit} exceed the limit of {max_length}")
