"""The coordinator: hosts the run's TCPStore and decides membership; it never touches tensors.

``farsync coordinator --host H --port P`` runs :func:`serve`. The coordinator is the store's server, so it
holds no state a restart could not rebuild: after a restart, workers reconnect to the same port, join
again under the new nonce, and the next quorum is formed from their arrivals (the one at the highest round
heals the others). Every ``tick_s`` it

1. pops at most ``max_per_tick`` requests from ``coord/inbox`` (join, arrive, done, leave, beat; a backlog
   beyond ``max_backlog`` is dropped and counted, so a flood cannot grow without bound) and checks each:
   size before decoding, the typed schema (:mod:`farsync.elastic.messages`), the sender's signature
   (a join's with the session key its claimed identity derives from the token and this life's nonce,
   later ones with the key stored at join) and the sequence number (replays and reordering rejected). A
   message that fails is counted by kind (``rejected_messages``) and logged once per sender; it is never
   raised. Joins are answered at once: the configuration hash must match the first worker's, and a
   refused worker never enters the book, so it has no effect on the run;
2. lets the :class:`~farsync.elastic.quorum.QuorumBook` commit or decide, and publishes its replies, each
   signed with the coordinator key and kept (a worker whose reply key was tampered with asks again and
   gets the same reply);
3. writes ``coord/status`` (signed: the line waiting workers print and the rejection count) and puts back
   ``coord/epoch`` or ``coord/status`` if anything else overwrote them (counted as rejected).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch.distributed as dist

from farsync.comm.auth import (
    SequenceGuard,
    check_mac,
    coordinator_key,
    derive_key,
    open_envelope,
    seal,
    session_key,
)
from farsync.comm.groups import host_store, is_loopback
from farsync.comm.schema import MessageRejected, Rejections, encode
from farsync.elastic.client import ANNOUNCE, INBOX, STATUS
from farsync.elastic.messages import (
    MAX_REQUEST_BYTES,
    Announce,
    Arrive,
    Beat,
    Done,
    Join,
    Leave,
    ReplyBody,
    Request,
    StatusBody,
    parse_request,
)
from farsync.elastic.quorum import Arrival, QuorumBook, Reply
from farsync.elastic.token import read_token

if TYPE_CHECKING:  # torch.distributed re-exports these only at runtime; the stubs live in torch._C
    from torch._C._distributed_c10d import Store

__all__ = ["Coordinator", "serve"]

logger = logging.getLogger(__name__)

_REPLIES_KEPT = 4096
_REFUSALS_KEPT = 100


class Coordinator:
    """Membership for one elastic run, served from ``store`` (which this process hosts).

    Args:
        store: the run's TCPStore, opened as its server.
        token: the run's token; ``None`` admits anyone and checks no signature (an open run).
        min_workers: quorum floor (the workers' ``elastic.min_workers`` if larger is taken at first join).
        tick_s: seconds between polls of the inbox.
        clock: monotonic seconds (tests pass a fake).
        max_per_tick: requests handled per tick at most.
        max_backlog: requests left waiting in the inbox at most; older ones beyond it are dropped (counted).
    """

    def __init__(
        self,
        store: Store,
        *,
        token: bytes | None,
        min_workers: int = 1,
        tick_s: float = 0.01,
        clock: Callable[[], float] = time.monotonic,
        max_per_tick: int = 1000,
        max_backlog: int = 10_000,
    ) -> None:
        self.store, self.token, self.tick_s = store, token, tick_s
        self.max_per_tick, self.max_backlog = max_per_tick, max_backlog
        self.epoch = secrets.token_hex(4)
        self.nonce = secrets.token_hex(16)
        self.key = coordinator_key(token, self.nonce)
        self.book = QuorumBook(min_workers=min_workers, failure_timeout_s=5.0, clock=clock)
        self.config_sha: str | None = None
        self.num_slots: int | None = None
        self.refusals: list[dict[str, Any]] = []
        self.num_refused_joins = 0
        self.superseded: set[str] = set()
        self.rejections = Rejections("coordinator", logger)
        self.observers: list[Callable[[bytes], None]] = []
        """Called with every request that passed every check (the fuzzer's view of captured traffic)."""
        self.num_accepted = 0
        self._sessions: OrderedDict[str, bytes | None] = OrderedDict()
        self._guard = SequenceGuard()
        self._replies: OrderedDict[str, str] = OrderedDict()
        self._stop = threading.Event()
        announce_key = None if token is None else derive_key(token, "announce")
        self._announce = seal(announce_key, "coordinator", encode(Announce(self.epoch, self.nonce)))
        self._status = ""
        self._last_line, self._counted = "starting", 0
        self._publish_status("starting")
        store.set(ANNOUNCE, self._announce)  # last: clients treat this key as "coordinator ready"
        if token is None:
            logger.warning("coordinator: no token file; any worker that reaches this port may join")

    # ------------------------------------------------------------------------------------- requests
    def _reply(self, reply: Reply) -> None:
        body = encode(ReplyBody(reply.request_id, reply.payload))
        sealed = seal(self.key, "coordinator", body)
        self._replies[reply.request_id] = sealed
        while len(self._replies) > _REPLIES_KEPT:
            self._replies.popitem(last=False)
        self.store.set(f"reply/{reply.request_id}", sealed)

    def _refuse(self, slot: int | None, reason: str) -> dict[str, Any]:
        self.num_refused_joins += 1
        if len(self.refusals) < _REFUSALS_KEPT:
            self.refusals.append({"slot": slot, "reason": reason})
        return {"status": "refused", "reason": reason}

    def _join(self, message: Join) -> dict[str, Any]:
        slot, incarnation = message.slot, message.incarnation
        if incarnation in self.superseded:
            return {"status": "superseded", "reason": "a newer incarnation of this worker took its slot"}
        if self.config_sha is None:
            self.config_sha, self.num_slots = message.config_sha, message.num_slots
            if message.failure_timeout_s is not None:
                self.book.failure_timeout_s = message.failure_timeout_s
            if message.min_workers is not None:
                self.book.min_workers = max(self.book.min_workers, message.min_workers)
        elif message.config_sha != self.config_sha:
            reason = "refused: this worker's configuration differs from the run's (compare config.toml)"
            return self._refuse(slot, reason)
        assert self.num_slots is not None
        previous = self.book.admitted.get(slot) if slot is not None else None
        granted, why = self.book.admit(slot, incarnation, self.num_slots)
        if granted is None:
            return {"status": "refused", "reason": f"refused: {why}"}
        if previous is not None and previous != incarnation:
            self.superseded.add(previous)
        return {"status": "admitted", "slot": granted, "epoch": self.epoch}

    def _handle(self, message: Request) -> list[Reply]:
        if isinstance(message, Join):
            return [Reply(message.request, self._join(message))]
        if isinstance(message, Beat):
            self.book.beat(message.slot, message.incarnation, message.sequence, message.round, message.step)
            return []
        if isinstance(message, Arrive):
            arrival = Arrival(
                message.slot, message.incarnation, message.round, message.step, message.sha, message.pending
            )
            return self.book.arrive(message.request, arrival)
        if isinstance(message, Done):
            return self.book.done(
                message.request, message.slot, message.incarnation, message.boundary, message.ok
            )
        assert isinstance(message, Leave)
        self.book.leave(message.slot, message.incarnation, message.finished)
        return []

    def _authenticate(self, raw: bytes) -> Request:
        """The request in ``raw`` once size, schema, signature and sequence passed; else MessageRejected."""
        envelope = open_envelope(raw, MAX_REQUEST_BYTES)
        message = parse_request(envelope.body)
        if envelope.sender != message.incarnation:
            raise MessageRejected("envelope sender differs from the message's incarnation", "signature")
        if isinstance(message, Join):
            key = session_key(self.token, self.nonce, message.slot, message.incarnation)
            try:
                check_mac(key, envelope)
            except MessageRejected:
                self._refuse_bad_proof(message, bool(envelope.mac))
                raise
        elif message.incarnation in self._sessions:
            key = self._sessions[message.incarnation]
            check_mac(key, envelope)
        else:
            raise MessageRejected("a sender that has not joined this coordinator may only join", "unknown")
        if self.token is not None:
            self._guard.accept(message.incarnation, message.channel, message.sequence)
        # Only now: a replayed old join (valid signature, stale sequence) must not replace the session key.
        self._sessions[message.incarnation] = key
        self._sessions.move_to_end(message.incarnation)
        while len(self._sessions) > _REPLIES_KEPT:
            self._sessions.popitem(last=False)
        return message

    def _refuse_bad_proof(self, message: Join, presented: bool) -> None:
        """A join whose signature fails gets a refusal naming why (a worker with the wrong token file).

        The refusal is unsigned (that worker could not verify a signature anyway) and not kept for resends,
        and a join naming an incarnation that already holds a session gets none: otherwise a stranger who
        tampers with a worker's genuine join would make the coordinator answer the worker's own request
        with a refusal. A worker believes an unsigned refusal only when it persists (3 tries).
        """
        if message.incarnation in self._sessions:
            return
        what = "a token that does not match the run's token" if presented else "no token"
        reason = f"refused: worker presented {what}; pass the run's token file with --token-file"
        body = encode(ReplyBody(message.request, self._refuse(message.slot, reason)))
        self.store.set(f"reply/{message.request}", seal(None, "coordinator", body))

    def receive(self, raw: bytes) -> None:
        """Checks and handles one raw request; a bad one is counted and logged once per sender."""
        sender = ""
        try:
            sender = _claimed_sender(raw)
            message = self._authenticate(raw)
        except MessageRejected as error:
            self.rejections.record(sender, error)
            return
        self.num_accepted += 1
        for observe in self.observers:
            observe(raw)
        cached = self._replies.get(message.request)
        if cached is not None:  # the worker asks again (its reply key was overwritten or lost)
            self.store.set(f"reply/{message.request}", cached)
            return
        for reply in self._handle(message):
            self._reply(reply)

    # ------------------------------------------------------------------------------------------ loop
    def _drain(self) -> None:
        backlog = self.store.queue_len(INBOX)
        if backlog > self.max_backlog:
            excess = MessageRejected(f"inbox over its capacity of {self.max_backlog} messages", "capacity")
            for _ in range(backlog - self.max_backlog):
                self.store.queue_pop(INBOX, block=False)
                self.rejections.record("inbox", excess)
        for _ in range(min(backlog, self.max_per_tick)):
            try:
                raw = self.store.queue_pop(INBOX, block=False)
            except dist.QueueEmptyError:
                break
            self.receive(bytes(raw))

    def _publish_status(self, status: str) -> None:
        body = encode(StatusBody(status, self.rejections.total))
        self._status = seal(self.key, "coordinator", body)
        self.store.set(STATUS, self._status)

    def _guard_own_keys(self, status_published: bool) -> None:
        """Puts back the announcement and status if anyone overwrote them (each overwrite counted)."""
        owned = [(ANNOUNCE, self._announce)] + ([] if status_published else [(STATUS, self._status)])
        current = self.store.multi_get([key for key, _ in owned])
        for (key, own), value in zip(owned, current, strict=True):
            if bytes(value).decode(errors="replace") != own:
                self.rejections.record(
                    "store", MessageRejected(f"{key} overwritten by another client", "store")
                )
                self.store.set(key, own)

    def step(self) -> None:
        """One tick: inbox, decisions, status, and a look at the keys only the coordinator may write."""
        self._drain()
        for reply in self.book.tick():
            self._reply(reply)
        status = self.book.status()
        published = status != self._last_line or self._counted != self.rejections.total
        if published:
            if status != self._last_line:
                logger.info("coordinator: %s", status)
            self._last_line, self._counted = status, self.rejections.total
            self._publish_status(status)
        self._guard_own_keys(published)

    def drain(self, timeout_s: float = 10.0) -> None:
        """Handles what is left in the inbox (a run's end: nothing is left uncounted)."""
        deadline = time.monotonic() + timeout_s
        while self.store.queue_len(INBOX) and time.monotonic() < deadline:
            self._drain()

    def run(self) -> None:
        """Ticks until :meth:`stop`."""
        while not self._stop.is_set():
            self.step()
            self._stop.wait(self.tick_s)

    def stop(self) -> None:
        self._stop.set()

    def start_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="farsync-coordinator", daemon=True)
        thread.start()
        return thread

    def summary(self) -> dict[str, Any]:
        """Counters for the run summary."""
        return {
            "num_quorum_changes": self.book.num_quorum_changes,
            "worker_failures": self.book.worker_failures,
            "num_refused_joins": self.num_refused_joins,
            "rejected_by_coordinator": self.rejections.total,
            "rejected_by_kind": dict(sorted(self.rejections.by_kind.items())),
        }


def _claimed_sender(raw: bytes) -> str:
    """Who a raw request claims to come from, for the log (never trusted; "" when unreadable)."""
    if len(raw) > MAX_REQUEST_BYTES:
        return "an oversized message"
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return ""
    sender = data.get("sender") if isinstance(data, dict) else None
    return sender[:40] if isinstance(sender, str) else ""


def serve(
    port: int, min_workers: int = 1, token_file: str | Path | None = None, host: str = "127.0.0.1"
) -> int:
    """``farsync coordinator``: hosts the store on ``host:port`` (that address only) and coordinates until
    interrupted. Warns when the address is not a loopback one: see docs/elastic.md for what the store's
    port exposes and how to deploy across sites."""
    from farsync.config import ConfigError

    if min_workers < 1:
        raise ConfigError("--min-workers", min_workers, "must be >= 1")
    token = read_token(token_file)
    try:
        store = host_store(host, port)
    except OSError as error:
        if "in use" in str(error).lower():
            raise ConfigError("--port", port, f"{host}:{port} is already in use; pick another port") from None
        raise ConfigError(
            "--host", host, f"cannot listen on {host}:{port} ({error.strerror or error})"
        ) from None
    if not is_loopback(host):
        logger.warning(
            "coordinator: listening on %s, which is not a loopback address: anyone who reaches port %d can "
            "read and write the run's store (gloo rendezvous included); keep it on a private network or a "
            "tunnel (docs/elastic.md, 'Deploying across sites')",
            host,
            store.port,
        )
    coordinator = Coordinator(store, token=token, min_workers=min_workers)
    print(
        f"farsync coordinator on {host}:{store.port} (epoch {coordinator.epoch}, min_workers {min_workers}, "
        f"{'token required' if token else 'open: no token'})",
        flush=True,
    )
    seen = 0
    try:
        while True:
            coordinator.step()
            for event in coordinator.book.events[seen:]:
                print(json.dumps(event), flush=True)
            seen = len(coordinator.book.events)
            if coordinator.book.finished and not coordinator.book.admitted:
                print("run finished; coordinator exits", flush=True)
                return 0
            time.sleep(coordinator.tick_s)
    except KeyboardInterrupt:
        return 130
