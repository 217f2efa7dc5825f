"""Bytes from a stranger who reaches the coordinator's port: rejected and counted, never a crash."""

from __future__ import annotations

import time
from pathlib import Path

from farsync.comm.groups import open_store
from farsync.elastic.client import INBOX
from farsync.elastic.coordinator import Coordinator
from farsync.elastic.token import write_token


def test_one_non_json_message_does_not_kill_the_coordinator(tmp_path: Path) -> None:
    token = write_token(tmp_path / "token")
    store = open_store("127.0.0.1", 0, 1, is_master=True)
    coordinator = Coordinator(store, token=token, min_workers=1)
    thread = coordinator.start_thread()
    stranger = open_store("127.0.0.1", store.port, 1, is_master=False)
    stranger.queue_push(INBOX, b"not json at all")
    stranger.queue_push(INBOX, b'{"type": "arrive", "slot": 0}')
    deadline = time.monotonic() + 10
    while stranger.queue_len(INBOX) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    alive = thread.is_alive()
    coordinator.stop()
    thread.join(5)
    assert alive, "the coordinator died on a stranger's message"
