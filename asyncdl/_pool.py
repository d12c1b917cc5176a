"""Bounded concurrency over lazy inputs.

``Pool`` runs downloads as the host-aware scheduler (``_hosts``) decides: one attempt at a time,
a download waiting for its next attempt holds no slot. ``bounded_map`` (uploads) is the plain form:
N workers pull items; no task per item is ever created.

Items are prepared (a synchronous step, e.g. deciding names) in the order they are pulled, so
decisions that depend on order are deterministic; the work itself runs concurrently and results come
back as they finish, so memory stays bounded whatever the input length.

The Pool's surface, for everything that feeds downloads into a Downloader (its batch API, and a live
queue of handles built on it)::

    pool = Pool(Scheduler(jobs=16, rules=HostRules(...)))   # one per Downloader, for its life
    async for result in pool.stream(items, prepare): ...     # a lazy input; prepare(item) -> job
    submission = pool.submit(job)                            # one download, queued behind the others
    await submission.result()                                # its result (cancelling the caller
                                                             #   cancels the download)
    submission.state                                         # WAITING / PARKED / RUNNING / DONE
    await submission.cancel()                                # withdrawn if it waits or is parked;
                                                             #   its attempt cancelled if it runs
                                                             #   (cleanup done when this returns)
    pool.jobs = 8                                            # at any time; running ones go on
    await pool.aclose()

A job is anything with the Steppable shape (``_download.Job``): ``origin``, ``step(down, proven)``
giving a result or a ``_hosts.Retry``, ``signal`` / ``retry_after`` (what the last attempt said
about its origin) and ``abandon()``. A job keeps its state between steps, so a paused download is a
cancelled submission whose job is submitted again later (it resumes from the bytes on disk), and a
waiting one is reordered by withdrawing it (``cancel()`` while it waits) and submitting it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
)
from typing import Any, Generic, Protocol, TypeVar

from ._hosts import Retry, Scheduler, Signal, State, Ticket

T = TypeVar("T")
P = TypeVar("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class _End:
    pass


_END = _End()


class _Source(Generic[T]):
    """Pulls items one at a time from a sync or async iterable, shared by the workers."""

    def __init__(self, items: Iterable[T] | AsyncIterable[T]) -> None:
        self._sync: Iterator[T] | None = None
        self._async: AsyncIterator[T] | None = None
        if isinstance(items, AsyncIterable):
            self._async = aiter(items)
        else:
            self._sync = iter(items)
        self._lock = asyncio.Lock()
        self.exhausted = False

    def is_exhausted(self) -> bool:
        return self.exhausted

    async def pull(self, prepare: Callable[[T], P]) -> P | _End:
        if self.exhausted:
            return _END
        if self._sync is not None:
            # No await between pulling and preparing: pull order is preparation order.
            try:
                item = next(self._sync)
            except StopIteration:
                self.exhausted = True
                return _END
            return prepare(item)
        assert self._async is not None
        async with self._lock:
            if self.is_exhausted():  # another worker may have reached the end while we waited
                return _END
            try:
                item = await anext(self._async)
            except StopAsyncIteration:
                self.exhausted = True
                return _END
            return prepare(item)


async def bounded_map(
    items: Iterable[T] | AsyncIterable[T],
    prepare: Callable[[T], P],
    work: Callable[[P], Awaitable[R]],
    *,
    workers: int,
) -> AsyncGenerator[R, None]:
    """Yield ``await work(prepare(item))`` for every item, as they finish, with ``workers`` at once.

    ``work`` is expected to turn per-item failures into results; an exception from ``prepare`` or
    ``work`` stops the pool and propagates. Closing the generator (or cancelling its consumer)
    cancels the workers and waits for them, so their cleanup runs before this returns.
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    source = _Source(items)
    results: asyncio.Queue[R | _End | BaseException] = asyncio.Queue(maxsize=workers)
    running = workers

    async def worker() -> None:
        nonlocal running
        try:
            while True:
                prepared = await source.pull(prepare)
                if isinstance(prepared, _End):
                    break
                await results.put(await work(prepared))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the consumer, who re-raises it
            source.exhausted = True
            await results.put(exc)
        running -= 1
        if running == 0:
            await results.put(_END)

    tasks = [asyncio.ensure_future(worker()) for _ in range(workers)]
    try:
        while True:
            item = await results.get()
            if isinstance(item, _End):
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# --- the scheduled pool: downloads one attempt at a time, chosen by _hosts.Scheduler ---------------


