"""The live queue: downloads added while others run, each with a handle to watch and steer it.

::

    async with asyncdl.Downloader(dest="out", jobs=4) as dl:
        handle = dl.add("https://example.org/a.iso")
        handle.pause()          # connection closed, bytes kept on disk
        handle.resume()         # queued again; continues with Range from the bytes on disk
        result = await handle   # its Result

The queue runs nothing itself: it hands its downloads, in queue order, to the Downloader's pool
(``_pool.Pool``), where the host-aware scheduler runs them beside those of ``download()`` and
``stream()``, ``jobs`` at once. ``waiting`` holds the waiting and paused items in queue order; an item
handed over stays there, at its place, until its first attempt starts. Items are handed over only
while the scheduler's lookahead window has room, so a queue of 100,000 stays in this list. A paused
download is a submission withdrawn (not started yet, or between attempts) or cancelled (running),
handed over again on resume: it continues from the bytes on disk. Reordering withdraws the
submissions that have not started and hands them over again in the new order. An item's name is
decided when it is first handed over and kept across pauses, so a resumed item finds its temporary
file. Finished handles leave the queue.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from ._download import Engine, Job, JobWrapper, Plan
from ._files import TempFile
from ._hosts import Retry
from ._models import Request, Result, Status
from ._pool import Pool, Submission
from ._urls import redact_url

WAITING = "waiting"
ACTIVE = "active"
PAUSED = "paused"
CANCELLED = "cancelled"
_SUBMITTED = "submitted"  # in the pool: waiting there, running, or parked between attempts
# Finished handles report their Result's status: "ok", "skipped" or "failed".

# Events a listener gets: (handle, event).
EVENT_START = "start"
EVENT_PAUSE = "pause"
EVENT_STOP = "stop"  # cancelled
EVENT_COMPLETE = "complete"
EVENT_ERROR = "error"

_RATE_WINDOW_S = 3.0


@dataclass(frozen=True)
class HandleProgress:
    """How far one download got: ``done`` bytes of ``total`` (None while unknown), recent rate."""

    done: int
    total: int | None
    rate_bps: float


class DownloadHandle:
    """One download of the live queue. Awaiting it gives its :class:`Result`."""

    __slots__ = (
        "__weakref__",
        "_announced",
        "_done",
        "_future",
        "_job",
        "_queue",
        "_samples",
        "_status",
        "_stopped_running",
        "_stopping",
        "_submission",
        "_total",
        "plan",
        "request",
        "result",
        "tag",
    )

    def __init__(self, queue: LiveQueue, request: Request, *, paused: bool = False) -> None:
        self._queue = queue
        self.request = request
        self.plan: Plan | None = None  # decided when first handed to the pool
        self.result: Result | None = None
        self.tag: Any = None  # for the owner (the daemon keeps its GID here)
        self._status = PAUSED if paused else WAITING
        self._job: Job | None = None
        self._submission: Submission[Result] | None = None
        self._announced = False  # the start of this submission was told to the listeners
        self._stopping: str | None = None  # why the running download is being cancelled
        self._stopped_running = False  # it was cancelled while running
        self._future: asyncio.Future[Result] | None = None
        self._done = 0  # bytes on disk when not running
        self._total: int | None = None
        self._samples: deque[tuple[float, int]] | None = None

    # --- reading ---
    @property
    def status(self) -> str:
        """``waiting``, ``active``, ``paused``, ``cancelled``, or the Result's status when finished.

        ``active`` covers a download between attempts (waiting to retry), as in aria2.
        """
        if self._status == _SUBMITTED:
            # Started (also between attempts, and while being paused or cancelled): active, as in aria2.
            return ACTIVE if self._announced else WAITING
        if self.result is not None and self._status != CANCELLED:
            return self.result.status.value
        return self._status

    @property
    def finished(self) -> bool:
        return self.result is not None

    @property
    def forgotten(self) -> bool:
        """Cancelled while it was not running (it waited, or was paused)."""
        return self._status == CANCELLED and self._stopped_running is False

    @property
    def pausing(self) -> bool:
        """A pause was asked for and its attempt is still ending."""
        return self._stopping == PAUSED

    @property
    def name(self) -> str | None:
        """The file name, once decided (the final path once finished)."""
        if self.result is not None and self.result.path:
            return self.result.path.rsplit("/", 1)[-1]
        return self.plan.name if self.plan is not None and self.plan.name else None

    @property
    def progress(self) -> HandleProgress:
        entry = self._entry()
        if entry is None or (entry.done == 0 and entry.total is None):
            # Not running, or started but not yet told what is on disk: the last figures known.
            return HandleProgress(self._done, self._total, 0.0)
        now = time.monotonic()
        samples = self._samples
        if samples is None:
            samples = self._samples = deque(maxlen=16)
        samples.append((now, entry.done))
        while len(samples) > 2 and now - samples[1][0] >= _RATE_WINDOW_S:
            samples.popleft()
        t0, d0 = samples[0]
        rate = (entry.done - d0) / (now - t0) if now > t0 else 0.0
        self._done, self._total = entry.done, entry.total
        return HandleProgress(entry.done, entry.total, max(0.0, rate))

    def _entry(self) -> Any:
        job = self._job
        key = None if job is None else job.progress_key
        return None if key is None else self._queue.engine.progress.active.get(key)

    # --- steering ---
    def pause(self) -> bool:
        """Stop this download and keep its bytes; False when it is not waiting or active."""
        return self._queue.pause(self)

    def resume(self) -> bool:
        """Queue a paused download again (it continues from the bytes on disk); False if not paused."""
        return self._queue.resume(self)

    def cancel(self) -> bool:
        """Stop this download for good and remove its temporary file; False if already finished."""
        return self._queue.cancel(self)

    def __await__(self) -> Generator[Any, None, Result]:
        if self.result is not None:
            return self.result
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
        return (yield from asyncio.shield(self._future).__await__())

    def __repr__(self) -> str:
        return f"<DownloadHandle {redact_url(self.request.url)} {self.status}>"


class _Announced(JobWrapper):
    """A queue item's Job as the pool runs it: its first step tells the queue that it started."""

    __slots__ = ("handle", "queue")

    def __init__(self, queue: LiveQueue, handle: DownloadHandle, job: Job) -> None:
        super().__init__(job)
        self.queue = queue
        self.handle = handle

    async def step(self, down: str | None = None, proven: Callable[[], None] | None = None) -> Result | Retry:
        handle = self.handle
        if not handle._announced:
            self.queue._started(handle)
        return await self.job.step(down, proven)

    def abandon(self) -> None:
        self.job.abandon()


