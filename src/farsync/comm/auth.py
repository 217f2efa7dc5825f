"""Authenticated control messages: keys derived from a run's shared token, signed envelopes, replay guards.

Keys never travel. From the run's token (a secret file every legitimate process holds) each party derives
the key it needs with HMAC-SHA256 over a label and public values (:func:`derive_key`):

* a **session key** per worker life, ``derive_key(token, "session", nonce, slot, incarnation)``, where the
  nonce is the coordinator's random challenge of its current life: a worker signs every request with it;
* the **coordinator key**, ``derive_key(token, "coordinator", nonce)``: the coordinator signs its replies,
  its status line and its quorum decisions with it, and workers verify them;
* fixed-label keys (``derive_key(token, "announce")``, ``derive_key(token, "result")``) for values that
  must outlive one coordinator nonce.

A signed message travels as an envelope, ``{"sender": ..., "body": "<JSON text>", "mac": "<hex>"}``: the
MAC covers the body's exact bytes, so nothing is re-serialised before checking (a receiver that learns
the key from the body itself, as the coordinator does for a join, decodes the size-checked body first). Without a token (an open run) the key is ``None``: envelopes carry an empty MAC
and every check passes, as the open run's warning says.

Replays: every signed request carries a sequence number that grows by one per message on its channel (one
store connection); :class:`SequenceGuard` accepts a number only if it is above the last one accepted on that
channel, so a captured message replayed later, or two swapped, are rejected. Signing is per control
message (a few per outer round and heartbeat), never per tensor.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import OrderedDict
from dataclasses import dataclass

from farsync.comm.schema import MessageRejected, decode_json, rule, validate

__all__ = [
    "Envelope",
    "SequenceGuard",
    "check_mac",
    "coordinator_key",
    "derive_key",
    "open_envelope",
    "seal",
    "session_key",
]

MAC_HEX_CHARS = 64
"""Length of an HMAC-SHA256 in hex."""


@dataclass(frozen=True)
class Envelope:
    """A signed message on the wire: who claims to send it, its JSON body as text, and the body's MAC."""

    sender: str = rule(max_length=64)
    body: str = rule(max_length=1 << 26)  # bounded in practice by the caller's max_bytes on the raw message
    mac: str = rule(max_length=MAC_HEX_CHARS)


def derive_key(token: bytes, label: str, *parts: object) -> bytes:
    """HMAC-SHA256 of ``farsync|label|part|...`` under ``token``: one key per purpose, none sent."""
    message = "|".join(["farsync", label, *(str(part) for part in parts)]).encode()
    return hmac.new(token, message, hashlib.sha256).digest()


def session_key(token: bytes | None, nonce: str, slot: int | None, incarnation: str) -> bytes | None:
    """A worker's key for one coordinator life (``None`` in an open run)."""
    return None if token is None else derive_key(token, "session", nonce, slot, incarnation)


def coordinator_key(token: bytes | None, nonce: str) -> bytes | None:
    """The coordinator's signing key for one life (``None`` in an open run)."""
    return None if token is None else derive_key(token, "coordinator", nonce)


def _mac(key: bytes, body: str) -> str:
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def seal(key: bytes | None, sender: str, body: str) -> str:
    """The envelope of ``body`` (JSON text) signed with ``key`` (an empty MAC when ``key`` is None)."""
    mac = "" if key is None else _mac(key, body)
    return json.dumps({"sender": sender, "body": body, "mac": mac}, separators=(",", ":"))


def open_envelope(raw: bytes | str, max_bytes: int) -> Envelope:
    """The envelope in ``raw`` (size and shape checked, MAC not yet)."""
    return validate(decode_json(raw, max_bytes), Envelope)


def check_mac(key: bytes | None, envelope: Envelope) -> None:
    """Raises :class:`MessageRejected` unless ``envelope``'s MAC was made with ``key`` (always passes
    when ``key`` is None: an open run)."""
    if key is None:
        return
    if not hmac.compare_digest(_mac(key, envelope.body).encode(), envelope.mac.encode()):
        raise MessageRejected(
            f"signature of a message from {envelope.sender[:16]!r} does not match", "signature"
        )


class SequenceGuard:
    """Accepts each channel's sequence numbers only in increasing order (replays and reordering rejected).

    Args:
        max_channels: channels remembered (least recently used forgotten first). Only messages that passed
            their MAC reach the guard, so a stranger cannot fill it.
    """

    def __init__(self, max_channels: int = 4096) -> None:
        self.max_channels = max_channels
        self._last: OrderedDict[tuple[str, str], int] = OrderedDict()

    def accept(self, sender: str, channel: str, sequence: int) -> None:
        """Records ``sequence`` on (sender, channel); raises :class:`MessageRejected` if not above the last."""
        key = (sender, channel)
        last = self._last.get(key)
        if last is not None and sequence <= last:
            raise MessageRejected(
                f"replayed or reordered message from {sender[:16]!r} ({channel}): sequence {sequence} "
                f"after {last}",
                "replay",
            )
        self._last[key] = sequence
        self._last.move_to_end(key)
        while len(self._last) > self.max_channels:
            self._last.popitem(last=False)
