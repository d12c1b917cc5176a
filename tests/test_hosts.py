"""The host-aware scheduler's decisions (_hosts): plain code, a clock passed in, no event loop."""

from __future__ import annotations

import pytest

from asyncdl._exceptions import (
    ConnectError,
    HTTPStatusError,
    IncompleteBody,
    RetryableStatus,
    SlowError,
    StallError,
)
from asyncdl._hosts import STALLED_SLOTS, HostRules, Scheduler, Signal, State, Ticket, signal_of
from asyncdl._urls import origin_key

A = "http://a.example"
B = "http://b.example:8080"


def take_all(scheduler: Scheduler, now: float) -> list[Ticket]:
    taken = []
    while (ticket := scheduler.take(now)) is not None:
        taken.append(ticket)
    return taken


def jobs_of(tickets: list[Ticket]) -> list[object]:
    return [t.job for t in tickets]


def test_in_arrival_order_up_to_jobs() -> None:
    scheduler = Scheduler(jobs=3, rules=HostRules(initial_slots=16))
    for i in range(5):
        scheduler.add(i, A if i % 2 else B)
    first = take_all(scheduler, 0.0)
    assert jobs_of(first) == [0, 1, 2]
    assert scheduler.running == 3 and scheduler.waiting == 2
    scheduler.finish(first[1])
    assert jobs_of(take_all(scheduler, 0.0)) == [3]
    scheduler.jobs = 5  # more slots while running
    assert jobs_of(take_all(scheduler, 0.0)) == [4]


def test_a_parked_ticket_holds_no_slot_and_comes_back_ahead_of_later_ones() -> None:
    scheduler = Scheduler(jobs=1)
    first = scheduler.add("retried", A)
    scheduler.add("later", A)
    assert scheduler.take(0.0) is first
    scheduler.park(first, not_before=5.0)
    assert scheduler.running == 0 and first.state is State.PARKED
    later = scheduler.take(1.0)
    assert later is not None and later.job == "later"  # the slot went to the next download
    assert scheduler.wake_at() == 5.0
    scheduler.finish(later)
    assert scheduler.take(4.9) is None
    assert scheduler.take(5.0) is first


def test_retry_after_holds_back_every_request_to_that_origin_not_others() -> None:
    scheduler = Scheduler(jobs=4)
    a1 = scheduler.add("a1", A)
    scheduler.add("a2", A)
    scheduler.add("b1", B)
    scheduler.add("a3", A)
    scheduler.add("b2", B)
    assert scheduler.take(0.0) is a1
    scheduler.observe(a1, Signal.RETRY_AFTER, 0.0, retry_after=30.0)
    scheduler.park(a1, not_before=30.0)
    # a2 and a3 wait although slots are free; B goes on.
    assert jobs_of(take_all(scheduler, 1.0)) == ["b1", "b2"]
    assert take_all(scheduler, 29.9) == []
    assert scheduler.wake_at() == 30.0
    # The ones not asked for yet go first (b1 and b2 still hold two of the four slots); the one that
    # got the Retry-After comes after them.
    assert jobs_of(take_all(scheduler, 30.0)) == ["a2", "a3"]
    assert scheduler.origin(A) is not None and a1.state is State.WAITING


def test_after_a_retry_after_the_first_requests_of_the_others_go_before_the_retries() -> None:
    # An origin that answers every URL's first request with "429, come back in 30 s" (a cache that
    # fetches on demand), 12 slots, 16 URLs of which the first was asked for before the others came:
    # asking for every URL once before any retry is done at 90 s; retries first would take until 120 s.
    scheduler = Scheduler(jobs=12, rules=HostRules(initial_slots=12))
    asked: set[int] = set()

    def answer(ticket: Ticket, now: float) -> None:
        if ticket.job in asked:
            scheduler.observe(ticket, Signal.OK, now)
            scheduler.finish(ticket)
        else:
            asked.add(ticket.job)
            scheduler.observe(ticket, Signal.RETRY_AFTER, now, retry_after=30.0)
            scheduler.park(ticket, not_before=now + 30.0)

    tickets = [scheduler.add(0, A)]
    answer(take_all(scheduler, 0.0)[0], 0.0)
    tickets += [scheduler.add(i, A) for i in range(1, 16)]
    now = 0.0
    while any(t.state is not State.DONE for t in tickets):
        wake = scheduler.wake_at()
        assert wake is not None
        now = wake
        while taken := take_all(scheduler, now):  # what ends at once frees its slot at once
            for ticket in taken:
                answer(ticket, now)
    assert now == 90.0


