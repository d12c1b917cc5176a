"""Scenarios of a run on workers, shared by the Ray tests and the worker-process tests.

Each takes the Downloader options that choose the workers (``ray="auto", workers=2`` or
``processes=2``); the same shard driver runs behind both, so both must behave the same.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from faultserver import FaultServer, Route
from httpserver import FileServer

from asyncdl import Downloader, Result, RetryPolicy, Status, download_many

FAST_RETRY = RetryPolicy(retries=3, backoff_base_s=0.01, backoff_max_s=0.05)


def visible(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith(".asyncdl"))


async def start_asyncdl(url_list: Path, out: Path, *options: str) -> asyncio.subprocess.Process:
    """``python -m asyncdl URL_LIST -d OUT OPTIONS...`` as a child process (stdout and stderr piped)."""
    return await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "asyncdl", str(url_list), "-d", str(out), *options),
        cwd=url_list.parent,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


def partial_sizes(out: Path, paths: Iterable[str]) -> dict[str, int]:
    """The size of each path's temporary file in ``out`` (paths without one are left out)."""
    found = {p: q for p in paths for q in out.glob(f".asyncdl-{p[1:]}-*.part")}
    return {p: q.stat().st_size for p, q in found.items()}


class CountingServer(FaultServer):
    """A FaultServer that records how many body bytes it finished writing, per path."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: dict[str, int] = {}

    async def _send_body(self, conn: Any, payload: bytes, *, limit: int, route: Route) -> None:
        await super()._send_body(conn, payload, limit=limit, route=route)
        self.sent[route.path] = self.sent.get(route.path, 0) + limit


async def batch_is_byte_exact(file_server: FileServer, tmp_path: Path, **options: Any) -> None:
    """21 URLs in shards of 3 on two workers: byte-exact, names distinct as in a local run; a re-run
    sends no request."""
    bodies = {f"/f{i}.bin": os.urandom(500 * i + 1) for i in range(12)}
    # The same last segment in three shards: named in input order, as in a local run.
    same = {f"/{d}/data.bin": os.urandom(100 + i) for i, d in enumerate("abc")}
    # The same Content-Disposition name from six URLs: decided on the workers, never clobbered.
    disposed = {f"/cd/{i}": os.urandom(200 + i) for i in range(6)}
    for path, body in {**bodies, **same}.items():
        file_server.add(path, body)
    for path, body in disposed.items():
        file_server.add(path, body, headers={"Content-Disposition": 'attachment; filename="report.pdf"'})
    urls = [file_server.url(p) for p in [*bodies, *same, *disposed]]

    results = await download_many(urls, tmp_path, shard_size=3, jobs=4, retry_policy=FAST_RETRY, **options)

    assert [r.url for r in results] == urls  # input order, each URL once
    assert all(r.status is Status.OK for r in results), [(r.url, r.status, r.path) for r in results]
    for path, body in bodies.items():
        assert (tmp_path / path.rsplit("/", 1)[1]).read_bytes() == body
    assert [(tmp_path / n).read_bytes() for n in ("data.bin", "data.1.bin", "data.2.bin")] == list(
        same.values()
    )
    cd_paths = [r.path for r in results[-6:]]
    assert len(set(cd_paths)) == 6
    assert sorted(Path(p).read_bytes() for p in cd_paths if p) == sorted(disposed.values())
    assert sorted(Path(p).name for p in cd_paths if p) == sorted(
        ["report.pdf", *(f"report.{i}.pdf" for i in range(1, 6))]
    )
    assert {r.worker for r in results} == {0, 1}  # both workers took shards
    assert sorted({r.shard for r in results}) == list(range(7))  # 21 URLs in shards of 3
    assert len(visible(tmp_path)) == 21

    # A re-run finds everything complete: no request at all, not even for the names the server gave.
    before = len(file_server.requests)
    again = await download_many(urls, tmp_path, shard_size=3, **options)
    assert len(file_server.requests) == before
    assert [r.status for r in again] == [Status.SKIPPED] * len(urls)
    assert [r.path for r in again] == [r.path for r in results]


async def killed_worker_loses_nothing(
    fault_server: FaultServer,
    tmp_path: Path,
    first_worker_pid: Callable[[Downloader], Awaitable[int]],
    *,
    then: Callable[[Downloader], Awaitable[None]] | None = None,
    **options: Any,
) -> None:
    """The first worker is killed once its big file has bytes on disk: the run loses nothing."""
    big = os.urandom(3 * 1024 * 1024)  # more than a write buffer: part of it reaches the disk
    fault_server.route("/big.bin", body=big, rate=1024 * 1024)  # about 3 s
    small = {f"/s{i}.txt": f"small {i}".encode() for i in range(7)}
    for path, body in small.items():
        fault_server.route(path, body=body)
    # Shard 0 (worker 0): three small files, then the big one; shard 1 (worker 1): the rest.
    paths = [*list(small)[:3], "/big.bin", *list(small)[3:]]
    urls = [fault_server.url(p) for p in paths]
    records: list[Result] = []

    async with Downloader(tmp_path, shard_size=4, retry_policy=FAST_RETRY, **options) as dl:
        pid = await first_worker_pid(dl)
        killer = asyncio.ensure_future(_kill_when_partial(tmp_path, pid))
        async for result in dl.stream(urls):
            records.append(result)
        await killer
        if then is not None:
            await then(dl)

    assert sorted(r.url for r in records) == sorted(urls)  # each URL exactly once
    assert all(r.ok for r in records), [r.error for r in records]
    assert (tmp_path / "big.bin").read_bytes() == big
    for path, body in small.items():
        assert (tmp_path / path[1:]).read_bytes() == body
    # The big file was resumed from the bytes the dead worker had written, not fetched again whole;
    # the small files its shard had finished were not fetched again.
    ranges = [r.header("Range") for r in fault_server.requests_for("/big.bin")]
    assert ranges[0] is None
    assert any(r and r.startswith("bytes=") and r != "bytes=0-" for r in ranges[1:]), ranges
    assert [len(fault_server.requests_for(p)) for p in small] == [1] * 7
    assert [r for r in visible(tmp_path) if r.endswith(".part")] == []


async def _kill_when_partial(directory: Path, pid: int) -> None:
    """Kill the worker process once its partial file holds data on disk."""
    for _ in range(1000):
        parts = [p for p in directory.glob(".asyncdl-big.bin-*.part") if p.stat().st_size > 0]
        if parts:
            os.kill(pid, signal.SIGKILL)
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the big download never reached the disk")


async def lost_answer_does_not_hang(
    file_server: FileServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cluster_class: type[Any],
    **options: Any,
) -> None:
    """The answer to the first shard never reaches the driver loop (its worker did the work)."""
    for i in range(4):
        file_server.add(f"/w{i}.txt", f"body {i}".encode())
    urls = [file_server.url(f"/w{i}.txt") for i in range(4)]
    submit = cluster_class._submit
    lost: list[int] = []

    def submit_and_lose_the_first_answer(self: Any, worker: int, spec: Any) -> Any:
        future, handle = submit(self, worker, spec)
        if not lost:
            lost.append(spec[4])
            future = asyncio.ensure_future(asyncio.Event().wait())
        return future, handle

    monkeypatch.setattr(cluster_class, "_submit", submit_and_lose_the_first_answer)
    results = await download_many(urls, tmp_path, shard_size=2, **options)

    assert lost == [0]
    assert [r.url for r in results] == urls  # each URL once
    # The lost shard was handed out again and found its files complete: no second request for them.
    assert [r.status for r in results] == [Status.SKIPPED] * 2 + [Status.OK] * 2
    assert [len(file_server.requests_for(f"/w{i}.txt")) for i in range(4)] == [1] * 4
    for i in range(4):
        assert (tmp_path / f"w{i}.txt").read_bytes() == f"body {i}".encode()