class Steppable(Protocol[R_co]):
    """A download as the pool runs it (``_download.Job``): one ``step()`` is one attempt."""

    @property
    def origin(self) -> str: ...  # the origin of the next attempt

    @property
    def signal(self) -> Signal | None: ...  # what the last step's attempt said about its origin

    @property
    def retry_after(self) -> float | None: ...

    async def step(
        self, down: str | None = None, proven: Callable[[], None] | None = None
    ) -> R_co | Retry: ...  # proven(): the attempt brought enough bytes to count as a good answer

    def abandon(self) -> None: ...  # it will not go on (cancelled)


class _Owner(Generic[R]):
    """Where the results of some tickets go: a stream's consumer, or one submission's future."""

    def __init__(self) -> None:
        self.tickets: set[Ticket] = set()

    def deliver(self, ticket: Ticket, result: R) -> None:
        raise NotImplementedError

    def fail(self, exc: BaseException) -> None:
        raise NotImplementedError


class Submission(_Owner[R]):
    """One download handed to :meth:`Pool.submit`: ``await submission.result()``; ``cancel()``."""

    def __init__(self, pool: Pool[R]) -> None:
        super().__init__()
        self._pool = pool
        self.future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self.ticket: Ticket | None = None

    def deliver(self, ticket: Ticket, result: R) -> None:
        if not self.future.done():
            self.future.set_result(result)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)

    @property
    def state(self) -> State:
        assert self.ticket is not None
        return self.ticket.state

    async def result(self) -> R:
        """The Result; cancelling the caller cancels the download (and waits for its cleanup)."""
        try:
            return await asyncio.shield(self.future)
        except asyncio.CancelledError:
            await self.cancel()
            raise

    async def cancel(self) -> None:
        """Withdraw the download if it waits, or cancel its attempt if it runs; returns when it ended."""
        await self._pool.cancel(self)
        self.future.cancel()


class _Feed(_Owner[R]):
    """A lazy input of one ``Pool.stream()`` call, and the results waiting for its consumer."""

    def __init__(
        self,
        items: Iterable[T] | AsyncIterable[T],
        prepare: Callable[[T], Steppable[R]],
        *,
        max_results: int,
    ) -> None:
        super().__init__()
        self.sync: Iterator[T] | None = None
        self.async_items: AsyncIterator[T] | None = None
        if isinstance(items, AsyncIterable):
            self.async_items = aiter(items)
        else:
            self.sync = iter(items)
        self.prepare: Callable[[Any], Steppable[R]] = prepare
        self.max_results = max_results
        self.results: deque[R] = deque()
        self.exhausted = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.hungry = asyncio.Event()  # the reader of an async input may read one more item
        self.reader: asyncio.Task[None] | None = None

    def can_give(self) -> bool:
        return not self.exhausted and self.error is None and len(self.results) < self.max_results

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def deliver(self, ticket: Ticket, result: R) -> None:
        self.results.append(result)
        self.wake()

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.wake()

    def done(self) -> bool:
        return self.exhausted and not self.tickets and not self.results