def test_after_a_retry_after_a_download_keeps_its_place_before_other_origins_later_arrivals() -> None:
    # The order after a Retry-After changes within its origin only: against other origins the
    # download keeps its place by arrival, and runs again when its time comes.
    scheduler = Scheduler(jobs=1)
    limited = scheduler.add("a1", A)
    assert scheduler.take(0.0) is limited
    scheduler.observe(limited, Signal.RETRY_AFTER, 0.0, retry_after=5.0)
    scheduler.park(limited, not_before=5.0)
    b1, b2, b3 = (scheduler.add(f"b{i}", B) for i in (1, 2, 3))
    assert scheduler.take(0.0) is b1
    scheduler.finish(b1)
    assert scheduler.take(4.0) is b2
    scheduler.finish(b2)
    assert scheduler.take(6.0) is limited  # its time came at 5 s: before b3, which came later
    scheduler.finish(limited)
    assert scheduler.take(6.0) is b3


def test_after_a_retry_after_every_download_of_the_origin_may_go() -> None:
    scheduler = Scheduler(jobs=16)
    tickets = [scheduler.add(i, A) for i in range(10)]
    first = take_all(scheduler, 0.0)
    assert len(first) == 2  # a new origin
    for ticket in first:
        scheduler.observe(ticket, Signal.RETRY_AFTER, 0.0, retry_after=30.0)
        scheduler.park(ticket, not_before=30.0)
    assert take_all(scheduler, 29.0) == []
    # All at once: the ones not asked for yet in order, then the two that got the Retry-After.
    assert jobs_of(take_all(scheduler, 30.0)) == [t.job for t in tickets[2:] + tickets[:2]]


def test_refused_backs_the_origin_off_by_rounds_not_by_downloads() -> None:
    rules = HostRules(initial_slots=16, backoff_base_s=1.0, backoff_max_s=8.0, down_after=10)
    scheduler = Scheduler(jobs=16, rules=rules)
    for i in range(16):
        scheduler.add(i, B)
    tickets = take_all(scheduler, 0.0)
    assert len(tickets) == 16
    # Sixteen refused at once: one round, held back for the first backoff step only.
    for ticket in tickets:
        scheduler.observe(ticket, Signal.REFUSED, 0.0)
        scheduler.park(ticket, not_before=0.0)
    state = scheduler.origin(B)
    assert state is not None and state.rounds == 1 and state.blocked_until == 1.0
    assert take_all(scheduler, 0.5) == []
    again = take_all(scheduler, 1.0)
    assert len(again) == 16
    for ticket in again:
        scheduler.observe(ticket, Signal.REFUSED, 1.0)
        scheduler.park(ticket, not_before=1.0)
    assert state.rounds == 2 and state.blocked_until == 3.0  # 1 s, then 2 s, ...
    ticket = take_all(scheduler, 3.0)[0]
    scheduler.observe(ticket, Signal.OK, 3.0)
    assert state.rounds == 0  # an answer ends the rounds


def test_stalls_leave_the_origin_two_slots_and_answers_give_them_back() -> None:
    scheduler = Scheduler(jobs=16, rules=HostRules(initial_slots=16, backoff_base_s=0.0, down_after=100))
    for i in range(20):
        scheduler.add(i, B)
    tickets = take_all(scheduler, 0.0)
    assert len(tickets) == 16
    for ticket in tickets:
        scheduler.observe(ticket, Signal.STALLED, 10.0)
        scheduler.park(ticket, not_before=10.0)
    state = scheduler.origin(B)
    assert state is not None and state.cap == STALLED_SLOTS
    running = take_all(scheduler, 10.0)
    assert len(running) == STALLED_SLOTS
    scheduler.add("c", A)
    assert jobs_of(take_all(scheduler, 10.0)) == ["c"]  # other origins keep the rest
    # Answers that went well double the cap until it is gone.
    for ticket in running:
        scheduler.observe(ticket, Signal.OK, 11.0)
        scheduler.finish(ticket)
    assert state.cap == 4 * STALLED_SLOTS
    running = take_all(scheduler, 11.0)
    assert len(running) == 4 * STALLED_SLOTS
    scheduler.observe(running[0], Signal.OK, 12.0)
    assert state.cap is None


