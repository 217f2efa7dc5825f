"""The coordinator: hosts the run's TCPStore and decides membership; it never touches tensors.

``farsync coordinator --port P`` runs :func:`serve`. The coordinator is the store's server, so it holds no
state a restart could not rebuild: after a restart, workers reconnect to the same port, join again under
the new nonce, and the next quorum is formed from their arrivals (the one at the highest round heals the
others). Every ``tick_s`` it

1. pops requests from ``coord/inbox`` (join, arrive, done, leave) and answers joins at once: the token proof
   is checked with :func:`hmac.compare_digest`, the configuration hash must match the first worker's, and a
   refused worker never enters the book, so it has no effect on the run;
2. reads the admitted workers' heartbeats;
3. lets the :class:`~farsync.elastic.quorum.QuorumBook` commit or decide, and publishes its replies;
4. writes ``coord/status``, the line waiting workers print.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch.distributed as dist

from farsync.comm.groups import open_store
from farsync.elastic.client import INBOX
from farsync.elastic.quorum import Arrival, QuorumBook, Reply
from farsync.elastic.token import check_proof, read_token

if TYPE_CHECKING:  # torch.distributed re-exports these only at runtime; the stubs live in torch._C
    from torch._C._distributed_c10d import Store

__all__ = ["Coordinator", "serve"]

logger = logging.getLogger(__name__)


class Coordinator:
    """Membership for one elastic run, served from ``store`` (which this process hosts).

    Args:
        store: the run's TCPStore, opened as its server.
        token: the run's token; ``None`` admits anyone (an open run).
        min_workers: quorum floor (the workers' ``elastic.min_workers`` if larger is taken at first join).
        tick_s: seconds between polls of the inbox.
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(
        self,
        store: Store,
        *,
        token: bytes | None,
        min_workers: int = 1,
        tick_s: float = 0.01,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store, self.token, self.tick_s = store, token, tick_s
        self.epoch = secrets.token_hex(4)
        self.nonce = secrets.token_hex(16)
        self.book = QuorumBook(min_workers=min_workers, failure_timeout_s=5.0, clock=clock)
        self.config_sha: str | None = None
        self.num_slots: int | None = None
        self.heartbeat_every_s = 0.25
        self.refusals: list[dict[str, Any]] = []
        self.superseded: set[str] = set()
        self._last_heartbeat_read = 0.0
        self._last_status = ""
        self._stop = threading.Event()
        store.set("coord/nonce", self.nonce)
        store.set("coord/status", "starting")
        store.set("coord/epoch", self.epoch)  # last: clients treat the epoch key as "coordinator ready"
        if token is None:
            logger.warning("coordinator: no token file; any worker that reaches this port may join")

    # ------------------------------------------------------------------------------------- requests
    def _reply(self, reply: Reply) -> None:
        self.store.set(f"reply/{reply.request_id}", json.dumps(reply.payload))

    def _join(self, message: dict[str, Any]) -> dict[str, Any]:
        slot = message.get("slot")
        incarnation = str(message.get("incarnation", ""))
        if incarnation in self.superseded:
            return {"status": "superseded", "reason": "a newer incarnation of this worker took its slot"}
        if not check_proof(self.token, self.nonce, slot, incarnation, str(message.get("proof", ""))):
            presented = (
                "no token" if not message.get("proof") else "a token that does not match the run's token"
            )
            reason = f"refused: worker presented {presented}; pass the run's token file with --token-file"
            self.refusals.append({"slot": slot, "reason": reason})
            logger.warning("coordinator: %s (slot %s)", reason, slot)
            return {"status": "refused", "reason": reason}
        if self.config_sha is None:
            self.config_sha, self.num_slots = str(message["config_sha"]), int(message["num_slots"])
            elastic = message.get("elastic", {})
            self.book.failure_timeout_s = float(elastic.get("failure_timeout_s", self.book.failure_timeout_s))
            self.book.min_workers = max(self.book.min_workers, int(elastic.get("min_workers", 1)))
            self.heartbeat_every_s = min(
                self.heartbeat_every_s, float(elastic.get("heartbeat_interval_s", 1.0)) / 2
            )
        elif message["config_sha"] != self.config_sha:
            reason = "refused: this worker's configuration differs from the run's (compare config.toml)"
            self.refusals.append({"slot": slot, "reason": reason})
            return {"status": "refused", "reason": reason}
        assert self.num_slots is not None
        previous = self.book.admitted.get(slot) if isinstance(slot, int) else None
        granted, why = self.book.admit(slot if isinstance(slot, int) else None, incarnation, self.num_slots)
        if granted is None:
            return {"status": "refused", "reason": f"refused: {why}"}
        if previous is not None and previous != incarnation:
            self.superseded.add(previous)
        return {"status": "admitted", "slot": granted, "epoch": self.epoch}

    def _handle(self, message: dict[str, Any]) -> list[Reply]:
        kind, request = message.get("type"), str(message.get("request", ""))
        if kind == "join":
            return [Reply(request, self._join(message))]
        slot, incarnation = int(message.get("slot", -1)), str(message.get("incarnation", ""))
        if kind == "arrive":
            arrival = Arrival(
                slot,
                incarnation,
                int(message["round"]),
                int(message["step"]),
                str(message["sha"]),
                bool(message["pending"]),
            )
            return self.book.arrive(request, arrival)
        if kind == "done":
            return self.book.done(request, slot, incarnation, int(message["boundary"]), bool(message["ok"]))
        if kind == "leave":
            self.book.leave(slot, incarnation, bool(message.get("finished")))
            return []
        logger.warning("coordinator: ignoring message of unknown type %r", kind)
        return []

    # ------------------------------------------------------------------------------------------ loop
    def _read_heartbeats(self) -> None:
        for slot in list(self.book.admitted):
            key = f"hb/{slot}"
            if not self.store.check([key]):
                continue
            value = json.loads(self.store.get(key))
            self.book.beat(
                slot, value["incarnation"], int(value["sequence"]), int(value["round"]), int(value["step"])
            )

    def step(self) -> None:
        """One tick: inbox, heartbeats, decisions, status."""
        while True:
            try:
                raw = self.store.queue_pop(INBOX, block=False)
            except dist.QueueEmptyError:
                break
            for reply in self._handle(json.loads(raw)):
                self._reply(reply)
        now = time.monotonic()
        if now - self._last_heartbeat_read >= self.heartbeat_every_s:
            self._last_heartbeat_read = now
            self._read_heartbeats()
        for reply in self.book.tick():
            self._reply(reply)
        status = self.book.status()
        if status != self._last_status:
            self.store.set("coord/status", status)
            logger.info("coordinator: %s", status)
            self._last_status = status

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
            "num_refused_joins": len(self.refusals),
        }


def serve(
    port: int, min_workers: int = 1, token_file: str | Path | None = None, host: str = "127.0.0.1"
) -> int:
    """``farsync coordinator``: hosts the store on ``host:port`` and coordinates until interrupted."""
    from farsync.config import ConfigError

    if min_workers < 1:
        raise ConfigError("--min-workers", min_workers, "must be >= 1")
    token = read_token(token_file)
    try:
        store = open_store(host, port, 1, is_master=True)
    except RuntimeError as error:  # the store's listen error carries the errno name in its text
        if "EADDRINUSE" in str(error) or "address already in use" in str(error).lower():
            raise ConfigError("--port", port, f"{host}:{port} is already in use; pick another port") from None
        raise
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
