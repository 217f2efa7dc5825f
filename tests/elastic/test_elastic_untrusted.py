"""Bytes from a stranger who reaches the coordinator's port: rejected and counted, never a crash or a say."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from farsync.comm.auth import seal, session_key
from farsync.comm.groups import open_store
from farsync.comm.schema import encode
from farsync.elastic.client import ANNOUNCE, INBOX, STATUS, CoordinatorClient, JoinRefused
from farsync.elastic.coordinator import Coordinator
from farsync.elastic.token import write_token


@pytest.fixture
def running(tmp_path: Path):  # type: ignore[no-untyped-def]
    token = write_token(tmp_path / "token")
    store = open_store("127.0.0.1", 0, 1, is_master=True)
    coordinator = Coordinator(store, token=token, min_workers=1)
    thread = coordinator.start_thread()
    stranger = open_store("127.0.0.1", store.port, 1, is_master=False)
    yield coordinator, thread, stranger, token
    coordinator.stop()
    thread.join(5)


def _settle(coordinator: Coordinator, stranger, count: int) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 10
    while (stranger.queue_len(INBOX) or coordinator.rejections.total < count) and time.monotonic() < deadline:
        time.sleep(0.02)


def test_one_non_json_message_does_not_kill_the_coordinator(running) -> None:  # type: ignore[no-untyped-def]
    coordinator, thread, stranger, _ = running
    stranger.queue_push(INBOX, b"not json at all")
    stranger.queue_push(INBOX, b'{"type": "arrive", "slot": 0}')  # valid JSON, no envelope, fields missing
    _settle(coordinator, stranger, 2)
    time.sleep(0.05)
    assert thread.is_alive(), "the coordinator died on a stranger's message"
    assert coordinator.rejections.total == 2
    assert coordinator.rejections.by_kind == {"json": 1, "schema": 1}
    assert coordinator.summary()["rejected_by_coordinator"] == 2


def test_forged_replayed_and_overwritten_traffic_changes_nothing(running) -> None:  # type: ignore[no-untyped-def]
    coordinator, thread, stranger, token = running
    captured: list[bytes] = []
    coordinator.observers.append(captured.append)
    client = CoordinatorClient(
        "127.0.0.1",
        stranger.port,
        token=token,
        slot=0,
        config_sha="cfg",
        num_slots=2,
        elastic={},
        say=lambda line: None,
    )
    client.register(client.store)
    assert list(coordinator.book.admitted) == [0] and captured
    genuine = json.loads(captured[0])
    body = json.loads(genuine["body"])
    # A leave with the worker's real incarnation and slot (read off the wire), no valid signature.
    forged = {**body, "type": "leave", "finished": True, "sequence": body["sequence"] + 5}
    for key in ("config_sha", "num_slots", "min_workers", "failure_timeout_s", "heartbeat_interval_s"):
        forged.pop(key, None)
    forged_body = json.dumps(forged, sort_keys=True, separators=(",", ":"))
    stranger.queue_push(INBOX, json.dumps({**genuine, "body": forged_body}))
    stranger.queue_push(INBOX, captured[-1])  # a replay of a genuine message
    _settle(coordinator, stranger, 2)
    assert coordinator.rejections.by_kind == {"signature": 1, "replay": 1}
    assert coordinator.book.admitted == {0: client.incarnation} and not coordinator.book.finished
    # The stranger overwrites the status: the worker does not believe it, the coordinator puts it back.
    coordinator.stop()
    thread.join(5)  # ticks by hand from here, so the overwrite is seen before the repair
    stranger.set(STATUS, json.dumps({"sender": "coordinator", "body": '{"status":"x"}', "mac": "0" * 64}))
    assert client.status() is None
    stranger.set(ANNOUNCE, b"not json at all")
    assert client._epoch(stranger) is None  # a forged announcement is not a coordinator restart
    coordinator.step()  # puts both keys back (counted)
    assert coordinator.rejections.by_kind == {"signature": 1, "replay": 1, "store": 2}
    coordinator.step()  # publishes the new count
    status = client.status()
    assert status is not None and status.rejected_messages == 4
    assert client._epoch(stranger) == coordinator.epoch
    assert client.rejections.total == 2  # the worker counted the forged status and announcement


def test_an_overwritten_reply_is_rejected_and_the_kept_reply_is_sent_again(running) -> None:  # type: ignore[no-untyped-def]
    coordinator, thread, stranger, token = running
    client = CoordinatorClient(
        "127.0.0.1",
        stranger.port,
        token=token,
        slot=0,
        config_sha="cfg",
        num_slots=1,
        elastic={},
        say=lambda line: None,
        poll_s=2.0,  # slow polls: the stranger's overwrite lands before the read
    )
    client.register(client.store)
    coordinator.stop()
    thread.join(5)  # ticks by hand from here
    replies: list[dict[str, object]] = []
    arrive = {"type": "arrive", "pending": False, "round": 0, "step": 0, "sha": "s"}
    caller = threading.Thread(target=lambda: replies.append(client.call(arrive)), daemon=True)
    caller.start()
    deadline = time.monotonic() + 10
    keys: list[str] = []
    while not keys and time.monotonic() < deadline:
        coordinator.step()  # once the arrive is in, the quorum is decided and its reply published
        keys = [key for key in stranger.list_keys() if key.startswith("reply/")]
        time.sleep(0.01)
    assert len(keys) == 1
    stranger.set(keys[0], b"not json at all")
    while not client.rejections.total and time.monotonic() < deadline:
        time.sleep(0.05)
    while caller.is_alive() and time.monotonic() < deadline:
        coordinator.step()  # the worker asked again: the kept reply goes out again
        time.sleep(0.05)
    caller.join(1)
    assert client.rejections.total == 1 and len(replies) == 1
    assert replies[0]["members"] == [0] and replies[0]["source"] == 0


def test_a_replayed_old_join_does_not_replace_the_session_key(running) -> None:  # type: ignore[no-untyped-def]
    coordinator, thread, stranger, token = running
    coordinator.stop()
    thread.join(5)  # ticks by hand
    incarnation = "abcdef012345"

    def signed(slot_in_key: int | None, sequence: int, **body: object) -> str:
        key = session_key(token, coordinator.nonce, slot_in_key, incarnation)
        header = {"request": f"{incarnation}-main-{sequence}", "sequence": sequence, "channel": "main"}
        return seal(key, incarnation, encode({**header, "incarnation": incarnation, **body}))

    join = {"type": "join", "config_sha": "cfg", "num_slots": 2}
    first = signed(None, 1, **join, slot=None)  # asks for any slot: its key is derived with slot None
    for raw in (first, signed(0, 2, **join, slot=0)):  # joins again for the slot it got
        coordinator.receive(raw.encode())
    coordinator.receive(first.encode())  # a stranger replays the first join
    coordinator.receive(signed(0, 3, type="beat", slot=0, round=0, step=0).encode())
    assert coordinator.rejections.by_kind == {"replay": 1}  # the beat under the current key still counts
    assert coordinator.book.admitted == {0: incarnation}


def test_a_tampered_join_never_answers_the_workers_own_request(running) -> None:  # type: ignore[no-untyped-def]
    coordinator, thread, stranger, token = running
    coordinator.stop()
    thread.join(5)  # ticks by hand
    incarnation, request = "abcdef012345", "abcdef012345-main-1"
    body = {"type": "join", "slot": 0, "config_sha": "cfg", "num_slots": 2, "incarnation": incarnation}
    body.update(request=request, sequence=1, channel="main")
    genuine = seal(session_key(token, coordinator.nonce, 0, incarnation), incarnation, encode(body))
    tampered = genuine.replace('\\"slot\\":0', '\\"slot\\":1')
    assert tampered != genuine

    def answer() -> dict[str, object]:
        envelope = json.loads(stranger.get(f"reply/{request}"))
        return {"signed": bool(envelope["mac"]), **json.loads(envelope["body"])["payload"]}

    coordinator.receive(tampered.encode())  # arrives first: an unsigned refusal, not kept
    assert answer() == {"signed": False, "status": "refused", "reason": answer()["reason"]}
    coordinator.receive(genuine.encode())  # still handled, not answered from the refusal
    assert coordinator.book.admitted == {0: incarnation} and answer()["status"] == "admitted"
    coordinator.receive(tampered.encode())  # once the worker holds a session: no answer at all
    assert answer()["status"] == "admitted" and answer()["signed"]
    assert coordinator.rejections.by_kind == {"signature": 2}


def test_a_worker_with_a_token_does_not_join_a_coordinator_without_one() -> None:
    store = open_store("127.0.0.1", 0, 1, is_master=True)
    coordinator = Coordinator(store, token=None, min_workers=1)
    thread = coordinator.start_thread()
    client = CoordinatorClient(
        "127.0.0.1",
        store.port,
        token=b"secret",
        slot=0,
        config_sha="cfg",
        num_slots=1,
        elastic={},
        say=lambda line: None,
    )
    try:
        with pytest.raises(JoinRefused, match="not signed with this run's token"):
            client.register(client.store)
    finally:
        coordinator.stop()
        thread.join(5)