def test_each_further_round_of_stalls_halves_the_slots_down_to_one() -> None:
    scheduler = Scheduler(jobs=16, rules=HostRules(backoff_base_s=0.0, down_after=100))
    for i in range(20):
        scheduler.add(i, B)
    state = scheduler.origin(B)
    assert state is not None
    caps = []
    now = 0.0
    for _ in range(3):
        running = take_all(scheduler, now)
        now += 10.0
        for ticket in running:  # every attempt of the round stalls; they count as one round
            scheduler.observe(ticket, Signal.STALLED, now)
            scheduler.park(ticket, not_before=now)
        caps.append(state.cap)
    assert caps == [STALLED_SLOTS, 1, 1]
    (ticket,) = take_all(scheduler, now)
    scheduler.observe(ticket, Signal.OK, now + 1.0)  # a good answer doubles it again
    assert state.cap == 2


def test_slow_counts_as_a_stall() -> None:
    scheduler = Scheduler(jobs=8, rules=HostRules(initial_slots=8))
    for i in range(8):
        scheduler.add(i, B)
    tickets = take_all(scheduler, 0.0)
    scheduler.observe(tickets[0], Signal.SLOW, 1.0)
    state = scheduler.origin(B)
    assert state is not None and state.cap == STALLED_SLOTS


def test_a_new_origin_starts_with_two_slots_and_doubles_them_with_good_answers() -> None:
    scheduler = Scheduler(jobs=16)
    for i in range(40):
        scheduler.add(i, A)
    running = take_all(scheduler, 0.0)
    assert len(running) == 2  # nothing known of A yet: a black hole would hold no more than this
    scheduler.observe(running[0], Signal.OK, 0.1)  # one good answer (or PROVEN_BYTES of one)
    running += take_all(scheduler, 0.1)
    assert len(running) == 4
    for ticket in running[:3]:
        scheduler.observe(ticket, Signal.OK, 0.2)
    assert len(running + take_all(scheduler, 0.2)) == 16  # no cap left but jobs
    state = scheduler.origin(A)
    assert state is not None and state.cap is None


def test_max_per_host_caps_every_origin() -> None:
    scheduler = Scheduler(jobs=10, rules=HostRules(max_per_host=2, initial_slots=10))
    for i in range(6):
        scheduler.add(("a", i), A)
    for i in range(6):
        scheduler.add(("b", i), B)
    taken = take_all(scheduler, 0.0)
    assert jobs_of(taken) == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    scheduler.finish(taken[0])
    assert jobs_of(take_all(scheduler, 0.0)) == [("a", 2)]


def test_an_origin_without_answers_for_a_downloads_attempts_is_down() -> None:
    rules = HostRules(initial_slots=4, backoff_base_s=0.0, down_after=3, down_for_s=60.0)
    scheduler = Scheduler(jobs=4, rules=rules)
    for i in range(6):
        scheduler.add(i, B)
    now = -100.0
    for _ in range(3):  # three rounds of stalls
        now += 100.0
        tickets = take_all(scheduler, now)
        assert tickets and all(t.down is None for t in tickets)
        now += 10.0
        for ticket in tickets:
            scheduler.observe(ticket, Signal.STALLED, now, reason="stalled")
            scheduler.park(ticket, not_before=now + 100.0)  # long own backoff: woken all the same
    state = scheduler.origin(B)
    assert state is not None and state.dead_rounds == 3
    # Down: every ticket of the origin comes out now, each marked, without waiting for the cap.
    tickets = take_all(scheduler, now)
    assert len(tickets) == 4
    assert all(t.down and t.down.endswith("rounds of attempts in a row (last: stalled)") for t in tickets)


