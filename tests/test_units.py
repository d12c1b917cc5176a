"""Pure parts without a network: progress maths, the rate limiter, the worker pool."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from asyncdl import Result, Status
from asyncdl._exceptions import UsageError
from asyncdl._pool import bounded_map
from asyncdl._progress import Progress, failure_reason, format_bytes, overall_line, summary_line
from asyncdl._ratelimit import RateLimiter, parse_rate


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_counts_bytes_files_and_totals() -> None:
    clock = FakeClock()
    progress = Progress(clock=clock)
    a = progress.start("http://h/a", "a")
    b = progress.start("http://h/b", "b")
    assert progress.snapshot().bytes_total is None  # sizes not known yet
    progress.begin(a, done=0, total=100)
    progress.begin(b, done=40, total=50)  # resumed: 40 bytes already on disk
    progress.advance(a, 60)
    progress.advance(b, 10)
    clock.now += 2
    snap = progress.snapshot()
    assert snap.bytes_done == 70  # received this run
    assert snap.bytes_total == 150
    assert snap.rate_bps == pytest.approx(35.0)
    assert {e.name: (e.done, e.total) for e in snap.active} == {"a": (60, 100), "b": (50, 50)}
    progress.finish(b, Result("http://h/b", "b", Status.OK, 50, 1))
    progress.finish(None, Result("http://h/c", None, Status.FAILED, error="x"))
    snap = progress.snapshot()
    assert (snap.ok, snap.failed, len(snap.active)) == (1, 1, 1)
    assert "1 ok, 0 skipped, 1 failed" in overall_line(snap)
    assert summary_line(snap).startswith("1 ok, 0 skipped, 1 failed; 70 B in 2.0 s")


def test_progress_restart_keeps_counters_consistent() -> None:
    progress = Progress(clock=FakeClock())
    key = progress.start("u", "n")
    progress.begin(key, done=0, total=10)
    progress.advance(key, 5)
    progress.begin(key, done=0, total=None)  # the next attempt restarts, size unknown
    assert progress.snapshot().bytes_total is None
    progress.drop(key)
    assert progress.snapshot().bytes_total == 0


def test_format_bytes() -> None:
    assert format_bytes(1023) == "1023 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 1024**3) == "3.0 GiB"


@pytest.mark.parametrize(
    ("text", "rate"),
    [("500K", 500 * 1024), ("10M", 10 * 1024**2), ("1G", 1024**3), ("2048", 2048), ("1.5k", 1536)],
)
def test_parse_rate(text: str, rate: int) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["", "fast", "-1M", "0"])
def test_parse_rate_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_rate(text)


async def test_rate_limiter_books_time_at_the_rate() -> None:
    clock = FakeClock()
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.now += seconds

    limiter = RateLimiter(1000, burst_s=0.0, clock=clock, sleep=sleep)
    for _ in range(5):
        await limiter.take(500)
    # 2,500 bytes at 1,000 B/s: each 500 bytes waits until its 0.5 s of the line is over.
    assert waits == [0.5, 0.5, 0.5, 0.5, 0.5]
    assert clock.now == pytest.approx(102.5)


async def test_pool_bounds_concurrency_and_prepares_in_order() -> None:
    prepared: list[int] = []
    running = 0
    peak = 0
    release = asyncio.Event()

    def prepare(item: int) -> int:
        prepared.append(item)
        return item

    async def work(item: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 3:
            release.set()
        await release.wait()
        running -= 1
        return item * 2

    results = [r async for r in bounded_map(range(20), prepare, work, workers=3)]
    assert sorted(results) == [i * 2 for i in range(20)]
    assert prepared == list(range(20))
    assert peak == 3


async def test_pool_takes_async_input_and_stops_workers_when_closed() -> None:
    pulled = 0
    cleaned = 0

    async def items() -> AsyncIterator[int]:
        nonlocal pulled
        for i in range(1000):
            pulled += 1
            yield i

    async def work(item: int) -> int:
        nonlocal cleaned
        try:
            if item >= 2:
                await asyncio.Event().wait()  # never finishes on its own
            return item
        finally:
            cleaned += item >= 2

    stream = bounded_map(items(), lambda x: x, work, workers=4)
    got = [await anext(stream), await anext(stream)]
    await stream.aclose()
    assert sorted(got) == [0, 1]
    assert pulled <= 6
    assert cleaned == 4  # every blocked worker was cancelled and ran its cleanup


async def test_pool_propagates_a_programming_error() -> None:
    def prepare(item: int) -> int:
        if item == 3:
            raise ValueError("boom")
        return item

    async def work(item: int) -> int:
        return item

    def items() -> Iterator[int]:
        yield from range(10)

    with pytest.raises(ValueError, match="boom"):
        async for _ in bounded_map(items(), prepare, work, workers=2):
            pass


def test_an_unknown_failure_reason_is_shortened_between_words() -> None:
    error = "the server said something nobody expected, at considerable length and in detail\nsecond line"
    reason = failure_reason(error)
    assert reason == "the server said something nobody expected, at considerable\u2026"
    assert len(reason) <= 60
    assert failure_reason("short and unknown") == "short and unknown"
    assert failure_reason("x" * 100) == "x" * 59 + "\u2026"  # one long word: cut inside it
