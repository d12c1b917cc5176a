"""Which download runs next: per-origin state and a clock, no I/O, no event loop.

The pool (``_pool.Pool``) owns one :class:`Scheduler` for the life of a Downloader and acts on its
answers; every way work arrives feeds the same scheduler: ``Downloader.stream()`` (a lazy iterator
read through a bounded lookahead window), ``Downloader.download()`` (one item), and a live queue
(``Downloader.add()``). Times are whatever clock the caller passes as ``now`` (the pool passes
``loop.time()``; tests pass numbers), so every decision is tested without sleeping.

A download is a *ticket*. Its life::

    add()  -> WAITING  (in arrival order, in its origin's queue)
    take() -> RUNNING  (holds one of the ``jobs`` slots and one of its origin's slots)
    finish()             -> DONE    (its slot is free)
    park(not_before=T)   -> PARKED  (its slot is free: waiting for a retry holds no slot)
    PARKED, once T has come -> back in its origin's queue, ahead of later arrivals; after a
                                Retry-After, behind its origin's downloads not asked for yet
                                (see below), still ahead of other origins' later arrivals
    withdraw()           -> DONE    (WAITING or PARKED only; a RUNNING ticket is cancelled by the pool,
                                     which then calls finish())

``take(now)`` answers with the oldest ticket (by arrival) whose origin may start a request now (within
an origin, the ones that got a Retry-After come after the ones not asked for yet: see below):

- at most ``jobs`` tickets run at once (``jobs`` may change at any time; running ones go on);
- an origin runs at most ``max_per_host`` at once (None: no cap but ``jobs``);
- an origin's own slot limit starts at ``initial_slots`` (2) and doubles with each attempt that goes
  well (a download finished, or an attempt that brought ``PROVEN_BYTES``: see ``Job``), until it
  is gone (at ``jobs``): a fast origin has every slot after a few answers, while one that never
  answers, or answers at a crawl, never holds more than 2; after attempts stalled or crawled
  (below the speed floor) the limit is back at ``STALLED_SLOTS``, each further round of them halves
  it (down to 1), and it grows again the same way;
- an origin is held back until a time: a ``Retry-After`` it sent (when that time comes, its
  downloads not yet asked for go first and the ones that got the Retry-After follow: an origin that
  answers every URL's first request with 429 or 503 "come back later", as a cache that fetches on
  demand does, then has every URL's first request made as early as the windows allow, so the list
  takes as few windows as the slots allow; for a plain rate limit the order changes nothing), or
  its backoff after failure
  *rounds* (refused connections, names that do not resolve, stalls, errors): a round is one or more
  failed attempts that all started after the previous failure of that origin, so sixteen downloads
  refused at once count once, and the backoff grows with rounds, not with the number of downloads;
- an origin whose last ``down_after`` rounds (as many attempts as one download is allowed:
  ``retries + 1``) all went without an answer (refused, unresolved, stalled, too slow) is *down*
  for ``down_for_s``: the tickets taken for it
  then carry ``ticket.down`` (why), and the pool ends them (or hands them to their next mirror)
  without a request, so a dead origin costs its own waits once, not once per download.

Observations come with :meth:`Scheduler.observe`: the signal of one attempt at one origin
(:class:`Signal`). The window: :meth:`Scheduler.room` says whether the pool may read more input
ahead (WAITING and PARKED tickets together stay under ``lookahead``), so memory stays bounded for
any list length; the pool reads ahead only while a slot is free and no waiting ticket can run.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from dataclasses import dataclass, field
from typing import Any

from ._exceptions import (
    ConnectError,
    RetryableStatus,
    SlowError,
    StallError,
    TransientError,
)

STALLED_SLOTS = 2  # slots of an origin whose attempts stall or crawl
INITIAL_SLOTS = 2  # slots of an origin that has not answered well yet
PROVEN_BYTES = 256 * 1024  # an attempt that brought this much answers well (before it ends)
DEFAULT_LOOKAHEAD = 1024  # tickets waiting or parked, at most, before input is read no further
DEFAULT_DOWN_FOR_S = 60.0
# Idle origins whose state still matters (a backoff, a cap) are kept; past this many, the ones that
# no longer matter are forgotten, so a list of a million origins does not keep a million states.
_ORIGINS_KEPT = 4096


class Signal(enum.Enum):
    """What one attempt says about its origin."""

    OK = "ok"  # bytes arrived as they should
    ANSWERED = "answered"  # a final answer that is not the origin's fault (404, checksum, disk)
    RETRY_AFTER = "retry-after"  # 429/503 with Retry-After: the origin said when
    REFUSED = "refused"  # the connection was refused, reset before an answer, or the name did not resolve
    STALLED = "stalled"  # no byte for the stall timeout
    SLOW = "slow"  # below the speed floor
    FAILED = "failed"  # another transient failure: 5xx, a broken body


_SLOT_SIGNALS = frozenset({Signal.STALLED, Signal.SLOW})
_FAILURE_SIGNALS = frozenset({Signal.REFUSED, Signal.STALLED, Signal.SLOW, Signal.FAILED})
# Failures that say nothing works at that origin (no answer at all, or one too slow to use); a
# status such as 503 may be one path's trouble, so it backs the origin off but never takes it down.
_DEAD_SIGNALS = frozenset({Signal.REFUSED, Signal.STALLED, Signal.SLOW})


def signal_of(error: BaseException | None, *, retried: bool = False) -> Signal:
    """The signal of an attempt that ended with ``error`` (None: it succeeded).

    ``retried``: the error gets another attempt although it is not transient (a status of
    ``--retry-on``): the origin is failing rather than answering.
    """
    if error is None:
        return Signal.OK
    if retried and not isinstance(error, TransientError):
        return Signal.FAILED
    if isinstance(error, RetryableStatus):
        return Signal.RETRY_AFTER if error.retry_after is not None else Signal.FAILED
    if isinstance(error, StallError):
        return Signal.STALLED
    if isinstance(error, SlowError):
        return Signal.SLOW
    if isinstance(error, ConnectError):
        return Signal.REFUSED if error.connecting else Signal.FAILED
    if isinstance(error, TransientError):
        return Signal.FAILED
    return Signal.ANSWERED


@dataclass(frozen=True, slots=True)
class Retry:
    """A step of a download that asks for another: not before ``delay_s`` from now, because of ``error``.

    The download keeps its state (attempts made, the mirror it is on) while it waits; the waiting is
    data in the scheduler (a parked ticket), not a task that holds a slot.
    """

    delay_s: float
    error: BaseException


@dataclass(frozen=True)
class HostRules:
    """The per-origin policy: caps, backoff, when an origin counts as down, the lookahead."""

    max_per_host: int | None = None
    initial_slots: int = INITIAL_SLOTS
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    down_after: int = 6  # failure rounds in a row (retries + 1)
    down_for_s: float = DEFAULT_DOWN_FOR_S
    lookahead: int = DEFAULT_LOOKAHEAD

    def __post_init__(self) -> None:
        if self.max_per_host is not None and self.max_per_host < 1:
            raise ValueError("max_per_host must be at least 1")
        if self.initial_slots < 1:
            raise ValueError("initial_slots must be at least 1")
        if self.lookahead < 1:
            raise ValueError("lookahead must be at least 1")
        if self.down_after < 1:
            raise ValueError("down_after must be at least 1")

    def backoff(self, rounds: int) -> float:
        """Seconds an origin is held back after ``rounds`` failure rounds (capped exponential)."""
        return min(self.backoff_max_s, self.backoff_base_s * 2.0 ** min(max(rounds, 1) - 1, 64))


class State(enum.Enum):
    WAITING = "waiting"
    PARKED = "parked"
    RUNNING = "running"
    DONE = "done"


class Ticket:
    """One download in the scheduler. ``job`` and ``owner`` are the pool's; the rest is ours."""

    __slots__ = (
        "behind",
        "down",
        "job",
        "not_before",
        "origin",
        "owner",
        "proving",
        "round",
        "seq",
        "started",
        "state",
        "task",
    )

    def __init__(self, seq: int, job: Any, origin: str, owner: Any) -> None:
        self.seq = seq
        self.job = job
        self.origin = origin
        self.owner = owner
        self.state = State.WAITING
        self.not_before = 0.0
        self.round = 0  # its origin's failure rounds when it was taken
        self.down: str | None = None  # set by take(): its origin is down, and why
        self.proving = False  # set by take(): its origin has not earned all its slots yet
        self.behind = False  # set by observe(): a Retry-After; back in its origin's queue, it
        # comes after the downloads not asked for yet (reset by take())
        self.task: Any = None  # the pool's: the task running it
        self.started = False  # the pool's: that task has begun (a cancel then reaches its code)

    def __lt__(self, other: Ticket) -> bool:
        # The order in an origin's queue: by arrival, the ones that got a Retry-After last.
        if self.behind is not other.behind:
            return other.behind
        return self.seq < other.seq

    def __repr__(self) -> str:
        return f"Ticket({self.seq}, {self.origin!r}, {self.state.value})"


