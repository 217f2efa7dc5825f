"""A worker's side of the coordinator protocol: join with the token, heartbeat, and remote calls.

Messages go to the coordinator through a queue in its TCPStore (``coord/inbox``), each a signed envelope
(:mod:`farsync.comm.auth`) around a typed request (:mod:`farsync.elastic.messages`): the session key is
derived at join from the run's token, the coordinator's nonce, the slot and this process's incarnation,
and every request carries the next sequence number of its channel. Each request names a reply key
(``reply/<request id>``) that the worker polls; a reply counts only once the coordinator's signature and
the request id check out. Anything else found there (a stranger's value) is rejected, counted and removed,
and the request is sent again (the coordinator answers a repeated request with the reply it kept). A
request left unanswered for ``resend_s`` is sent again too (the coordinator may have dropped it from a
flooded inbox). Polling with ``check`` never blocks inside the store, so a worker notices at once when the
coordinator goes away: it reconnects (retrying until the coordinator is back), joins again under the new
coordinator's nonce, and sends its request again.

Keys (all in the coordinator's store; a stranger who reaches the port can write any of them, which is why
every value read here is checked):

=========================  ==========================================================================
``coord/epoch``            the coordinator's announcement: its life (epoch) and nonce, signed with a key
                           derived from the token (changes when it restarts)
``coord/status``           one signed line for terminals: what the next quorum is waiting for
``coord/inbox``            queue of signed requests (join, arrive, done, leave, beat)
``reply/<id>``             the coordinator's signed answer to one request
``result/<slot>``          queue of a finished worker's signed result (:mod:`farsync.elastic.summary`)
``elastic/<epoch>/q<id>``  prefix of quorum ``id``'s process group (gloo rendezvous: not authenticated)
=========================  ==========================================================================
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from farsync.comm.auth import check_mac, coordinator_key, derive_key, open_envelope, seal, session_key
from farsync.comm.groups import open_store
from farsync.comm.schema import MessageRejected, Rejections, decode_json, encode, validate
from farsync.elastic.heartbeat import HeartbeatSender
from farsync.elastic.messages import (
    MAX_REPLY_BYTES,
    Announce,
    JoinReply,
    ReplyBody,
    StatusBody,
)

if TYPE_CHECKING:  # torch.distributed re-exports these only at runtime; the stubs live in torch._C
    from torch._C._distributed_c10d import Store, TCPStore

__all__ = [
    "ANNOUNCE",
    "EXIT_COORDINATOR_LOST",
    "INBOX",
    "STATUS",
    "CoordinatorClient",
    "CoordinatorLost",
    "JoinRefused",
    "RunFinished",
    "Superseded",
    "config_digest",
    "parse_address",
]

logger = logging.getLogger(__name__)

INBOX = "coord/inbox"
ANNOUNCE = "coord/epoch"
STATUS = "coord/status"
_STORE_ERRORS = (RuntimeError, OSError, ValueError)
_REFUSALS_BEFORE_GIVING_UP = 3


EXIT_COORDINATOR_LOST = 5
"""Exit code of a worker that gave up on an unreachable coordinator."""


class CoordinatorLost(Exception):
    """The coordinator stayed unreachable for ``elastic.coordinator_timeout_s``; the worker gives up.

    Deliberately not an ``OSError`` or ``RuntimeError``: the retry loops around store and collective errors
    catch those, and this one must end the worker.
    """


class JoinRefused(Exception):
    """The coordinator refused this worker (wrong or missing token, run full, different config)."""


class Superseded(Exception):
    """A newer incarnation of this worker took its slot; this process must stop."""


class RunFinished(Exception):
    """The run completed before this worker could join."""


def parse_address(text: str) -> tuple[str, int]:
    """``"HOST:PORT"`` -> (host, port); raises ConfigError naming ``--coordinator``."""
    from farsync.config import ConfigError

    host, _, port = str(text).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("--coordinator", text, "expected HOST:PORT, e.g. 127.0.0.1:29400")
    return host, int(port)


class CoordinatorClient:
    """One worker's connection to the coordinator (main-thread calls plus a heartbeat thread).

    Args:
        host, port: the coordinator's store.
        token: the run's token (``None`` for an open run: nothing is signed or verified).
        slot: the worker slot to ask for (its data shard); ``None`` takes the lowest free one.
        config_sha: hash of the run configuration; the coordinator refuses workers whose config differs.
        num_slots: ``num_workers`` of the configuration (how many slots, hence data shards, there are).
        elastic: the ``[elastic]`` section as a dict (timeouts the coordinator adopts).
        progress: returns (round, step) for the heartbeat.
        say: where waiting messages go (the terminal).
        connect_timeout_s: how long to keep trying to reach the coordinator before raising
            :class:`CoordinatorLost`; ``elastic["coordinator_timeout_s"]`` wins when present.
        resend_s: a request unanswered this long is sent again.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        token: bytes | None,
        slot: int | None,
        config_sha: str,
        num_slots: int,
        elastic: dict[str, Any],
        progress: Callable[[], tuple[int, int]] = lambda: (-1, -1),
        say: Callable[[str], None] | None = None,
        poll_s: float = 0.01,
        connect_timeout_s: float = 120.0,
        resend_s: float = 10.0,
    ) -> None:
        self.host, self.port = host, port
        self.token, self.slot = token, slot
        self.config_sha, self.num_slots, self.elastic = config_sha, num_slots, elastic
        self.progress = progress
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.poll_s, self.resend_s = poll_s, resend_s
        self.connect_timeout_s = float(elastic.get("coordinator_timeout_s", connect_timeout_s))
        self.incarnation = secrets.token_hex(6)
        self.epoch: str | None = None
        self.rejections = Rejections("worker", logger)
        self.result_key = None if token is None else derive_key(token, "result")
        self._announce_key = None if token is None else derive_key(token, "announce")
        self._session: bytes | None = None
        self._coordinator_key: bytes | None = None
        self._lock = threading.Lock()
        self._sequences = {"main": 0, "beat": 0}
        self._requests = 0
        self._heartbeat: HeartbeatSender | None = None
        self.store = self.connect()

    # ----------------------------------------------------------------------------------- connection
    def connect(self) -> TCPStore:
        """A new store connection; retries (saying so) until the coordinator answers or the time is up."""
        deadline = time.monotonic() + self.connect_timeout_s
        announced = False
        while True:
            try:
                # Probe with a plain socket first: a TCPStore client that cannot connect logs C++ stack traces.
                socket.create_connection((self.host, self.port), timeout=1.0).close()
                store = open_store(self.host, self.port, 1, is_master=False, timeout_s=5.0)
                if store.check([ANNOUNCE]):
                    return store
            except _STORE_ERRORS:
                pass
            if time.monotonic() > deadline:
                who = "worker" if self.slot is None else f"worker {self.slot}"
                raise CoordinatorLost(
                    f"{who}: coordinator {self.host}:{self.port} unreachable for {self.connect_timeout_s:g}s "
                    "(elastic.coordinator_timeout_s); giving up"
                )
            if not announced:
                self.say(f"worker: coordinator {self.host}:{self.port} not reachable; retrying")
                announced = True
            time.sleep(0.2)

    def _announcement(self, store: Store) -> tuple[Announce, bool] | None:
        """The coordinator's (epoch, nonce) and whether its signature checks out; None when unreadable."""
        try:
            envelope = open_envelope(bytes(store.get(ANNOUNCE)), MAX_REPLY_BYTES)
            announce = validate(decode_json(envelope.body, MAX_REPLY_BYTES), Announce)
        except MessageRejected as error:
            self.rejections.record("store", error)
            return None
        try:
            check_mac(self._announce_key, envelope)
        except MessageRejected as error:
            self.rejections.record("store", error)
            return announce, False
        return announce, True

    def _epoch(self, store: Store) -> str | None:
        """The current coordinator's epoch; None when the announcement is unreadable or forged."""
        found = self._announcement(store)
        return found[0].epoch if found is not None and found[1] else None

    def _patient_announcement(self, store: Store) -> Announce:
        """A verified announcement, waiting a little (the coordinator puts back an overwritten one); after
        that an unverified one (a worker with the wrong token cannot verify any, and learns why from the
        coordinator's refusal)."""
        unverified: Announce | None = None
        for _ in range(10):
            found = self._announcement(store)
            if found is not None and found[1]:
                return found[0]
            if found is not None:
                unverified = found[0]
            time.sleep(0.05)
        if unverified is None:
            raise ConnectionError("the coordinator's announcement (coord/epoch) is unreadable")
        return unverified

    def register(self, store: Store, channel: str = "main") -> None:
        """Joins (again) if the coordinator on ``store`` has not admitted this incarnation yet."""
        with self._lock:
            refusals = 0
            while True:
                announce = self._patient_announcement(store)
                if announce.epoch == self.epoch:
                    return
                self._session = session_key(self.token, announce.nonce, self.slot, self.incarnation)
                self._coordinator_key = coordinator_key(self.token, announce.nonce)
                message = {
                    "type": "join",
                    "slot": self.slot,
                    "config_sha": self.config_sha,
                    "num_slots": self.num_slots,
                    **{k: self.elastic[k] for k in _JOIN_TERMS if self.elastic.get(k) is not None},
                }
                found = self._request(store, message, announce.epoch, channel, join=True)
                if found is None:
                    raise ConnectionError("coordinator restarted during join")
                reply, verified = found
                if reply.status == "superseded" and verified:
                    raise Superseded(str(reply.reason))
                if reply.status == "admitted" and verified and reply.slot is not None:
                    break
                if verified:
                    raise JoinRefused(str(reply.reason or reply.status))
                refusals += 1  # an unverified answer may be a stranger's: believe it only when it persists
                if refusals >= _REFUSALS_BEFORE_GIVING_UP:
                    raise JoinRefused(str(reply.reason) if reply.status == "refused" else _UNSIGNED)
            self.slot = reply.slot
            self.epoch = announce.epoch
            self._beat_now(store, channel)
            logger.info("worker %d admitted by coordinator %s", self.slot, announce.epoch)

    def _send(self, store: Store, message: dict[str, Any], channel: str) -> None:
        self._sequences[channel] += 1
        body = {**message, "incarnation": self.incarnation, "channel": channel}
        body["sequence"] = self._sequences[channel]
        body.setdefault("request", f"{self.incarnation}-{channel}-s{body['sequence']}")  # beat, leave
        store.queue_push(INBOX, seal(self._session, self.incarnation, encode(body)))

    def _open_reply(self, raw: bytes, request_id: str) -> tuple[dict[str, Any], bool]:
        """The payload in a reply key's value and whether the coordinator signed it (MessageRejected when
        it is not even a well-formed reply to this request)."""
        envelope = open_envelope(raw, MAX_REPLY_BYTES)
        reply = validate(decode_json(envelope.body, MAX_REPLY_BYTES), ReplyBody)
        if reply.request != request_id:
            raise MessageRejected("a reply to another request", "replay")
        try:
            check_mac(self._coordinator_key, envelope)
        except MessageRejected:
            return reply.payload, False
        return reply.payload, True

    def _request(
        self,
        store: Store,
        message: dict[str, Any],
        epoch: str,
        channel: str,
        on_wait: Callable[[float], None] | None = None,
        join: bool = False,
    ) -> Any:
        """Sends one request and polls for its verified reply (a join returns ``(JoinReply, verified)``,
        signed or not); None if the coordinator changed meanwhile."""
        self._requests += 1
        request_id = f"{self.incarnation}-{channel}-{self._requests}"
        message = {**message, "request": request_id}
        key = f"reply/{request_id}"
        self._send(store, message, channel)
        begin = sent = time.monotonic()
        polls = 0
        while True:
            if store.check([key]):
                raw = bytes(store.get(key))
                store.delete_key(key)
                try:
                    payload, verified = self._open_reply(raw, request_id)
                    if join:  # the caller decides what an unverified answer to a join is worth
                        return validate(payload, JoinReply), verified
                    if verified:
                        return payload
                    raise MessageRejected("reply signature does not match the coordinator's", "signature")
                except MessageRejected as error:
                    self.rejections.record("reply keys", error)
                self._send(store, message, channel)  # the coordinator publishes the reply it kept again
                sent = time.monotonic()
                continue
            time.sleep(self.poll_s)
            polls += 1
            if polls % 25 == 0:
                current = self._epoch(store)
                if current is not None and current != epoch:
                    return None
            now = time.monotonic()
            if now - sent > self.resend_s:
                self._send(store, message, channel)
                sent = now
            if on_wait is not None:
                on_wait(now - begin)

    # --------------------------------------------------------------------------------------- calls
    def status(self, store: Store | None = None) -> StatusBody | None:
        """The coordinator's signed status (None when missing, forged or unreadable)."""
        store = store or self.store
        try:
            if not store.check([STATUS]):
                return None
            envelope = open_envelope(bytes(store.get(STATUS)), MAX_REPLY_BYTES)
            check_mac(self._coordinator_key, envelope)
            return validate(decode_json(envelope.body, MAX_REPLY_BYTES), StatusBody)
        except MessageRejected as error:
            self.rejections.record(STATUS, error)
        except _STORE_ERRORS:
            pass
        return None

    def call(self, message: dict[str, Any], *, wait_message: str = "") -> dict[str, Any]:
        """Sends ``message`` (with this worker's identity) and returns the reply, surviving coordinator
        restarts and re-joining when the coordinator no longer knows this worker."""
        last_said = [0.0]

        def on_wait(waited: float) -> None:
            if wait_message and waited - last_said[0] >= 5.0:
                last_said[0] = waited
                status = self.status()
                line = status.status if status is not None else "status unverified"
                self.say(f"worker {self.slot}: {wait_message} for {waited:.0f}s ({line})")

        while True:
            self._check_heartbeat()
            try:
                self.register(self.store)
                assert self.epoch is not None
                full = {**message, "slot": self.slot}
                reply: dict[str, Any] | None = self._request(self.store, full, self.epoch, "main", on_wait)
            except _STORE_ERRORS + (ConnectionError,) as error:
                self.say(
                    f"worker {self.slot}: lost the coordinator ({error.__class__.__name__}); reconnecting"
                )
                self.store = self.connect()
                continue
            if reply is None:
                self.say(f"worker {self.slot}: coordinator restarted; joining it again")
                continue
            if reply.get("error") == "unknown":
                self.epoch = None  # declared dead or coordinator forgot us: join again, then resend
                continue
            if reply.get("finished"):
                raise RunFinished("the run finished")
            return reply

    def _check_heartbeat(self) -> None:
        if self._heartbeat is not None and self._heartbeat.error is not None:
            raise self._heartbeat.error

    # ----------------------------------------------------------------------------------- heartbeat
    def _beat_now(self, store: Store, channel: str) -> None:
        round_index, step = self.progress()
        self._send(store, {"type": "beat", "slot": self.slot, "round": round_index, "step": step}, channel)

    def _beat(self, store: Store) -> None:
        if self._epoch(store) not in (self.epoch, None):
            self.register(store, "beat")
        self._beat_now(store, "beat")

    def start_heartbeat(self, interval_s: float) -> None:
        self._heartbeat = HeartbeatSender(self.connect, self._beat, interval_s)
        self._heartbeat.start()

    def leave(self, finished: bool) -> None:
        """Tells the coordinator this worker leaves on purpose (best effort) and stops the heartbeat."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
        try:
            message = {"type": "leave", "slot": self.slot, "finished": finished}
            self._requests += 1
            self._send(
                self.store, {**message, "request": f"{self.incarnation}-main-{self._requests}"}, "main"
            )
        except _STORE_ERRORS:
            pass


_UNSIGNED = (
    "refused: the coordinator's answers are not signed with this run's token (it runs without a token "
    "file, or another process answers on its port); not joining"
)

_JOIN_TERMS = ("min_workers", "failure_timeout_s", "heartbeat_interval_s")
"""The ``[elastic]`` settings a join carries (the first join's become the coordinator's)."""


def config_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
