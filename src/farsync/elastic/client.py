"""A worker's side of the coordinator protocol: join with the token, heartbeat, and remote calls.

Messages go to the coordinator through a queue in its TCPStore (``coord/inbox``); each request names a
reply key (``reply/<request id>``) that the worker polls. Polling with ``check`` never blocks inside the
store, so a worker notices at once when the coordinator goes away: it reconnects (retrying until the
coordinator is back), joins again under the new coordinator's nonce, and sends its request again.

Keys (all in the coordinator's store):

=========================  ==========================================================================
``coord/epoch``            random id of the coordinator's current life (changes when it restarts)
``coord/nonce``            the challenge a joining worker signs with the run's token
``coord/status``           one line for terminals: what the next quorum is waiting for
``coord/inbox``            queue of requests (join, arrive, done, leave)
``reply/<id>``             the coordinator's answer to one request
``hb/<slot>``              heartbeat: incarnation, sequence number, round and step
``elastic/<epoch>/q<id>``  prefix of quorum ``id``'s process group
=========================  ==========================================================================
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from farsync.comm.groups import open_store
from farsync.elastic.heartbeat import HeartbeatSender
from farsync.elastic.token import make_proof

if TYPE_CHECKING:  # torch.distributed re-exports these only at runtime; the stubs live in torch._C
    from torch._C._distributed_c10d import Store, TCPStore

__all__ = [
    "EXIT_COORDINATOR_LOST",
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
_STORE_ERRORS = (RuntimeError, OSError, ValueError)


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
        token: the run's token (``None`` for an open run).
        slot: the worker slot to ask for (its data shard); ``None`` takes the lowest free one.
        config_sha: hash of the run configuration; the coordinator refuses workers whose config differs.
        num_slots: ``num_workers`` of the configuration (how many slots, hence data shards, there are).
        elastic: the ``[elastic]`` section as a dict (timeouts the coordinator adopts).
        progress: returns (round, step) for the heartbeat.
        say: where waiting messages go (the terminal).
        connect_timeout_s: how long to keep trying to reach the coordinator before raising
            :class:`CoordinatorLost`; ``elastic["coordinator_timeout_s"]`` wins when present.
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
    ) -> None:
        self.host, self.port = host, port
        self.token, self.slot = token, slot
        self.config_sha, self.num_slots, self.elastic = config_sha, num_slots, elastic
        self.progress = progress
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.poll_s = poll_s
        self.connect_timeout_s = float(elastic.get("coordinator_timeout_s", connect_timeout_s))
        self.incarnation = secrets.token_hex(6)
        self.epoch: str | None = None
        self._lock = threading.Lock()
        self._sequence = 0
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
                if store.check(["coord/epoch"]):
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

    def _epoch(self, store: Store) -> str:
        return bytes(store.get("coord/epoch")).decode()

    def register(self, store: Store) -> None:
        """Joins (again) if the coordinator on ``store`` has not admitted this incarnation yet."""
        with self._lock:
            epoch = self._epoch(store)
            if epoch == self.epoch:
                return
            nonce = store.get("coord/nonce").decode()
            message = {
                "type": "join",
                "slot": self.slot,
                "incarnation": self.incarnation,
                "proof": make_proof(self.token, nonce, self.slot, self.incarnation),
                "config_sha": self.config_sha,
                "num_slots": self.num_slots,
                "elastic": self.elastic,
            }
            reply = self._request(store, message, epoch)
            if reply is None:
                raise ConnectionError("coordinator restarted during join")
            if reply.get("status") == "superseded":
                raise Superseded(str(reply.get("reason")))
            if reply.get("status") != "admitted":
                raise JoinRefused(str(reply.get("reason", reply)))
            self.slot = int(reply["slot"])
            self.epoch = epoch
            self._beat_now(store)
            logger.info("worker %d admitted by coordinator %s", self.slot, epoch)

    def _request(
        self,
        store: Store,
        message: dict[str, Any],
        epoch: str,
        on_wait: Callable[[float], None] | None = None,
    ) -> dict[str, Any] | None:
        """Sends one request and polls for its reply; None if the coordinator changed meanwhile."""
        self._requests += 1
        request_id = f"{self.incarnation}-{threading.get_ident()}-{self._requests}"
        message = {**message, "request": request_id}
        key = f"reply/{request_id}"
        store.queue_push(INBOX, json.dumps(message))
        begin = time.monotonic()
        polls = 0
        while not store.check([key]):
            time.sleep(self.poll_s)
            polls += 1
            if polls % 25 == 0 and self._epoch(store) != epoch:
                return None
            if on_wait is not None:
                on_wait(time.monotonic() - begin)
        reply: dict[str, Any] = json.loads(store.get(key))
        store.delete_key(key)
        return reply

    # --------------------------------------------------------------------------------------- calls
    def call(self, message: dict[str, Any], *, wait_message: str = "") -> dict[str, Any]:
        """Sends ``message`` (with this worker's identity) and returns the reply, surviving coordinator
        restarts and re-joining when the coordinator no longer knows this worker."""
        last_said = [0.0]

        def on_wait(waited: float) -> None:
            if wait_message and waited - last_said[0] >= 5.0:
                last_said[0] = waited
                status = self.store.get("coord/status").decode() if self.store.check(["coord/status"]) else ""
                self.say(f"worker {self.slot}: {wait_message} for {waited:.0f}s ({status})")

        while True:
            self._check_heartbeat()
            try:
                self.register(self.store)
                assert self.epoch is not None
                full = {**message, "slot": self.slot, "incarnation": self.incarnation}
                reply = self._request(self.store, full, self.epoch, on_wait)
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
    def _beat_now(self, store: Store) -> None:
        self._sequence += 1
        round_index, step = self.progress()
        value = {
            "incarnation": self.incarnation,
            "sequence": self._sequence,
            "round": round_index,
            "step": step,
        }
        store.set(f"hb/{self.slot}", json.dumps(value))

    def _beat(self, store: Store) -> None:
        if self._epoch(store) != self.epoch:
            self.register(store)
        self._beat_now(store)

    def start_heartbeat(self, interval_s: float) -> None:
        self._heartbeat = HeartbeatSender(self.connect, self._beat, interval_s)
        self._heartbeat.start()

    def leave(self, finished: bool) -> None:
        """Tells the coordinator this worker leaves on purpose (best effort) and stops the heartbeat."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
        try:
            message = {
                "type": "leave",
                "slot": self.slot,
                "incarnation": self.incarnation,
                "finished": finished,
            }
            self.store.queue_push(INBOX, json.dumps(message))
        except _STORE_ERRORS:
            pass


def config_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