class Pool(Generic[R]):
    """Runs downloads one attempt at a time, as a :class:`~asyncdl._hosts.Scheduler` decides.

    Long-lived: a Downloader owns one for its life, and every way work arrives feeds it: ``stream()``
    (a lazy input, read ahead only as far as the scheduler's window allows) and ``submit()`` (one
    download: ``Downloader.download()``, and a live queue's ``add()``). One task per running
    attempt, at most ``jobs`` at once; a download between attempts is a parked ticket, not a task.
    ``jobs`` may be changed at any time. A running attempt is cancelled with ``cancel()``; its
    cleanup (the temporary file closed, bytes kept) runs before ``cancel()`` returns.
    """

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._loop = asyncio.get_running_loop()
        self._feeds: list[_Feed[R]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def jobs(self) -> int:
        return self.scheduler.jobs

    @jobs.setter
    def jobs(self, value: int) -> None:
        if value < 1:
            raise ValueError("jobs must be at least 1")
        self.scheduler.jobs = value
        self.pump()

    # --- feeding ---
    def submit(self, job: Steppable[R]) -> Submission[R]:
        """Queue one download behind those already waiting; its Submission gives the result."""
        if self._closed:
            raise RuntimeError("the pool is closed")
        submission: Submission[R] = Submission(self)
        submission.ticket = self._add(job, submission)
        self.pump()
        return submission

    async def stream(
        self,
        items: Iterable[T] | AsyncIterable[T],
        prepare: Callable[[T], Steppable[R]],
    ) -> AsyncGenerator[R, None]:
        """Yield the result of every item as it finishes; ``prepare`` runs in input order.

        The input is read only when a slot is free and no waiting download can use it, and never
        beyond the scheduler's window. Closing the generator (or cancelling its consumer) withdraws
        this input's waiting downloads and cancels its running ones, waiting for their cleanup; an
        exception from ``prepare`` or from a download (a programming error) ends the stream with it.
        """
        if self._closed:
            raise RuntimeError("the pool is closed")
        feed: _Feed[R] = _Feed(items, prepare, max_results=max(1, self.scheduler.jobs))
        self._feeds.append(feed)
        if feed.async_items is not None:
            feed.reader = asyncio.ensure_future(self._read(feed))
        try:
            self.pump()
            while True:
                if feed.results:
                    yield feed.results.popleft()
                    if not feed.exhausted and self.scheduler.running < self.scheduler.jobs:
                        self.pump()  # room for one more result: the input may be read again
                    continue
                if feed.error is not None:
                    raise feed.error
                if feed.done():
                    return
                feed.waiter = self._loop.create_future()
                await feed.waiter
                feed.waiter = None
        finally:
            feed.exhausted = True
            self._feeds.remove(feed)
            if feed.reader is not None:
                feed.reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feed.reader
            await self._cancel_all(feed)

    async def _read(self, feed: _Feed[R]) -> None:
        """Read an async input one item at a time, each when the pool asks for one."""
        assert feed.async_items is not None
        try:
            while True:
                await feed.hungry.wait()
                feed.hungry.clear()
                try:
                    item = await anext(feed.async_items)
                except StopAsyncIteration:
                    feed.exhausted = True
                    feed.wake()
                    return
                self._add(feed.prepare(item), feed)
                self.pump()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the consumer, who raises it
            feed.fail(exc)

    def _add(self, job: Steppable[R], owner: _Owner[R]) -> Ticket:
        ticket = self.scheduler.add(job, job.origin, owner)
        owner.tickets.add(ticket)
        return ticket

    def _read_ahead(self) -> bool:
        """Add one item of some input to the scheduler; False when none can be added now."""
        if not self.scheduler.room():
            return False
        for feed in self._feeds:
            if not feed.can_give():
                continue
            if feed.sync is None:
                feed.hungry.set()  # its reader adds the item, then pumps again
                continue
            try:
                item = next(feed.sync)
            except StopIteration:
                feed.exhausted = True
                feed.wake()
                continue
            except BaseException as exc:
                feed.fail(exc)
                continue
            try:
                job = feed.prepare(item)
            except BaseException as exc:
                feed.fail(exc)
                continue
            self._add(job, feed)
            return True
        return False

    # --- running ---
    def pump(self) -> None:
        """Start what may start now; read input ahead while a slot is free and nothing waiting can run."""
        if self._closed:
            return
        scheduler = self.scheduler
        now = self._loop.time()
        while scheduler.running < scheduler.jobs:
            ticket = scheduler.take(now)
            if ticket is None:
                if self._read_ahead():
                    continue
                break
            task = self._loop.create_task(self._run(ticket))
            ticket.task = task
            ticket.started = False
            self._tasks.add(task)
        if scheduler.timed():
            self._arm_timer()

    def _arm_timer(self) -> None:
        at = self.scheduler.wake_at()
        timer = self._timer
        if at is None or self.scheduler.running >= self.scheduler.jobs:
            return  # a finishing attempt pumps again
        if timer is not None:
            if self._timer_at <= at:
                return
            timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.pump()

    async def _run(self, ticket: Ticket) -> None:
        """One attempt of ``ticket``, then what it says goes to the scheduler. (No done-callback: a
        task cancelled before it began never runs this, and whoever cancels it drops its ticket.)"""
        ticket.started = True
        job: Steppable[R] = ticket.job
        owner: _Owner[R] = ticket.owner
        scheduler = self.scheduler
        try:
            # Only an origin that has not earned all its slots yet needs to hear of a good answer early.
            proven = functools.partial(self._proven, ticket) if ticket.proving else None
            outcome = await job.step(ticket.down, proven)
        except asyncio.CancelledError:
            self._drop(ticket)
            raise
        except BaseException as exc:
            self._drop(ticket)
            owner.fail(exc)
            return
        finally:
            self._tasks.discard(ticket.task)
        now = self._loop.time()
        signal = job.signal
        if signal is Signal.OK:
            scheduler.observe(ticket, signal, now)
        elif signal is not None:
            error = outcome.error if isinstance(outcome, Retry) else getattr(outcome, "error", None)
            scheduler.observe(ticket, signal, now, retry_after=job.retry_after, reason=str(error or ""))
        if isinstance(outcome, Retry):
            scheduler.park(ticket, not_before=now + outcome.delay_s, origin=job.origin)
        else:
            scheduler.finish(ticket)
            owner.tickets.discard(ticket)
            owner.deliver(ticket, outcome)
        self.pump()

    def _proven(self, ticket: Ticket) -> None:
        """A running attempt brought enough bytes: its origin answers well (it may get more slots)."""
        if ticket.state is State.RUNNING:
            self.scheduler.observe(ticket, Signal.OK, self._loop.time())
            self.pump()

    def _drop(self, ticket: Ticket) -> None:
        """A running ticket ends without a result (cancelled, or a programming error): its slot back."""
        if ticket.state is not State.RUNNING:
            return
        self.scheduler.finish(ticket)
        ticket.owner.tickets.discard(ticket)
        ticket.job.abandon()
        self.pump()

    def _cancel_task(self, ticket: Ticket) -> asyncio.Task[None] | None:
        """Cancel the task of a running ticket; the task to wait for (None: it never began)."""
        task: asyncio.Task[None] | None = ticket.task
        if task is None or task.done():
            return None
        task.cancel()
        if ticket.started:
            return task
        self._tasks.discard(task)  # its code never runs: the ticket is dropped here
        self._drop(ticket)
        return None

    def withdraw(self, submission: Submission[R]) -> bool:
        """Take a submitted download that waits or is parked out at once (True; its result future is
        cancelled); False when it runs or has ended. The live queue pauses and reorders with it."""
        ticket = submission.ticket
        if ticket is None or not self.scheduler.withdraw(ticket):
            return False
        submission.tickets.discard(ticket)
        ticket.job.abandon()
        submission.future.cancel()
        self.pump()
        return True

    async def cancel(self, owner: _Owner[R]) -> None:
        """End every download of ``owner``: waiting ones are withdrawn, running ones cancelled."""
        await self._cancel_all(owner)

    async def _cancel_all(self, owner: _Owner[R]) -> None:
        running: list[asyncio.Task[None]] = []
        for ticket in list(owner.tickets):
            if self.scheduler.withdraw(ticket):
                owner.tickets.discard(ticket)
                ticket.job.abandon()
            elif (task := self._cancel_task(ticket)) is not None:
                running.append(task)
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        self.pump()

    async def aclose(self) -> None:
        """Cancel everything under way and wait for it. Safe to call twice."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
