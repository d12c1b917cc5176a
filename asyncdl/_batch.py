"""Short blocking calls run by one thread, their results handed back to the event loop in batches.

``loop.run_in_executor`` costs the event loop, per call, a ThreadPoolExecutor work item and its
lock, two futures chained across threads and a wake-up through the loop's self-pipe. For the one
file-system call of a small download (write, rename, tidy: see _files) that was a larger share of
the loop's time than the call itself. Here a call is a tuple put on a ``SimpleQueue``; the thread
takes every call waiting, runs them, and hands all their results back with one
``call_soon_threadsafe`` per event loop, so a busy run pays one wake-up for many files.

The thread starts at the first call and ends after ``IDLE_SECONDS`` without work. A caller that is
cancelled before its call ran skips it (as an executor does with a work item not yet started); a
call already running finishes and its result is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
IDLE_SECONDS = 2.0
THREAD_NAME = "asyncdl-files"

_Call = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]
_Outcome = tuple["asyncio.Future[Any]", BaseException | None, Any]
_calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()
_lock = threading.Lock()
_running = False


def run(func: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """``func(*args)`` in the batch thread; a future of its result on the running loop."""
    global _running  # noqa: PLW0603 - one thread for the process, started on demand
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    _calls.put((loop, future, func, args))
    with _lock:  # the thread decides to end under this lock: a call put meanwhile starts a new one
        if not _running:
            threading.Thread(target=_serve, name=THREAD_NAME, daemon=True).start()
            _running = True
    return future


def _deliver(results: list[_Outcome]) -> None:
    for future, error, value in results:
        if future.done():
            continue  # its caller was cancelled
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)


def _serve() -> None:
    global _running  # noqa: PLW0603 - see run()
    while True:
        try:
            first = _calls.get(timeout=IDLE_SECONDS)
        except queue.Empty:
            with _lock:
                if _calls.empty():
                    _running = False
                    return
            continue
        batch = [first]
        while True:
            try:
                batch.append(_calls.get_nowait())
            except queue.Empty:
                break
        by_loop: dict[
            asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], BaseException | None, Any]]
        ] = {}
        for loop, future, func, args in batch:
            if future.cancelled():
                continue
            try:
                outcome: _Outcome = (future, None, func(*args))
            except BaseException as exc:  # handed to the awaiting coroutine
                outcome = (future, exc, None)
            by_loop.setdefault(loop, []).append(outcome)
        for loop, results in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for these any more
                loop.call_soon_threadsafe(_deliver, results)
