"""The elastic protocol's messages: every request, reply and store value, typed and size-limited.

Requests (worker -> coordinator, through ``coord/inbox``) are signed envelopes (:mod:`farsync.comm.auth`)
whose body is one of :data:`REQUEST_TYPES`; every request names its sender's incarnation, its channel
(``main``: the training thread's connection, ``beat``: the heartbeat thread's) and a sequence number that
grows on that channel. Replies, the status line and the coordinator's announcement (epoch and nonce) are
signed by the coordinator; results by the worker that finished. Limits here are generous for honest use and
small enough that a hostile value cannot exhaust memory or CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from farsync.comm.schema import MessageRejected, decode_json, rule, validate

__all__ = [
    "MAX_REPLY_BYTES",
    "MAX_REQUEST_BYTES",
    "MAX_RESULT_BYTES",
    "REQUEST_TYPES",
    "Announce",
    "Arrive",
    "Beat",
    "Done",
    "Join",
    "JoinReply",
    "Leave",
    "ReplyBody",
    "Request",
    "ResultFigures",
    "StatusBody",
    "parse_request",
]

MAX_REQUEST_BYTES = 16 * 1024
"""Largest request the coordinator decodes (a join is well under 1 KiB)."""
MAX_REPLY_BYTES = 256 * 1024
"""Largest reply, status or announcement a worker decodes (a decision lists every member)."""
MAX_RESULT_BYTES = 16 * 1024 * 1024
"""Largest worker result the summary's writer decodes (results carry the eval history)."""
MAX_SLOTS = 1 << 16
MAX_COUNT = 1 << 50
_CHANNELS = ("main", "beat")


@dataclass(frozen=True, kw_only=True)
class _Header:
    request: str = rule(max_length=96)
    """Names the reply key ``reply/<request>``; starts with the sender's incarnation."""
    sequence: int = rule(minimum=1, maximum=MAX_COUNT)
    channel: str = rule(choices=_CHANNELS)
    incarnation: str = rule(max_length=32)


@dataclass(frozen=True, kw_only=True)
class Join(_Header):
    """Asks for a slot (``None``: the lowest free one); the first join sets the run's terms."""

    type: str = rule(choices=("join",))
    slot: int | None = rule(minimum=0, maximum=MAX_SLOTS)
    config_sha: str = rule(max_length=64)
    num_slots: int = rule(minimum=1, maximum=MAX_SLOTS)
    min_workers: int | None = rule(minimum=1, maximum=MAX_SLOTS, default=None)
    failure_timeout_s: float | None = rule(minimum=0.01, maximum=1e6, default=None)
    heartbeat_interval_s: float | None = rule(minimum=0.001, maximum=1e6, default=None)


@dataclass(frozen=True, kw_only=True)
class Arrive(_Header):
    """Waits at the next round boundary with this worker's state."""

    type: str = rule(choices=("arrive",))
    slot: int = rule(minimum=0, maximum=MAX_SLOTS)
    round: int = rule(minimum=0, maximum=MAX_COUNT)
    step: int = rule(minimum=0, maximum=MAX_COUNT)
    sha: str = rule(max_length=128)
    pending: bool


@dataclass(frozen=True, kw_only=True)
class Done(_Header):
    """Healing and the collective of ``boundary`` succeeded (``ok``) or failed."""

    type: str = rule(choices=("done",))
    slot: int = rule(minimum=0, maximum=MAX_SLOTS)
    boundary: int = rule(minimum=0, maximum=MAX_COUNT)
    ok: bool


@dataclass(frozen=True, kw_only=True)
class Leave(_Header):
    """Leaves on purpose (``finished``: training completed)."""

    type: str = rule(choices=("leave",))
    slot: int = rule(minimum=0, maximum=MAX_SLOTS)
    finished: bool


@dataclass(frozen=True, kw_only=True)
class Beat(_Header):
    """A heartbeat; its channel's sequence number is what the liveness table watches move."""

    type: str = rule(choices=("beat",))
    slot: int = rule(minimum=0, maximum=MAX_SLOTS)
    round: int = rule(minimum=-1, maximum=MAX_COUNT)
    step: int = rule(minimum=-1, maximum=MAX_COUNT)


Request = Join | Arrive | Done | Leave | Beat
REQUEST_TYPES: dict[str, type[Any]] = {
    "join": Join,
    "arrive": Arrive,
    "done": Done,
    "leave": Leave,
    "beat": Beat,
}


def parse_request(body: str) -> Request:
    """A request body (already size-checked inside its envelope) as its typed message."""
    data = decode_json(body, MAX_REQUEST_BYTES)
    kind = data.get("type") if isinstance(data, dict) else None
    message_type = REQUEST_TYPES.get(kind) if isinstance(kind, str) else None
    if message_type is None:
        raise MessageRejected(
            f"unknown request type {str(kind)[:32]!r}; expected one of {list(REQUEST_TYPES)}"
        )
    message: Request = validate(data, message_type)
    if not message.request.startswith(f"{message.incarnation}-"):
        raise MessageRejected("request id does not start with the sender's incarnation")
    return message


@dataclass(frozen=True)
class ReplyBody:
    """The coordinator's answer to request ``request`` (payload checked by the caller's type)."""

    request: str = rule(max_length=96)
    payload: dict[str, Any] = rule(max_length=64)


@dataclass(frozen=True)
class JoinReply:
    status: str = rule(choices=("admitted", "refused", "superseded"))
    slot: int | None = rule(minimum=0, maximum=MAX_SLOTS, default=None)
    epoch: str | None = rule(max_length=64, default=None)
    reason: str | None = rule(max_length=1024, default=None)


@dataclass(frozen=True)
class StatusBody:
    """``coord/status``: the line waiting workers print, and the coordinator's count of rejected messages."""

    status: str = rule(max_length=4096)
    rejected_messages: int = rule(minimum=0, maximum=MAX_COUNT)


@dataclass(frozen=True)
class Announce:
    """``coord/epoch``: the coordinator's life (epoch) and the nonce joins are signed under."""

    epoch: str = rule(max_length=64)
    nonce: str = rule(max_length=64)


@dataclass(frozen=True)
class ElasticFigures:
    slot: int = rule(minimum=0, maximum=MAX_SLOTS)
    rounds_lost: int = rule(minimum=0, maximum=MAX_COUNT)
    inner_steps_lost: int = rule(minimum=0, maximum=MAX_COUNT)
    collective_retries: int = rule(minimum=0, maximum=MAX_COUNT)


@dataclass(frozen=True)
class ResultFigures:
    """The fields of a worker's result that the elastic summary reads (the rest are checked by their use)."""

    global_params_sha256: str = rule(max_length=128)
    elastic: dict[str, Any] = rule(max_length=64)