Listener = Callable[[DownloadHandle, str], None]


class LiveQueue:
    """The Downloader's live queue: its order, handed to the pool; the handles' pause, resume, cancel."""

    def __init__(self, engine: Engine, pool: Pool[Result]) -> None:
        self.engine = engine
        self.pool = pool
        # Waiting and paused items in queue order, those handed over to the pool included until they
        # start (then they leave it).
        self.waiting: list[DownloadHandle] = []
        self.submitted: dict[DownloadHandle, Submission[Result]] = {}  # in the pool, in hand-over order
        self._listeners: list[Listener] = []
        self._closing = False
        # How many items of ``waiting`` are neither paused nor handed over: with none, there is nothing
        # to hand over (a queue of paused items is not scanned at every change).
        self._ready = 0
        # Every item of ``waiting`` before this index is handed over or paused: _fill() starts here,
        # not at the head (past up to a lookahead window of handed-over items at every change).
        self._hint = 0
        self._tasks: set[asyncio.Future[None]] = set()

    # --- configuration and reading ---
    @property
    def jobs(self) -> int:
        return self.pool.jobs

    @jobs.setter
    def jobs(self, value: int) -> None:
        """More slots start waiting items at once; fewer let running ones finish (as aria2)."""
        self.pool.jobs = value

    @property
    def active(self) -> list[DownloadHandle]:
        """Running downloads, and those between attempts."""
        return [h for h in self.submitted if h._announced]

    def items(self) -> list[DownloadHandle]:
        """Every unfinished item: the active ones, then the waiting and paused ones in order."""
        return [*self.active, *self.waiting]

    def waiting_items(self) -> list[DownloadHandle]:
        """Waiting and paused items in queue order."""
        return list(self.waiting)

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(handle, event)`` on start, pause, stop (cancel), complete and error."""
        self._listeners.append(listener)

    def _emit(self, handle: DownloadHandle, event: str) -> None:
        for listener in self._listeners:
            listener(handle, event)

    # --- adding and ordering ---
    def add(self, request: Request, *, position: int | None = None, paused: bool = False) -> DownloadHandle:
        handle = DownloadHandle(self, request, paused=paused)
        if not paused:
            self._ready += 1
        if position is None:
            self.waiting.append(handle)
            self._fill()
        else:
            self.waiting.append(handle)
            self.move(handle, position)
        return handle

    def position(self, handle: DownloadHandle) -> int:
        """The place of a waiting or paused item in the queue; ValueError if it is not waiting."""
        return self.waiting.index(handle)

    def move(self, handle: DownloadHandle, dest: int) -> int:
        """Move a waiting or paused item to index ``dest`` (clamped) of the queue; its new index."""
        self._take_back()
        self.waiting.remove(handle)
        dest = max(0, min(dest, len(self.waiting)))
        self.waiting.insert(dest, handle)
        self._hint = 0
        self._fill()
        return dest

    def _take_back(self) -> None:
        """Withdraw the submissions that have not started: they are handed over again in order."""
        for handle in [h for h in self.submitted if not h._announced]:
            if self._withdraw(handle):
                self._ready += 1
        self._hint = 0

    def _withdraw(self, handle: DownloadHandle) -> bool:
        submission = self.submitted.get(handle)
        if submission is None or not self.pool.withdraw(submission):
            return False
        del self.submitted[handle]
        handle._status = WAITING
        handle._submission = None
        return True

    # --- steering (called through the handles) ---
    def pause(self, handle: DownloadHandle) -> bool:
        if handle.result is not None or handle._stopping is not None:
            return False
        if handle._status == WAITING:
            handle._status = PAUSED
            self._ready -= 1
            self._emit(handle, EVENT_PAUSE)
            return True
        if handle._status != _SUBMITTED:
            return False
        started = handle._announced
        if self._withdraw(handle):  # it waited in the pool (keeping its place), or between attempts
            handle._status = PAUSED
            if started:
                self.waiting.insert(0, handle)  # as aria2: a paused download heads the queue
                self._hint += 1
            self._emit(handle, EVENT_PAUSE)
            self._fill()
            return True
        self._stop(handle, PAUSED)
        return True

    def resume(self, handle: DownloadHandle) -> bool:
        if handle._status != PAUSED or handle.result is not None:
            return False
        handle._status = WAITING
        self._ready += 1
        self._hint = 0
        self._fill()
        return True

    def cancel(self, handle: DownloadHandle) -> bool:
        if handle.result is not None or handle._stopping == CANCELLED:
            return False
        handed_over = handle._status == _SUBMITTED
        if handed_over and not self._withdraw(handle):
            self._stop(handle, CANCELLED)  # running (or being paused): stopped, then cleaned up
            return True
        if self._unlist(handle) and handle._status == WAITING and not handed_over:
            self._ready -= 1
        self._finish_cancelled(handle)
        if handle.plan is not None:
            # It may have bytes on disk (paused, or withdrawn between attempts): they go too.
            self._spawn(_discard(handle.plan))
        self._fill()
        return True

    def _stop(self, handle: DownloadHandle, reason: str) -> None:
        """Cancel a running download; what follows (``_stopped``) depends on ``reason``."""
        handle._stopping = reason
        entry = handle._entry()
        if entry is not None:
            handle._done, handle._total = entry.done, entry.total
        submission = self.submitted[handle]
        self._spawn(self._cancel_running(handle, submission))

    async def _cancel_running(self, handle: DownloadHandle, submission: Submission[Result]) -> None:
        await submission.cancel()  # returns once the attempt has ended and closed its file
        if self.submitted.get(handle) is not submission:
            return  # it finished first: _on_done has settled it
        del self.submitted[handle]
        handle._submission = None
        reason, handle._stopping = handle._stopping, None
        started = handle._announced
        if not started:
            # Cancelled before its first step: it is still in the list, at its place.
            self._unlist(handle)
        if reason == CANCELLED:
            assert handle.plan is not None
            await _discard(handle.plan)
            handle._stopped_running = started
            self._finish_cancelled(handle)
        elif reason == PAUSED:
            handle._status = PAUSED
            self.waiting.insert(0, handle)  # as aria2: a paused download heads the queue
            self._hint += 1
            self._emit(handle, EVENT_PAUSE)
        else:  # the queue is closing: it waits again, its bytes kept
            handle._status = WAITING
            self._ready += 1
            self.waiting.insert(0, handle)
            self._hint = 0
        self._fill()

    def _finish_cancelled(self, handle: DownloadHandle) -> None:
        handle._status = CANCELLED
        request = handle.request
        path = str(handle.plan.target) if handle.plan is not None and handle.plan.name else None
        url = redact_url(request.url)
        self._settle(handle, Result(url, path, Status.FAILED, handle._done, 0, "cancelled", request))
        self._emit(handle, EVENT_STOP)

    @staticmethod
    def _settle(handle: DownloadHandle, result: Result) -> None:
        handle.result = result
        future = handle._future
        if future is not None and not future.done():
            future.set_result(result)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- handing over to the pool ---
    def _fill(self) -> None:
        """Hand waiting items over in order while the scheduler's window has room (at least one)."""
        if self._closing or not self._ready:
            return
        scheduler = self.pool.scheduler
        waiting = self.waiting
        index = min(self._hint, len(waiting))
        while self._ready and index < len(waiting) and (scheduler.room() or not self.submitted):
            handle = waiting[index]
            index += 1
            if handle._status == WAITING:
                self._ready -= 1
                self._submit(handle)
        self._hint = index

    def _submit(self, handle: DownloadHandle) -> None:
        if handle.plan is None:
            handle.plan = self.engine.plan(handle.request)
        if handle._job is None:
            # Ask the disk, not a listing taken earlier, what is there: the queue is long-lived, and
            # a resumed item finds the partial file its earlier start left.
            handle._job = self.engine.job(handle.plan, recheck=True)
        handle._status = _SUBMITTED
        handle._announced = False
        submission = self.pool.submit(_Announced(self, handle, handle._job))
        handle._submission = submission
        self.submitted[handle] = submission
        submission.future.add_done_callback(lambda future: self._on_done(handle, submission, future))

    def _unlist(self, handle: DownloadHandle) -> bool:
        """Take ``handle`` out of ``waiting`` (False: it was not there), keeping the hint right."""
        try:
            index = self.waiting.index(handle)  # near the head, for an item that starts
        except ValueError:
            return False
        del self.waiting[index]
        if index < self._hint:
            self._hint -= 1
        return True

    def _started(self, handle: DownloadHandle) -> None:
        """Its first attempt begins: it leaves the waiting list."""
        handle._announced = True
        handle._samples = None
        self._unlist(handle)
        self._emit(handle, EVENT_START)

    def _on_done(
        self, handle: DownloadHandle, submission: Submission[Result], future: asyncio.Future[Result]
    ) -> None:
        if future.cancelled() or self.submitted.get(handle) is not submission:
            return  # withdrawn or cancelled: pause(), cancel(), move() or closing deal with it
        del self.submitted[handle]
        handle._submission = None
        handle._stopping = None
        if not handle._announced:  # it ended without a step (the pool failed it): out of the list
            self._unlist(handle)
        exc = future.exception()
        if exc is not None:  # a programming error inside the download: a failed Result still
            request = handle.request
            result = Result(redact_url(request.url), None, Status.FAILED, 0, 0, repr(exc), request)
        else:
            result = future.result()
        handle._done = result.bytes
        if result.ok:
            handle._total = result.bytes
        handle._status = result.status.value
        self._settle(handle, result)
        self._emit(handle, EVENT_ERROR if result.status is Status.FAILED else EVENT_COMPLETE)
        self._fill()

    async def aclose(self) -> None:
        """Stop handing over; running downloads stop (bytes kept) and count as waiting again."""
        self._closing = True
        self._take_back()
        for handle in list(self.submitted):
            if handle._stopping is None:
                self._stop(handle, "closing")
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


async def _discard(plan: Plan) -> None:
    if plan.name:
        await TempFile(plan.temp_path).discard()
