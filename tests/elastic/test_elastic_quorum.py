"""Quorum formation, failure detection and commits of the coordinator's book, with a fake clock."""

from __future__ import annotations

from farsync.elastic.quorum import Arrival, Decision, QuorumBook


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_book(min_workers: int = 1, timeout: float = 5.0) -> tuple[QuorumBook, FakeClock]:
    clock = FakeClock()
    return QuorumBook(min_workers=min_workers, failure_timeout_s=timeout, clock=clock), clock


def arrive(
    book: QuorumBook,
    slot: int,
    round_index: int = 0,
    sha: str = "init",
    pending: bool = False,
    incarnation: str | None = None,
) -> None:
    inc = incarnation or f"inc{slot}"
    replies = book.arrive(
        f"r{slot}-{round_index}", Arrival(slot, inc, round_index, 10 * round_index, sha, pending)
    )
    assert replies == []


def decide(book: QuorumBook) -> Decision:
    replies = book.tick()
    assert replies, book.status()
    decisions = {Decision.from_dict(r.payload) for r in replies}
    assert len(decisions) == 1  # every member gets the same decision
    return decisions.pop()


def commit_all(
    book: QuorumBook,
    decision: Decision,
    ok: dict[int, bool] | None = None,
    incarnations: dict[int, str] | None = None,
) -> bool:
    for slot in decision.members:
        flag = True if ok is None else ok.get(slot, True)
        inc = (incarnations or {}).get(slot, f"inc{slot}")
        assert book.done(f"d{slot}", slot, inc, decision.boundary, flag) == []
    replies = book.tick()
    assert {r.request_id for r in replies} == {f"d{s}" for s in decision.members}
    return all(r.payload["commit"] for r in replies)


def beat_all(book: QuorumBook, slots: list[int], sequence: int) -> None:
    for slot in slots:
        book.beat(slot, f"inc{slot}", sequence)


def test_start_waits_for_every_admitted_worker_then_forms_without_healing() -> None:
    book, _ = make_book(min_workers=2)
    for slot in range(3):
        assert book.admit(slot, f"inc{slot}", 3) == (slot, "")
    arrive(book, 0)
    arrive(book, 1)
    assert book.tick() == []  # worker 2 is admitted and alive but has not arrived
    assert "[2]" in book.status()
    arrive(book, 2)
    decision = decide(book)
    assert decision.members == (0, 1, 2)
    assert decision.healers == () and not decision.reduce
    assert decision.reason == "start" and decision.quorum_id == 0


def test_dead_member_is_dropped_after_the_failure_timeout_and_the_survivors_reduce() -> None:
    book, clock = make_book(timeout=5.0)
    for slot in range(3):
        book.admit(slot, f"inc{slot}", 3)
        arrive(book, slot)
    assert commit_all(book, decide(book))
    # Round 1: workers 0 and 1 finish their inner steps; worker 2 was SIGKILLed and stops beating.
    clock.now = 3.0
    beat_all(book, [0, 1], 1)
    arrive(book, 0, 0, "init", pending=True)
    arrive(book, 1, 0, "init", pending=True)
    assert book.tick() == []  # worker 2 might still come
    clock.now = 6.0  # 6 s of silence from worker 2, 3 s from the others
    decision = decide(book)
    assert decision.members == (0, 1) and decision.reduce and decision.healers == ()
    assert decision.quorum_id == 1
    assert "left [2]" in decision.reason and "heartbeat silent" in decision.reason
    assert book.worker_failures == 1 and book.num_quorum_changes == 1


def test_newcomer_is_healed_from_the_lowest_member_at_the_highest_round() -> None:
    book, _ = make_book()
    book.admit(1, "inc1", 4)
    book.admit(3, "inc3", 4)
    arrive(book, 1)
    arrive(book, 3)
    assert commit_all(book, decide(book))
    assert book.admit(None, "inc0", 4) == (0, "")  # a newcomer takes the lowest free slot
    arrive(book, 0, 0, "init", pending=False)
    arrive(book, 1, 5, "g5", pending=True)
    arrive(book, 3, 5, "g5", pending=True)
    decision = decide(book)
    assert decision.members == (0, 1, 3)
    assert decision.source == 1 and decision.healers == (0,)
    assert decision.round == 5 and decision.step == 50 and decision.reduce
    assert "joined [0]" in decision.reason


def test_fewer_than_min_workers_wait_until_enough_arrive() -> None:
    book, clock = make_book(min_workers=2, timeout=5.0)
    book.admit(0, "inc0", 2)
    book.admit(1, "inc1", 2)
    arrive(book, 0)
    arrive(book, 1)
    assert commit_all(book, decide(book))
    clock.now = 10.0  # worker 1 dies
    book.beat(0, "inc0", 7)
    arrive(book, 0, 0, "init", pending=True)
    assert book.tick() == []
    assert "1 of min_workers=2" in book.status()
    book.admit(1, "inc1b", 2)  # it comes back as a new incarnation
    arrive(book, 1, 0, "init", pending=False, incarnation="inc1b")
    decision = decide(book)
    assert decision.members == (0, 1) and decision.reduce
    assert decision.healers == ()  # same round and hash: nothing to send
    assert decision.quorum_id == 1  # a new incarnation never reuses the old group


def test_failed_collective_retries_with_a_new_group_and_same_membership_keeps_it() -> None:
    book, _ = make_book()
    for slot in range(2):
        book.admit(slot, f"inc{slot}", 2)
        arrive(book, slot)
    assert commit_all(book, decide(book))
    for slot in range(2):
        arrive(book, slot, 0, "init", pending=True)
    first = decide(book)
    assert first.quorum_id == 0 and first.reason == "unchanged"
    assert not commit_all(book, first, ok={1: False})  # one member's collective failed: nobody commits
    for slot in range(2):
        arrive(book, slot, 0, "init", pending=True)
    retry = decide(book)
    assert retry.quorum_id == 1 and "retry" in retry.reason and retry.reduce
    assert commit_all(book, retry)
    for slot in range(2):
        arrive(book, slot, 1, "g1", pending=True)
    assert decide(book).quorum_id == 1


def test_restart_replaces_the_old_incarnation_and_counts_a_failure() -> None:
    book, _ = make_book()
    book.admit(0, "old", 2)
    assert book.admit(0, "new", 2) == (0, "")
    assert book.worker_failures == 1
    reply = book.arrive("x", Arrival(0, "old", 0, 0, "init", False))
    assert reply[0].payload["error"] == "unknown"
    assert book.admit(None, "other", 1)[0] is None  # the only slot is taken


def test_finished_run_turns_late_arrivals_away() -> None:
    book, _ = make_book()
    book.admit(0, "inc0", 2)
    book.admit(1, "late", 2)
    book.leave(0, "inc0", finished=True)
    assert book.arrive("y", Arrival(1, "late", 0, 0, "init", False))[0].payload == {"finished": True}


def test_stale_pending_member_is_healed_and_the_collective_still_runs() -> None:
    book, _ = make_book()
    book.admit(0, "inc0", 2)
    book.admit(1, "inc1", 2)
    arrive(book, 0, 10, "checkpoint-10", pending=False)  # resumed from a newer checkpoint
    arrive(book, 1, 8, "g8", pending=True)  # a round behind, inside its outer step
    decision = decide(book)
    assert decision.source == 0 and decision.healers == (1,)
    assert decision.reduce  # worker 1 applies an outer step, so everyone must (its update gets weight 0)