@dataclass
class Origin:
    """What the scheduler knows of one origin."""

    key: str
    active: int = 0
    queue: list[Ticket] = field(default_factory=list)  # heap by seq: may run once the origin allows
    parked: int = 0
    blocked_until: float = 0.0  # no new request before this time
    cap: int | None = None  # the adaptive slot limit (None: none)
    suspect: bool = False  # the cap comes from stalls or crawls (worth remembering while idle)
    rounds: int = 0  # failure rounds in a row
    dead_rounds: int = 0  # ... of them, rounds without an answer (see _DEAD_SIGNALS)
    down_until: float = 0.0
    down_reason: str = ""
    ready_seq: int | None = None  # the seq of its live entry in the scheduler's ready heap

    def limit(self, max_per_host: int | None) -> int | None:
        if self.cap is None:
            return max_per_host
        return self.cap if max_per_host is None else min(self.cap, max_per_host)

    def idle(self) -> bool:
        return not (self.active or self.queue or self.parked)


class Scheduler:
    """The run's tickets and origins (see the module docstring). Not thread-safe; never awaits."""

    def __init__(self, *, jobs: int, rules: HostRules | None = None) -> None:
        if jobs < 1:
            raise ValueError("jobs must be at least 1")
        self.jobs = jobs
        self.rules = rules or HostRules()
        self.running = 0
        self.waiting = 0  # WAITING tickets
        self.parked = 0  # PARKED tickets
        self._seq = itertools.count()
        self._origins: dict[str, Origin] = {}
        self._ready: list[tuple[int, str]] = []  # (head seq, origin): origins that may be able to start
        self._timers: list[tuple[float, int, Ticket]] = []  # parked tickets by not_before
        self._blocks: list[tuple[float, str]] = []  # origins held back, by until
        self._kept_limit = _ORIGINS_KEPT

    # --- reading ---
    def room(self) -> bool:
        """Whether more input may be read ahead (the window is not full)."""
        return self.waiting + self.parked < self.rules.lookahead

    def origin(self, key: str) -> Origin | None:
        return self._origins.get(key)

    def free_slots(self) -> int:
        return self.jobs - self.running

    def timed(self) -> bool:
        """Whether a time is waited for (a parked ticket, an origin held back): see wake_at()."""
        return bool(self._timers or self._blocks)

    def wake_at(self) -> float | None:
        """The earliest time at which take() may find work because time passed (None: no timer)."""
        times = []
        if self._timers:
            times.append(self._timers[0][0])
        if self._blocks:
            times.append(self._blocks[0][0])
        return min(times) if times else None

    # --- changing ---
    def add(self, job: Any, origin: str, owner: Any = None) -> Ticket:
        """A new download, behind every earlier one."""
        ticket = Ticket(next(self._seq), job, origin, owner)
        self.waiting += 1
        self._enqueue(ticket, self._get(origin))
        return ticket

    def take(self, now: float) -> Ticket | None:
        """The next ticket to run now (it becomes RUNNING), or None."""
        if self.running >= self.jobs:
            return None
        self._expire(now)
        ready = self._ready
        while ready:
            seq, key = heapq.heappop(ready)
            state = self._origins.get(key)
            if state is None or state.ready_seq != seq:
                continue  # an entry made stale by a later one for the same origin
            state.ready_seq = None
            if not state.queue or not self._may_start(state, now):
                continue  # marked ready again when it can start
            head = heapq.heappop(state.queue)
            self.waiting -= 1
            state.active += 1
            self.running += 1
            head.state = State.RUNNING
            head.behind = False
            head.round = state.rounds
            head.down = state.down_reason if now < state.down_until else None
            head.proving = state.cap is not None
            if state.queue and self._may_start(state, now):
                self._mark_ready(state)
            return head
        return None

    def finish(self, ticket: Ticket) -> None:
        """A RUNNING ticket ended (its result is known, or it was cancelled)."""
        if ticket.state is not State.RUNNING:
            raise ValueError(f"finish() of a ticket that is not running: {ticket!r}")
        ticket.state = State.DONE
        self._release(ticket)

    def park(self, ticket: Ticket, *, not_before: float, origin: str | None = None) -> None:
        """A RUNNING ticket waits for its next attempt, without a slot; ``origin``: its next one."""
        if ticket.state is not State.RUNNING:
            raise ValueError(f"park() of a ticket that is not running: {ticket!r}")
        self._release(ticket)
        if origin is not None:
            ticket.origin = origin
        ticket.state = State.PARKED
        ticket.not_before = not_before
        self.parked += 1
        state = self._get(ticket.origin)
        state.parked += 1
        if not_before < state.down_until:
            # Its origin is down and still will be then: it need not wait to learn it (as _wake_parked).
            self._unpark(ticket)
            return
        heapq.heappush(self._timers, (not_before, ticket.seq, ticket))

    def withdraw(self, ticket: Ticket) -> bool:
        """Take a WAITING or PARKED ticket out (True); False when it is running or done."""
        state = self._origins.get(ticket.origin)
        if ticket.state is State.WAITING:
            assert state is not None
            state.queue.remove(ticket)
            heapq.heapify(state.queue)
            self.waiting -= 1
            if state.queue:
                self._mark_ready(state)
        elif ticket.state is State.PARKED:
            assert state is not None
            state.parked -= 1
            self.parked -= 1  # its timer entry is skipped when it comes up
        else:
            return False
        ticket.state = State.DONE
        self._forget(state)
        return True

    def observe(
        self,
        ticket: Ticket,
        signal: Signal,
        now: float,
        *,
        retry_after: float | None = None,
        reason: str = "",
    ) -> None:
        """What the attempt of ``ticket`` (at ``ticket.origin``, before any park()) said about it."""
        state = self._get(ticket.origin)
        rules = self.rules
        if signal is Signal.OK or signal is Signal.ANSWERED:
            state.rounds = state.dead_rounds = 0
            state.down_until = 0.0
            if signal is Signal.OK and state.cap is not None:
                state.cap *= 2
                if state.cap >= self.jobs:
                    state.cap = None
                    state.suspect = False
                if state.queue:
                    self._mark_ready(state)  # may start more now
            return
        if signal is Signal.RETRY_AFTER:
            self._block(state, now + max(0.0, retry_after or 0.0))
            ticket.behind = True
            if not state.suspect:
                # It answers at once and says when to come back: its own flow control; when that
                # time comes, every download waiting for it may go (not 2 at first, then more).
                state.cap = None
            return
        if signal not in _FAILURE_SIGNALS:
            return
        if signal in _SLOT_SIGNALS:
            if state.suspect and ticket.round == state.rounds and state.cap is not None:
                state.cap = max(1, state.cap // 2)  # a further round that stalled: fewer still
            else:
                state.cap = STALLED_SLOTS if state.cap is None else min(state.cap, STALLED_SLOTS)
            state.suspect = True
        if ticket.round != state.rounds:
            return  # started before the origin's last failure: the same round
        state.rounds += 1
        state.dead_rounds = state.dead_rounds + 1 if signal in _DEAD_SIGNALS else 0
        if signal is Signal.REFUSED:
            self._block(state, now + rules.backoff(state.rounds))
        elif state.rounds >= 2:
            self._block(state, now + rules.backoff(state.rounds - 1))
        if state.dead_rounds >= rules.down_after:
            state.down_until = now + rules.down_for_s
            state.down_reason = (
                f"{state.key or 'the origin'} gave no answer to {state.dead_rounds} rounds of attempts "
                f"in a row (last: {reason or signal.value})"
            )
            self._wake_parked(state)

    # --- inside ---
    def _get(self, key: str) -> Origin:
        state = self._origins.get(key)
        if state is None:
            initial = self.rules.initial_slots
            state = self._origins[key] = Origin(key, cap=initial if initial < self.jobs else None)
        return state

    def _may_start(self, state: Origin, now: float) -> bool:
        if now < state.down_until:
            return True  # its tickets end at once, without a request
        if now < state.blocked_until:
            return False
        limit = state.limit(self.rules.max_per_host)
        return limit is None or state.active < limit

    def _mark_ready(self, state: Origin) -> None:
        """``state`` may be able to start its first ticket: one entry in the ready heap, keyed by it."""
        head = state.queue[0].seq
        if state.ready_seq != head:
            state.ready_seq = head
            heapq.heappush(self._ready, (head, state.key))

    def _enqueue(self, ticket: Ticket, state: Origin) -> None:
        queue = state.queue
        heapq.heappush(queue, ticket)
        if queue[0] is ticket:
            self._mark_ready(state)

    def _release(self, ticket: Ticket) -> None:
        self.running -= 1
        state = self._origins[ticket.origin]
        state.active -= 1
        if state.queue:
            self._mark_ready(state)
        self._forget(state)

    def _block(self, state: Origin, until: float) -> None:
        if until > state.blocked_until:
            state.blocked_until = until
            heapq.heappush(self._blocks, (until, state.key))

    def _expire(self, now: float) -> None:
        """Parked tickets whose time came go back to their queue; origins held back until now may start."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            not_before, _, ticket = heapq.heappop(timers)
            if ticket.state is not State.PARKED or ticket.not_before != not_before:
                continue  # withdrawn, or woken early
            self._unpark(ticket)
        blocks = self._blocks
        while blocks and blocks[0][0] <= now:
            _, key = heapq.heappop(blocks)
            state = self._origins.get(key)
            if state is None or state.blocked_until > now:
                continue  # held back again since
            state.blocked_until = 0.0
            if state.queue:
                self._mark_ready(state)
            else:
                self._forget(state)

    def _unpark(self, ticket: Ticket) -> None:
        state = self._get(ticket.origin)
        state.parked -= 1
        self.parked -= 1
        self.waiting += 1
        ticket.state = State.WAITING
        self._enqueue(ticket, state)

    def _wake_parked(self, state: Origin) -> None:
        """An origin went down: its parked tickets need not wait to learn it."""
        if not state.parked:
            return
        for _, _, ticket in list(self._timers):
            if ticket.state is State.PARKED and ticket.origin == state.key:
                self._unpark(ticket)
        if state.queue:
            self._mark_ready(state)

    def _forget(self, state: Origin | None) -> None:
        """Drop idle origins that carry no state worth keeping, now and then."""
        if state is None or not state.idle():
            return
        if not (state.rounds or state.suspect or state.blocked_until or state.down_until):
            del self._origins[state.key]
            return
        if len(self._origins) > self._kept_limit:
            for key in [k for k, s in self._origins.items() if s.idle()]:
                del self._origins[key]
            self._kept_limit = max(_ORIGINS_KEPT, 2 * len(self._origins))
