"""The live queue of the library: Downloader.add() and its handles, against real loopback servers."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from faultserver import FaultServer

from asyncdl import Downloader, Status
from asyncdl._queue import DownloadHandle
from asyncdl._ratelimit import RateLimiter


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until ``condition()`` holds (checked every 5 ms), failing after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def temp_files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.startswith(".asyncdl") and p.name.endswith(".part")]


async def test_add_while_others_run_and_await_the_result(fault_server: FaultServer, tmp_path: Path) -> None:
    slow = os.urandom(64 * 1024)
    fault_server.route("/slow.bin", body=slow, stall_after=1024)
    fast = os.urandom(5000)
    fault_server.route("/fast.bin", body=fast)
    async with Downloader(tmp_path, jobs=2, timeout=30) as dl:
        held = dl.add(fault_server.url("/slow.bin"))
        await until(lambda: held.progress.done == 1024)
        assert held.status == "active"
        one = dl.add(fault_server.url("/fast.bin"))
        result = await one
        assert result.status is Status.OK and one.status == "ok"
        assert (tmp_path / "fast.bin").read_bytes() == fast
        assert held.status == "active"  # still running beside it
        assert held.cancel()
        cancelled = await held
        assert cancelled.status is Status.FAILED and cancelled.error == "cancelled"
        assert held.status == "cancelled"
    assert temp_files(tmp_path) == []  # cancel removed the temporary file
    assert not (tmp_path / "slow.bin").exists()


async def test_pause_keeps_bytes_and_resume_continues_with_range(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    body = os.urandom(200_000)
    route = fault_server.route("/big.bin", body=body, stall_after=50_000)
    async with Downloader(tmp_path, jobs=4) as dl:
        handle = dl.add(fault_server.url("/big.bin"))
        await until(lambda: handle.progress.done == 50_000)
        assert handle.progress.total == 200_000
        assert handle.pause()
        await until(lambda: handle.status == "paused")
        (part,) = temp_files(tmp_path)
        assert part.stat().st_size == 50_000  # bytes kept on disk, connection closed
        assert handle.progress.done == 50_000
        route.stall_after = None
        assert handle.resume()
        result = await handle
    assert result.status is Status.OK
    assert (tmp_path / "big.bin").read_bytes() == body
    second = fault_server.requests_for("/big.bin")[-1]
    assert second.header("Range") == "bytes=50000-"


async def test_jobs_raised_while_running_starts_waiting_items(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    for i in range(3):
        fault_server.route(f"/h{i}.bin", body=os.urandom(10_000), stall_after=100)
    async with Downloader(tmp_path, jobs=1) as dl:
        handles = [dl.add(fault_server.url(f"/h{i}.bin")) for i in range(3)]
        await until(lambda: handles[0].progress.done == 100)
        assert [h.status for h in handles] == ["active", "waiting", "waiting"]
        dl.jobs = 3
        await until(lambda: all(h.progress.done == 100 for h in handles))
        assert [h.status for h in handles] == ["active"] * 3
        dl.jobs = 1  # fewer: running ones go on
        assert [h.status for h in handles] == ["active"] * 3
        for h in handles:
            h.cancel()


async def test_waiting_items_can_be_reordered_and_paused(fault_server: FaultServer, tmp_path: Path) -> None:
    fault_server.route("/blocker.bin", body=os.urandom(10_000), stall_after=10)
    for name in ("a", "b", "c"):
        fault_server.route(f"/{name}.txt", body=name.encode() * 100)
    started: list[str] = []
    async with Downloader(tmp_path, jobs=1) as dl:

        def on_event(handle: DownloadHandle, event: str) -> None:
            if event == "start":
                started.append(handle.request.url.rsplit("/", 1)[-1])

        dl.queue.add_listener(on_event)
        blocker = dl.add(fault_server.url("/blocker.bin"))
        await until(lambda: blocker.progress.done == 10)
        a, b, c = (dl.add(fault_server.url(f"/{n}.txt")) for n in "abc")
        b.pause()
        assert b.status == "paused"
        dl.queue.move(c, 0)
        assert [dl.queue.position(h) for h in (c, a, b)] == [0, 1, 2]
        blocker.cancel()
        await a
        await c
        assert b.status == "paused"  # a paused item is passed over
        b.resume()
        await b
    assert started == ["blocker.bin", "c.txt", "a.txt", "b.txt"]


async def test_rate_cap_changed_while_running(fault_server: FaultServer, tmp_path: Path) -> None:
    body = os.urandom(3 * 1024 * 1024)
    fault_server.route("/capped.bin", body=body)
    async with Downloader(tmp_path, jobs=1, limit_rate="64K") as dl:
        assert dl.limit_rate == 64 * 1024
        handle = dl.add(fault_server.url("/capped.bin"))
        await until(lambda: handle.progress.done > 0)
        # At 64 KiB/s the 3 MiB would take 48 s, over the test's timeout: the new cap must apply now.
        dl.limit_rate = None
        assert dl.limit_rate is None
        result = await asyncio.wait_for(handle, timeout=30)
    assert result.status is Status.OK
    assert (tmp_path / "capped.bin").read_bytes() == body


async def test_batch_api_works_beside_the_live_queue(fault_server: FaultServer, tmp_path: Path) -> None:
    for i in range(5):
        fault_server.route(f"/s{i}", body=b"x" * (i + 1))
    fault_server.route("/live", body=b"live")
    async with Downloader(tmp_path, jobs=2) as dl:
        handle = dl.add(fault_server.url("/live"))
        results = [r async for r in dl.stream(fault_server.url(f"/s{i}") for i in range(5))]
        assert (await handle).ok
    assert sorted(r.status.value for r in results) == ["ok"] * 5


async def test_rate_limiter_change_rescales_a_wait_under_way() -> None:
    now = [0.0]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds
        if len(waits) == 2:
            limiter.change(4000)  # four times the rate: the 8 s left take 2 s

    limiter = RateLimiter(1000, burst_s=0.0, clock=lambda: now[0], sleep=sleep)
    await limiter.take(10_000)  # 10 s at 1000 B/s
    assert waits[:2] == [1.0, 1.0]
    assert sum(waits) == pytest.approx(4.0)
    limiter.change(None)
    await limiter.take(10**9)
    assert sum(waits) == pytest.approx(4.0)  # no cap: no wait
