"""A seeded protocol fuzzer: a stranger on the coordinator's port who sends malformed and forged traffic.

:class:`Fuzzer` connects to a run's TCPStore as any client can and, at a bounded rate, sends what a hostile
or broken peer would (each message's kind is drawn from a seeded generator, so a run is reproducible):

* ``garbage``: bytes that are not JSON (the issue's ``b"not json at all"``, invalid UTF-8, random bytes);
* ``malformed``: JSON of the wrong shape (a bare request without envelope, wrong types, missing fields,
  out-of-range numbers, ``NaN``, unknown types, deep nesting);
* ``huge``: a message over the receiver's size limit;
* ``forged``: a leave, arrive, done, beat or join that names a real worker's slot and incarnation (stolen
  from captured traffic) with a fresh sequence number and a made-up signature;
* ``replay``: a genuine message captured earlier, sent again byte for byte;
* ``tampered``: a genuine message with one field changed and its original signature;
* ``overwrite``: a store key the protocol reads (found with ``list_keys``: replies, status, announcement)
  overwritten with garbage or with another key's genuine value;
* ``forged_result``: a garbage or forged entry pushed onto a worker's result queue.

What it knows of the traffic comes from :meth:`Fuzzer.capture`, which the harness calls with every genuine
request (an on-path observer sees as much). It never touches keys outside :class:`FuzzTargets`: the gloo
rendezvous keys and the data plane are outside what the protocol can authenticate (docs/elastic.md).
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from farsync.comm.groups import open_store

__all__ = ["INBOX_KINDS", "FuzzPlan", "FuzzReport", "FuzzTargets", "Fuzzer"]

logger = logging.getLogger(__name__)

INBOX_KINDS = ("garbage", "malformed", "huge", "forged", "replay", "tampered")
"""Kinds of fuzzed messages that go to the inbox (every one must be rejected by the coordinator)."""
_WEIGHTS = {
    "garbage": 3,
    "malformed": 4,
    "forged": 6,
    "replay": 4,
    "tampered": 4,
    "overwrite": 4,
    "forged_result": 1,
}


@dataclass(kw_only=True)
class FuzzPlan:
    """How much to send and how fast."""

    num_messages: int = 1000
    """Messages to send in all (fewer if stopped first)."""
    seed: int = 0
    """Seed of every random choice."""
    rate_per_s: float = 500.0
    """Messages per second at most."""
    huge_every: int = 200
    """One message in this many is oversized (``huge``)."""
    huge_bytes: int = 1 << 20
    """Size of an oversized message."""


@dataclass(frozen=True)
class FuzzTargets:
    """Where the fuzzed protocol reads from (given by the harness: the fuzzer knows no protocol by name)."""

    inbox: str
    """The queue requests go to."""
    key_prefixes: tuple[str, ...]
    """Keys a stranger overwrites (those starting with one of these)."""
    queues: tuple[str, ...] = ()
    """Queues of signed values a stranger pushes forgeries onto."""


@dataclass
class _Captured:
    raw: bytes
    envelope: dict[str, Any]
    body: dict[str, Any]


@dataclass
class FuzzReport:
    """Messages sent, by kind (``inbox_tried``: those that went to the inbox, each of which must be rejected)."""

    tried: Counter[str] = field(default_factory=Counter)

    @property
    def inbox_tried(self) -> int:
        return sum(self.tried[kind] for kind in INBOX_KINDS)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tried": sum(self.tried.values()),
            "inbox_tried": self.inbox_tried,
            "by_kind": dict(sorted(self.tried.items())),
        }


class Fuzzer:
    """Sends ``plan.num_messages`` fuzzed messages to the store at ``host:port`` from a thread of its own.

    Args:
        host, port: the run's store.
        targets: the inbox, overwritable keys and result queues.
        plan: how many, how fast, which seed.
    """

    def __init__(self, host: str, port: int, targets: FuzzTargets, plan: FuzzPlan) -> None:
        self.targets, self.plan = targets, plan
        self.rng = random.Random(plan.seed)
        self.store = open_store(host, port, 1, is_master=False, timeout_s=1.0)
        self.report = FuzzReport()
        self._captured: deque[_Captured] = deque(maxlen=256)
        self._keys: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="farsync-fuzzer", daemon=True)

    # ------------------------------------------------------------------------------------- harness
    def capture(self, raw: bytes) -> None:
        """A genuine message seen on the wire (kept for forgeries and replays)."""
        try:
            envelope = json.loads(raw)
            self._captured.append(_Captured(bytes(raw), envelope, json.loads(envelope["body"])))
        except (ValueError, KeyError, TypeError):
            pass

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    @property
    def done(self) -> bool:
        return sum(self.report.tried.values()) >= self.plan.num_messages

    def _run(self) -> None:
        interval = 1.0 / self.plan.rate_per_s
        while not self._stop.is_set() and not self.done:
            begin = time.monotonic()
            try:
                self.send_one()
            except (RuntimeError, OSError, ValueError) as error:  # the store went away: the run is over
                logger.info("fuzzer: store unreachable (%s); stopping", error)
                return
            self._stop.wait(max(0.0, interval - (time.monotonic() - begin)))

    # ------------------------------------------------------------------------------------ messages
    def send_one(self) -> str:
        """Sends one fuzzed message; returns its kind."""
        count = sum(self.report.tried.values())
        if self.plan.huge_every and count % self.plan.huge_every == self.plan.huge_every - 1:
            kind = "huge"
            self.store.queue_push(self.targets.inbox, self._huge())
        else:
            kind = self.rng.choices(list(_WEIGHTS), weights=list(_WEIGHTS.values()))[0]
            if kind == "overwrite":
                kind = self._overwrite()
            elif kind == "forged_result":
                kind = self._forged_result()
            else:
                self.store.queue_push(self.targets.inbox, getattr(self, f"_{kind}")())
        self.report.tried[kind] += 1
        return kind

    def _garbage(self) -> bytes:
        choice = self.rng.randrange(4)
        if choice == 0:
            return b"not json at all"
        if choice == 1:
            return b"\xff\xfe" + self.rng.randbytes(30)
        if choice == 2:
            return b'{"sender": "x", "body": '  # truncated JSON
        return self.rng.randbytes(self.rng.randrange(1, 200))

    def _malformed(self) -> bytes:
        stolen = self._stolen()
        body_options: list[Any] = [
            {"type": "arrive", "slot": 0},
            {**stolen, "type": "arrive", "slot": "zero", "round": 1, "step": 1, "sha": "x", "pending": True},
            {**stolen, "type": "done", "boundary": -5, "ok": True},
            {**stolen, "type": "beat", "round": 10**30, "step": 0},
            {**stolen, "type": "leave", "finished": "yes"},
            {**stolen, "type": "shutdown"},
            {**stolen, "type": "join", "slot": None, "num_slots": 0, "config_sha": 7},
            [1, 2, 3],
        ]
        whole_options: list[bytes] = [
            json.dumps(self.rng.choice(body_options)).encode(),  # a bare request, no envelope
            b'{"sender": "a", "body": "{\\"type\\": \\"beat\\", \\"round\\": NaN}", "mac": ""}',
            json.dumps({"sender": 5, "body": [], "mac": {}}).encode(),
            b"[" * 5000 + b"]" * 5000,
            b"42",
            b"null",
        ]
        if self.rng.random() < 0.5:
            body = json.dumps(self.rng.choice(body_options))
            return json.dumps({"sender": stolen["incarnation"], "body": body, "mac": "0" * 64}).encode()
        return self.rng.choice(whole_options)

    def _huge(self) -> bytes:
        stolen = self._stolen()
        body = json.dumps({**stolen, "type": "beat", "slot": 0, "round": 0, "step": 0, "pad": "x" * 64})
        padding = "y" * self.plan.huge_bytes
        return json.dumps({"sender": stolen["incarnation"], "body": body, "mac": padding}).encode()

    def _stolen(self) -> dict[str, Any]:
        """A real worker's identity from captured traffic (a made-up one before any was captured)."""
        if not self._captured:
            incarnation = secrets.token_hex(6)
            return {
                "incarnation": incarnation,
                "request": f"{incarnation}-main-1",
                "sequence": 1,
                "channel": "main",
            }
        body = self.rng.choice(self._captured).body
        return {
            "incarnation": body.get("incarnation"),
            "request": f"{body.get('incarnation')}-main-{self.rng.randrange(1, 10**6)}",
            "sequence": int(body.get("sequence", 0)) + self.rng.randrange(1, 1000),
            "channel": body.get("channel", "main"),
        }

    def _forged(self) -> bytes:
        stolen = self._stolen()
        slot = self.rng.randrange(4)
        bodies = [
            {"type": "leave", "slot": slot, "finished": self.rng.random() < 0.5},
            {"type": "arrive", "slot": slot, "round": 10**6, "step": 10**7, "sha": "f" * 64, "pending": True},
            {"type": "done", "slot": slot, "boundary": self.rng.randrange(100), "ok": False},
            {"type": "beat", "slot": slot, "round": 0, "step": 0},
            {"type": "join", "slot": slot, "config_sha": "forged", "num_slots": 4},
        ]
        body = json.dumps({**stolen, **self.rng.choice(bodies)}, sort_keys=True, separators=(",", ":"))
        mac = self.rng.choice(["", secrets.token_hex(32), self._a_genuine_mac()])
        return json.dumps({"sender": stolen["incarnation"], "body": body, "mac": mac}).encode()

    def _a_genuine_mac(self) -> str:
        return str(self.rng.choice(self._captured).envelope.get("mac", "")) if self._captured else ""

    def _replay(self) -> bytes:
        if not self._captured:
            return self._forged()
        return self.rng.choice(self._captured).raw

    def _tampered(self) -> bytes:
        if not self._captured:
            return self._forged()
        captured = self.rng.choice(self._captured)
        body = dict(captured.body)
        changes = {"finished": True, "ok": False, "pending": False, "round": 10**6, "sequence": 10**9}
        name = self.rng.choice([key for key in changes if key in body] or ["sequence"])
        body[name] = changes[name]
        if self.rng.random() < 0.3:
            body["slot"] = (int(body.get("slot") or 0) + 1) % 4
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return json.dumps({**captured.envelope, "body": text}).encode()

    def _overwrite(self) -> str:
        if not self._keys or self.rng.random() < 0.05:
            prefixes = self.targets.key_prefixes
            self._keys = [k for k in self.store.list_keys() if k.startswith(prefixes)]
        if not self._keys:
            self.store.queue_push(self.targets.inbox, self._garbage())
            return "garbage"
        key = self.rng.choice(self._keys)
        if self.rng.random() < 0.5 and len(self._keys) > 1:
            value = self._read(self.rng.choice(self._keys))
        else:
            value = self.rng.choice(
                [b"not json at all", b"{}", b'{"sender":"coordinator","body":"{}","mac":""}']
            )
        self.store.set(key, value)  # type: ignore[arg-type]  # the binding takes bytes too
        return "overwrite"

    def _read(self, key: str) -> bytes:
        """A key's genuine value, or b"gone" when a reader deleted it meanwhile (the store's get would
        wait for it to come back)."""
        try:
            return bytes(self.store.get(key)) if self.store.check([key]) else b"gone"
        except RuntimeError:  # deleted between check and get: get timed out
            return b"gone"

    def _forged_result(self) -> str:
        if not self.targets.queues:
            self.store.queue_push(self.targets.inbox, self._garbage())
            return "garbage"
        queue = self.rng.choice(self.targets.queues)
        body = json.dumps({"global_params_sha256": "0" * 64, "elastic": {"slot": 0}})
        value = self.rng.choice(
            [b"not json", json.dumps({"sender": "slot0", "body": body, "mac": "1" * 64}).encode()]
        )
        self.store.queue_push(queue, value)
        return "forged_result"