def test_a_download_parked_after_its_origin_went_down_comes_out_at_once() -> None:
    rules = HostRules(initial_slots=2, backoff_base_s=0.0, down_after=1, down_for_s=60.0)
    scheduler = Scheduler(jobs=4, rules=rules)
    first, second = scheduler.add(1, B), scheduler.add(2, B)
    assert take_all(scheduler, 0.0) == [first, second]
    scheduler.observe(first, Signal.STALLED, 10.0, reason="stalled")  # the origin is down now
    scheduler.park(first, not_before=15.0)
    scheduler.observe(second, Signal.STALLED, 10.5, reason="stalled")  # in flight until then
    scheduler.park(second, not_before=15.5)  # its own backoff: it would wait for nothing
    taken = take_all(scheduler, 10.5)
    assert taken == [first, second] and all(t.down for t in taken)


def test_a_status_error_backs_off_but_never_takes_the_origin_down() -> None:
    scheduler = Scheduler(jobs=1, rules=HostRules(backoff_base_s=1.0, down_after=2))
    ticket = scheduler.add("x", A)
    now = 0.0
    for _ in range(4):
        assert scheduler.take(now) is ticket
        assert ticket.down is None
        scheduler.observe(ticket, Signal.FAILED, now)
        scheduler.park(ticket, not_before=now)
        now += 10.0
    state = scheduler.origin(A)
    assert state is not None and state.rounds == 4 and state.dead_rounds == 0


def test_withdraw_a_waiting_or_parked_ticket() -> None:
    scheduler = Scheduler(jobs=1)
    first = scheduler.add(1, A)
    second = scheduler.add(2, A)
    assert scheduler.take(0.0) is first
    assert not scheduler.withdraw(first)  # running: the pool cancels it
    scheduler.park(first, not_before=9.0)
    assert scheduler.withdraw(first) and first.state is State.DONE
    assert scheduler.withdraw(second)
    assert scheduler.waiting == 0 and scheduler.parked == 0
    assert take_all(scheduler, 10.0) == []


def test_the_window_is_bounded() -> None:
    scheduler = Scheduler(jobs=1, rules=HostRules(lookahead=3))
    blocked = scheduler.add("a", A)
    assert scheduler.take(0.0) is blocked
    scheduler.observe(blocked, Signal.RETRY_AFTER, 0.0, retry_after=60.0)
    scheduler.park(blocked, not_before=60.0)
    scheduler.add("a2", A)
    assert scheduler.room()
    scheduler.add("a3", A)
    assert not scheduler.room()  # one parked and two waiting: read no further


def test_idle_origins_without_state_are_forgotten() -> None:
    scheduler = Scheduler(jobs=1)
    for i in range(100):
        ticket = scheduler.add(i, f"http://h{i}.example")
        assert scheduler.take(0.0) is ticket
        scheduler.observe(ticket, Signal.OK, 0.0)
        scheduler.finish(ticket)
    assert scheduler.origin("http://h5.example") is None


@pytest.mark.parametrize(
    ("error", "signal"),
    [
        (None, Signal.OK),
        (RetryableStatus("HTTP 429", status=429, retry_after=3.0), Signal.RETRY_AFTER),
        (RetryableStatus("HTTP 503", status=503), Signal.FAILED),
        (ConnectError("refused", connecting=True), Signal.REFUSED),
        (ConnectError("reset during the body"), Signal.FAILED),
        (StallError("stalled"), Signal.STALLED),
        (SlowError("too slow"), Signal.SLOW),
        (IncompleteBody("short", received=1, expected=2), Signal.FAILED),
        (HTTPStatusError("HTTP 404", status=404), Signal.ANSWERED),
    ],
)
def test_signal_of(error: BaseException | None, signal: Signal) -> None:
    assert signal_of(error) is signal


def test_a_status_retried_on_request_is_a_failure_of_the_origin() -> None:
    assert signal_of(HTTPStatusError("HTTP 403", status=403), retried=True) is Signal.FAILED


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("http://A.example/x", "http://a.example"),
        ("https://a.example:443/x?y#z", "https://a.example"),
        ("http://u:p@b.example:8080", "http://b.example:8080"),
        ("http://[::1]:81/", "http://[::1]:81"),
        ("not a url", ""),
    ],
)
def test_origin_key(url: str, key: str) -> None:
    assert origin_key(url) == key
