"""Many hosts, one bad: a slow, dead or rate-limiting origin never stalls the others.

Each origin is a FaultServer on its own loopback address (127.0.0.2, .3, ...); what the servers saw
(request times, connections open at once) shows what the scheduler did. No sleeps: every wait is
for a server event or the end of a run.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from clirun import run_cli
from faultserver import FaultServer

from asyncdl import Downloader, Request, RetryPolicy, Status, download_many
from asyncdl._hosts import HostRules, Retry, Scheduler, Signal
from asyncdl._pool import Pool
from asyncdl._segments import PIECE_SIZE

BODY = b"x" * 2000


def fast(retries: int = 2) -> RetryPolicy:
    return RetryPolicy(retries=retries, backoff_base_s=0.01, backoff_max_s=0.02)


@pytest.fixture
async def origins() -> AsyncIterator[list[FaultServer]]:
    """Four servers, each an origin of its own (127.0.0.2 to 127.0.0.5)."""
    servers = [FaultServer(host=f"127.0.0.{i}") for i in range(2, 6)]
    for server in servers:
        await server.start()
    try:
        yield servers
    finally:
        for server in servers:
            await server.aclose()


def refused_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def healthy(server: FaultServer, count: int, prefix: str = "h") -> list[str]:
    urls = []
    for i in range(count):
        server.route(f"/{prefix}{i}", body=BODY)
        urls.append(server.url(f"/{prefix}{i}"))
    return urls


async def test_a_download_waiting_for_retry_after_holds_no_slot(
    origins: list[FaultServer], tmp_path: Path
) -> None:
    limited, good = origins[0], origins[1]
    bad = []
    for i in range(8):
        limited.route(f"/r{i}", body=BODY, statuses=[(429, 2), 200])
        bad.append(limited.url(f"/r{i}"))
    # The rate-limited ones first, as many as there are slots: a slot asleep in a wait would stall all.
    results = await download_many([*bad, *healthy(good, 60)], tmp_path, jobs=8, retry_policy=fast())
    assert all(r.status is Status.OK for r in results), [r.error for r in results if not r.ok]
    assert [r.attempts for r in results[:8]] == [2] * 8
    retried = [r.timestamp for r in limited.requests if r.attempt == 2]
    assert len(retried) == 8
    # Every healthy file was asked for (and answered) before the first retry of a rate-limited one.
    assert max(r.timestamp for r in good.requests) < min(retried)
    first_429 = min(r.timestamp for r in limited.requests)
    assert min(retried) >= first_429 + 2.0


async def test_retry_after_holds_back_new_requests_to_that_origin(
    origins: list[FaultServer], tmp_path: Path
) -> None:
    limited, good = origins[0], origins[1]
    for i in range(6):
        limited.route(f"/r{i}", body=BODY, statuses=[(429, 2), 200] if i == 0 else [200])
    urls = [limited.url("/r0"), *healthy(good, 30), *(limited.url(f"/r{i}") for i in range(1, 6))]
    results = await download_many(urls, tmp_path, jobs=2, retry_policy=fast())
    assert all(r.status is Status.OK for r in results)
    (answered_429,) = [r for r in limited.requests if r.path == "/r0" and r.attempt == 1]
    later = [r for r in limited.requests if r is not answered_429]
    assert len(later) == 6
    # The five other downloads of that origin came up long before the Retry-After ended (behind 30
    # quick ones), yet the server saw nothing from us until it ended; the other origin went on.
    assert min(r.timestamp for r in later) >= answered_429.timestamp + 2.0
    assert max(r.timestamp for r in good.requests) < answered_429.timestamp + 2.0


async def test_a_black_hole_holds_at_most_two_connections_once_its_attempts_stalled(
    origins: list[FaultServer], tmp_path: Path
) -> None:
    hole, good = origins[0], origins[1]
    dead = []
    for i in range(6):
        hole.route(f"/b{i}", hang=True)
        dead.append(hole.url(f"/b{i}"))
    fine = healthy(good, 40)
    urls = [*dead, *fine]
    results = await download_many(urls, tmp_path, jobs=8, timeout=0.5, retry_policy=fast(3))
    assert all(r.status is Status.OK for r in results[6:])
    assert all(r.status is Status.FAILED for r in results[:6])
    assert all("stalled" in (r.error or "") for r in results[:6]), [r.error for r in results[:6]]
    # A new origin has 2 slots until it answers well, and a black hole never does: at no moment
    # did it hold more than 2 connections (so more than 2 of the 8 slots), while the others went on.
    opened = [n for kind, n in hole.connection_events if kind == "open"]
    assert len(opened) > 2
    assert max(opened) <= 2, hole.connection_events
    # Down after as many rounds as a download has attempts (4): the rest end without a request each.
    assert len(hole.requests) < 6 * 4
    assert any("rounds of attempts in a row" in (r.error or "") for r in results[:6])


async def test_an_origin_that_turns_into_a_black_hole_is_left_two_slots_once_its_attempts_stalled(
    origins: list[FaultServer], tmp_path: Path
) -> None:
    turning, good = origins[0], origins[1]
    # First it answers well (it earns every slot), then its files hang.
    urls = healthy(turning, 16, prefix="fine")
    for i in range(8):
        turning.route(f"/hang{i}", hang=True)
        urls.append(turning.url(f"/hang{i}"))
    urls += healthy(good, 40)
    results = await download_many(urls, tmp_path, jobs=8, timeout=0.5, retry_policy=fast(3))
    assert all(r.status is Status.OK for r in results[:16] + results[24:])
    assert all(r.status is Status.FAILED for r in results[16:24])
    events = turning.in_flight_events
    assert max(n for kind, _, n in events if kind == "start") > 2  # it had more than 2 slots at first
    first_stall = next(i for i, (kind, path, _) in enumerate(events) if kind == "end" and "hang" in path)
    later = [n for kind, _, n in events[first_stall:] if kind == "start"]
    assert later, "no attempt after the first stalls"
    assert max(later) <= 2, events[first_stall:]


async def test_a_refused_origin_is_backed_off_as_a_whole_and_the_others_go_on(
    origins: list[FaultServer], tmp_path: Path
) -> None:
    port = refused_port()
    dead = [f"http://127.0.0.1:{port}/f{i}" for i in range(10)]
    fine = healthy(origins[1], 20)
    results = await download_many([*dead, *fine], tmp_path, jobs=4, retry_policy=fast(2))
    assert all(r.status is Status.OK for r in results[10:])
    assert all(r.status is Status.FAILED for r in results[:10])
    for result in results[:10]:
        error = result.error or ""
        assert "Connect call failed" in error or "rounds of attempts" in error, error


async def test_max_per_host_caps_each_origin(origins: list[FaultServer], tmp_path: Path) -> None:
    first, second = origins[0], origins[1]
    urls = []
    for server in (first, second):
        for i in range(8):
            server.route(f"/s{i}", body=b"y" * 20_000, rate=100_000)  # 0.2 s each: they overlap
            urls.append(server.url(f"/s{i}"))
    results = await download_many(urls, tmp_path, jobs=8, max_per_host=2, retry_policy=fast())
    assert all(r.status is Status.OK for r in results)
    assert max(first.in_flight_seen) == 2
    assert max(second.in_flight_seen) == 2


async def test_without_max_per_host_one_origin_gets_every_slot(
    origins: list[FaultServer], tmp_path: Path
) -> None:
    server = origins[0]
    urls = []
    for i in range(8):
        server.route(f"/s{i}", body=b"y" * 20_000, rate=50_000)  # 0.4 s each
        urls.append(server.url(f"/s{i}"))
    results = await download_many(urls, tmp_path, jobs=4, retry_policy=fast())
    assert all(r.status is Status.OK for r in results)
    assert max(server.in_flight_seen) == 4


async def test_results_keep_input_order_and_every_url_has_one(
    origins: list[FaultServer], tmp_path: Path
) -> None:
    limited, good = origins[0], origins[1]
    urls = []
    for i in range(30):
        if i % 5 == 0:
            limited.route(f"/r{i}", body=BODY, statuses=[(429, 1), 200])
            urls.append(limited.url(f"/r{i}"))
        else:
            good.route(f"/g{i}", body=BODY)
            urls.append(good.url(f"/g{i}"))
    urls.append(f"http://127.0.0.1:{refused_port()}/nope")
    results = await download_many(urls, tmp_path, jobs=4, retry_policy=fast(1))
    assert [r.url for r in results] == urls
    assert [r.status for r in results] == [Status.OK] * 30 + [Status.FAILED]
    assert [Path(r.path or "").name for r in results[:30]] == [u.rsplit("/", 1)[1] for u in urls[:30]]


# --- the options ---


async def test_max_filesize_stops_a_body_that_never_ends(fault_server: FaultServer, tmp_path: Path) -> None:
    fault_server.route("/endless", endless=True)
    fault_server.route("/declared", body=b"z" * 300_000)
    fault_server.route("/small", body=b"z" * 1000)
    urls = [fault_server.url(p) for p in ("/endless", "/declared", "/small")]
    results = await download_many(urls, tmp_path, max_filesize="100K", retry_policy=fast())
    endless, declared, small = results
    assert endless.status is Status.FAILED and declared.status is Status.FAILED
    assert small.status is Status.OK
    for result, how in ((endless, "received"), (declared, "declared")):
        assert result.attempts == 1  # never retried
        assert "100.0 KiB (--max-filesize)" in (result.error or "") and how in (result.error or "")
    assert declared.bytes == 0  # refused on its Content-Length, before any byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small"]  # temporary files removed
    assert len(fault_server.requests_for("/endless")) == 1


async def test_lowest_speed_limit_cuts_a_crawling_attempt_and_resumes(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    body = bytes(range(256)) * 40  # 10,240 bytes
    fault_server.route("/crawl", body=body, rate=2000)  # ~1 KB per 0.5 s window: below 4K/s
    result = (
        await download_many(
            [fault_server.url("/crawl")], tmp_path, timeout=0.5, lowest_speed_limit="4K", retry_policy=fast(1)
        )
    )[0]
    assert result.status is Status.FAILED
    assert "too slow" in (result.error or "") and "speed floor of 4.0 KiB/s" in (result.error or "")
    first, second = fault_server.requests_for("/crawl")
    assert first.header("Range") is None
    assert second.header("Range") is not None and second.header("Range") != "bytes=0-"  # from the disk
    # A slow mirror hands over to the next one at once, which goes on from the bytes on disk.
    fault_server.route("/fast", body=body)
    request = Request(fault_server.url("/crawl"), mirrors=[fault_server.url("/fast")], out="crawl")
    async with Downloader(tmp_path, timeout=0.5, lowest_speed_limit=4096, retry_policy=fast(3)) as dl:
        result = await dl.download(request)
    assert result.status is Status.OK, result.error
    assert (tmp_path / "crawl").read_bytes() == body
    (fast_request,) = fault_server.requests_for("/fast")
    assert (fast_request.header("Range") or "").startswith("bytes=")


async def test_lowest_speed_limit_cuts_a_crawling_segmented_attempt(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    body = bytes(range(256)) * (2 * PIECE_SIZE // 256) + b"tail"  # three pieces
    fault_server.route("/big", body=body, rate=1_000_000)  # 1 MB/s a connection: 2 MB/s with -x 2
    (result,) = await download_many(
        [fault_server.url("/big")],
        tmp_path / "slow",
        connections=2,
        timeout=0.5,
        lowest_speed_limit="8M",
        retry_policy=fast(1),
    )
    assert result.status is Status.FAILED and result.attempts == 2
    assert "too slow" in (result.error or "") and "speed floor of 8.0 MiB/s" in (result.error or "")
    # Below the rate, the floor lets a segmented download through, byte for byte.
    fault_server.route("/big", body=body)
    (result,) = await download_many(
        [fault_server.url("/big")], tmp_path / "ok", connections=2, timeout=5, lowest_speed_limit="1K"
    )
    assert result.status is Status.OK, result.error
    assert (tmp_path / "ok" / "big").read_bytes() == body
    assert len(fault_server.requests_for("/big")) >= 2 + 3  # the cut attempts, then three pieces


async def test_retry_on_adds_statuses(fault_server: FaultServer, tmp_path: Path) -> None:
    fault_server.route("/forbidden", body=BODY, statuses=[403, 200])
    plain = (await download_many([fault_server.url("/forbidden")], tmp_path / "a", retry_policy=fast()))[0]
    assert plain.status is Status.FAILED and plain.attempts == 1 and "HTTP 403" in (plain.error or "")
    fault_server.routes["/forbidden"].attempts = 0
    again = (
        await download_many(
            [fault_server.url("/forbidden")], tmp_path / "b", retry_policy=fast(), retry_on="403,520-524"
        )
    )[0]
    assert again.status is Status.OK and again.attempts == 2


# --- the pool: lookahead and withdrawal, with downloads that are plain objects ---


class FakeJob:
    """A download of ``origin`` whose first step is a 429 with a long Retry-After when ``limited``."""

    def __init__(self, index: int, origin: str, *, limited: bool) -> None:
        self.index = index
        self.origin = origin
        self.limited = limited
        self.signal: Signal | None = None
        self.retry_after: float | None = None
        self.steps = 0

    async def step(self, down: str | None = None, proven: Callable[[], None] | None = None) -> int | Retry:
        self.steps += 1
        await asyncio.sleep(0)
        if self.limited:
            self.signal, self.retry_after = Signal.RETRY_AFTER, 3600.0
            return Retry(3600.0, RuntimeError("429"))
        self.signal = Signal.OK
        return self.index

    def abandon(self) -> None:
        pass


async def test_the_input_is_read_ahead_through_a_bounded_window() -> None:
    pulled = 0

    def items() -> Iterator[int]:
        nonlocal pulled
        for i in range(100_000):
            pulled += 1
            yield i

    def prepare(i: int) -> FakeJob:
        # One origin rate-limited for an hour, then more of it; every tenth item is another origin's.
        return FakeJob(i, "http://b" if i % 10 == 9 else "http://a", limited=i % 10 != 9)

    pool: Pool[int] = Pool(Scheduler(jobs=4, rules=HostRules(lookahead=50)))
    done: list[int] = []
    stream = pool.stream(items(), prepare)
    try:
        async for index in stream:
            done.append(index)
            if len(done) == 5:
                break
    finally:
        await stream.aclose()
        await pool.aclose()
    # The healthy items were found by reading ahead past the blocked ones, but never further than
    # the window: items waiting or parked stay under 50, whatever the input's length.
    assert done == [9, 19, 29, 39, 49]
    assert pulled <= 50 + 4 + 1
    assert pool.scheduler.waiting == 0 and pool.scheduler.running == 0  # withdrawn when closed


async def test_a_parked_submission_holds_no_slot_and_can_be_withdrawn() -> None:
    pool: Pool[int] = Pool(Scheduler(jobs=1))
    parked = pool.submit(FakeJob(0, "http://a", limited=True))
    other = pool.submit(FakeJob(1, "http://b", limited=False))
    # The one slot went to the other download while the first waits for its Retry-After (an hour).
    assert await other.result() == 1
    assert pool.scheduler.parked == 1 and pool.scheduler.running == 0
    await parked.cancel()
    assert pool.scheduler.parked == 0
    with pytest.raises(asyncio.CancelledError):
        await parked.future
    await pool.aclose()


# --- the command line: options, summary, worker processes ---


async def test_the_summary_groups_failures_by_reason_and_origin(
    origins: list[FaultServer], tmp_path: Path
) -> None:
    server = origins[0]
    port = refused_port()
    lines = []
    for i in range(3):
        server.route(f"/gone{i}", statuses=[404])
        lines.append(server.url(f"/gone{i}"))
    lines += [f"http://127.0.0.1:{port}/x{i}" for i in range(2)]
    lines += healthy(server, 2)
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    code, err = await run_cli(
        str(tmp_path / "list.txt"), "-d", str(tmp_path / "out"), "-q", "--retries", "1", "--timeout", "2"
    )
    assert code == 1
    assert (
        f"5 failed: 3 \u00d7 HTTP 404 from {server.origin}, 2 \u00d7 connection refused by http://127.0.0.1:{port}"
        in err
    ), err
    assert err.splitlines()[-1].startswith("2 ok, 0 skipped, 5 failed")


async def test_worker_processes_apply_the_rules_within_each_worker(
    origins: list[FaultServer], tmp_path: Path
) -> None:
    server = origins[0]
    lines = []
    for i in range(12):
        server.route(f"/s{i}", body=b"y" * 20_000, rate=100_000)
        lines.append(server.url(f"/s{i}"))
    origins[1].route("/big", body=b"z" * 50_000)
    lines.append(origins[1].url("/big"))
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    report = tmp_path / "report.jsonl"
    code, err = await run_cli(
        str(tmp_path / "list.txt"),
        "-d",
        str(tmp_path / "out"),
        "-q",
        "--processes",
        "2",
        "--shard-size",
        "4",
        "--max-per-host",
        "1",
        "--max-filesize",
        "30K",
        "--report",
        str(report),
    )
    assert code == 1, err
    records = [json.loads(line) for line in report.read_text().splitlines()]
    assert sum(r["status"] == "ok" for r in records) == 12
    (big,) = [r for r in records if r["url"].endswith("/big")]
    assert "--max-filesize" in big["error"]
    # One at a time per origin in each of the two workers.
    assert max(server.in_flight_seen) <= 2
