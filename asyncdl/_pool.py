"""Bounded concurrency over a lazy input: N workers pull items; no task per item is ever created.

Items are prepared (a synchronous step, e.g. deciding names) in the order they are pulled, so
decisions that depend on order are deterministic; the work itself runs concurrently and results come
back as they finish through a bounded queue, so memory stays bounded whatever the input length.
"""

from __future__ import annotations

import asyncio
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
)
from typing import Generic, TypeVar

T = TypeVar("T")
P = TypeVar("P")
R = TypeVar("R")


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
