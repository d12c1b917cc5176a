"""Scale-out on Ray, on a real local Ray instance started by this module, against local test servers.

The Ray workers are separate processes; they reach the test servers (running in the test's event
loop) over 127.0.0.1 like any client.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from faultserver import FaultServer, Route
from httpserver import FileServer

from asyncdl import Downloader, Request, RetryPolicy, Status, download_many

ray = pytest.importorskip("ray")  # in the test extra: CI runs these

FAST_RETRY = RetryPolicy(retries=3, backoff_base_s=0.01, backoff_max_s=0.05)
pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module", autouse=True)
def ray_instance() -> Iterator[None]:
    """One small local Ray instance for the whole module (starting one costs seconds)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def visible(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith(".asyncdl"))


async def test_a_batch_is_byte_exact_with_names_distinct_across_shards(
    file_server: FileServer, tmp_path: Path
) -> None:
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

    results = await download_many(
        urls, tmp_path, ray="auto", workers=2, shard_size=3, jobs=4, retry_policy=FAST_RETRY
    )

    assert [r.url for r in results] == urls  # input order, each URL once
    assert all(r.status is Status.OK for r in results), [r.error for r in results]
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
    again = await download_many(urls, tmp_path, ray="auto", workers=2, shard_size=3)
    assert len(file_server.requests) == before
    assert [r.status for r in again] == [Status.SKIPPED] * len(urls)
    assert [r.path for r in again] == [r.path for r in results]


async def test_a_killed_worker_loses_nothing(fault_server: FaultServer, tmp_path: Path) -> None:
    big = os.urandom(3 * 1024 * 1024)  # more than a write buffer: part of it reaches the disk
    fault_server.route("/big.bin", body=big, rate=1024 * 1024)  # about 3 s
    small = {f"/s{i}.txt": f"small {i}".encode() for i in range(7)}
    for path, body in small.items():
        fault_server.route(path, body=body)
    # Shard 0 (worker 0): three small files, then the big one; shard 1 (worker 1): the rest.
    paths = [*list(small)[:3], "/big.bin", *list(small)[3:]]
    urls = [fault_server.url(p) for p in paths]
    records = []

    async with Downloader(tmp_path, ray="auto", workers=2, shard_size=4, retry_policy=FAST_RETRY) as dl:
        worker0 = dl._cluster.actors[0]  # type: ignore[union-attr]
        pid = await worker0.pid.remote()
        stream = dl.stream(urls)
        killer = asyncio.ensure_future(_kill_when_partial(tmp_path, pid))
        async for result in stream:
            records.append(result)
        await killer

    assert sorted(r.url for r in records) == sorted(urls)  # each URL exactly once
    assert all(r.ok for r in records), [r.error for r in records]
    assert (tmp_path / "big.bin").read_bytes() == big
    for path, body in small.items():
        assert (tmp_path / path[1:]).read_bytes() == body
    # The big file was resumed from the bytes the dead worker had written, not fetched again whole.
    ranges = [r.header("Range") for r in fault_server.requests_for("/big.bin")]
    assert ranges[0] is None
    assert any(r and r.startswith("bytes=") and r != "bytes=0-" for r in ranges[1:]), ranges
    assert [r for r in visible(tmp_path) if r.endswith(".part")] == []


async def _kill_when_partial(directory: Path, pid: int) -> None:
    """Kill the worker process once its partial file holds data on disk."""
    for _ in range(400):
        parts = [p for p in directory.glob(".asyncdl-big.bin-*.part") if p.stat().st_size > 0]
        if parts:
            os.kill(pid, signal.SIGKILL)
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the big download never reached the disk")


async def test_limit_rate_is_split_between_workers(file_server: FileServer, tmp_path: Path) -> None:
    async with Downloader(tmp_path, ray="auto", workers=2, limit_rate="1M") as dl:
        cluster = dl._cluster
        assert cluster is not None
        (result,) = [r async for r in dl.stream([Request(file_server.url("/missing"))])]
    assert result.status is Status.FAILED and "404" in (result.error or "")
    assert cluster.worker_config.limit_rate == 512 * 1024  # the run's cap, shared evenly


async def run_cli(*args: str, prelude: str = "") -> tuple[int, str, str]:
    code = f"import sys\n{prelude}\nfrom asyncdl._cli import main\nraise SystemExit(main(sys.argv[1:]))"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=80)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_ray_option_without_ray_installed_is_a_usage_error(tmp_path: Path) -> None:
    code, _out, err = await run_cli(
        "http://127.0.0.1:9/x", "-d", str(tmp_path), "--ray", "local", prelude="sys.modules['ray'] = None"
    )
    assert code == 2
    assert "pip install 'asyncdl[ray]'" in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


async def test_workers_without_ray_is_a_usage_error(tmp_path: Path) -> None:
    code, _out, err = await run_cli("http://127.0.0.1:9/x", "-d", str(tmp_path), "--workers", "2")
    assert code == 2 and "--ray" in err


@pytest.mark.slow
async def test_cli_with_a_local_ray_end_to_end(file_server: FileServer, tmp_path: Path) -> None:
    file_server.add("/a.txt", b"A" * 10)
    file_server.add("/b.bin", b"B" * 2000)
    url_list = tmp_path / "urls.txt"
    url_list.write_text(f"{file_server.url('/a.txt')}\n{file_server.url('/b.bin')}\n  out=renamed.bin\n")
    url_list.write_text(url_list.read_text() + f"{file_server.url('/missing')}\n")
    out_dir = tmp_path / "out"
    report = tmp_path / "report.jsonl"

    code, _out, err = await run_cli(
        str(url_list), "-d", str(out_dir), "--ray", "local", "--workers", "1", "-q", "--report", str(report)
    )

    assert code == 1, err
    assert (out_dir / "a.txt").read_bytes() == b"A" * 10
    assert (out_dir / "renamed.bin").read_bytes() == b"B" * 2000
    records = [json.loads(line) for line in report.read_text().splitlines()]
    assert sorted(r["status"] for r in records) == ["failed", "ok", "ok"]
    assert all(r["worker"] == 0 and r["shard"] == 0 for r in records)
    assert "1 failed" in err.splitlines()[-1]


class CountingServer(FaultServer):
    """A FaultServer that records how many body bytes it finished writing, per path."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: dict[str, int] = {}

    async def _send_body(self, conn: Any, payload: bytes, *, limit: int, route: Route) -> None:
        await super()._send_body(conn, payload, limit=limit, route=route)
        self.sent[route.path] = self.sent.get(route.path, 0) + limit


async def wait_until(condition: Callable[[], bool], proc: asyncio.subprocess.Process, what: str) -> None:
    """Poll ``condition`` until it holds, the process ends or the deadline passes."""
    deadline = time.monotonic() + 45
    while not condition():
        if proc.returncode is not None:
            _out, err = await proc.communicate()
            raise AssertionError(f"asyncdl ended before {what}: {err.decode(errors='replace')}")
        assert time.monotonic() < deadline, f"{what}: not in time"
        await asyncio.sleep(0.02)


@pytest.mark.slow
async def test_ctrl_c_on_the_driver_stops_the_workers_and_keeps_temporary_files(tmp_path: Path) -> None:
    stalled_at = 1024 * 1024 + 4096  # more than a write buffer: part of it is on disk before the signal
    bodies = {f"/big{i}.bin": os.urandom(3 * 1024 * 1024) for i in range(2)}
    async with CountingServer() as server:
        routes = {p: server.route(p, body=b, stall_after=stalled_at, fail_times=1) for p, b in bodies.items()}
        server.route("/small.txt", body=b"small")
        url_list = tmp_path / "urls.txt"
        url_list.write_text("".join(f"{server.url(p)}\n" for p in [*bodies, "/small.txt"]))
        out = tmp_path / "out"
        # Shards of one URL: each worker stalls on one big file, and the small one completes.
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "asyncdl", str(url_list), "-d", str(out)),
            *("--ray", "local", "--workers", "2", "--shard-size", "1"),
            cwd=tmp_path,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

        def partials() -> dict[str, int]:
            found = {p: q for p in bodies for q in out.glob(f".asyncdl-{p[1:]}-*.part")}
            return {p: q.stat().st_size for p, q in found.items()}

        await wait_until((out / "small.txt").exists, proc, "the small file")
        await wait_until(lambda: all(server.sent.get(p) == stalled_at for p in bodies), proc, "the stalls")
        await wait_until(lambda: len(partials()) == 2 and all(partials().values()), proc, "bytes on disk")

        proc.send_signal(signal.SIGINT)
        sent_at = time.monotonic()
        _out, err_bytes = await asyncio.wait_for(proc.communicate(), 30)
        stopped_in = time.monotonic() - sent_at
        err = err_bytes.decode(errors="replace")
        assert proc.returncode == 130, err
        assert stopped_in < 10, stopped_in
        assert "Traceback" not in err, err
        # The summary has the bytes the workers had received when they stopped. The small file is
        # counted when its shard's result reached the driver before the signal: the file being on disk
        # (what the test waits for) does not say that it had, so both counts are right.
        assert re.search(
            r"^[01] ok, 0 skipped, 0 failed; 2\.0 MiB in [0-9.]+ s \(.*/s\)$", err, re.MULTILINE
        ), err
        # Everything received before the signal is in the kept temporary files (flushed on cancel).
        for path, body in bodies.items():
            (part,) = out.glob(f".asyncdl-{path[1:]}-*.part")
            assert part.read_bytes() == body[:stalled_at], path
            assert not (out / path[1:]).exists()

        # A local run resumes both from where they stopped.
        resumed = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "asyncdl", "-q", str(url_list), "-d", str(out)),
            cwd=tmp_path,
            stdin=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _out, err_bytes = await asyncio.wait_for(resumed.communicate(), 30)
        assert resumed.returncode == 0, err_bytes.decode(errors="replace")
        for path, body in bodies.items():
            last = server.requests_for(path)[-1]
            assert last.header("Range") == f"bytes={stalled_at}-"
            assert last.header("If-Range") == routes[path].etag_for(0)
            assert (out / path[1:]).read_bytes() == body
        assert len(server.requests_for("/small.txt")) == 1
        assert visible(out) == ["big0.bin", "big1.bin", "small.txt"]


async def test_an_answer_that_never_arrives_does_not_hang_the_run(
    file_server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asyncdl._ray import RayCluster

    for i in range(4):
        file_server.add(f"/w{i}.txt", f"body {i}".encode())
    urls = [file_server.url(f"/w{i}.txt") for i in range(4)]
    submit = RayCluster._submit
    lost: list[int] = []

    def submit_and_lose_the_first_answer(self: RayCluster, worker: int, spec: Any) -> Any:
        future, handle = submit(self, worker, spec)
        if not lost:
            # The shard runs on its actor, but its answer never reaches the driver loop.
            lost.append(spec[4])
            future = asyncio.ensure_future(asyncio.Event().wait())
        return future, handle

    monkeypatch.setattr(RayCluster, "_submit", submit_and_lose_the_first_answer)
    results = await download_many(urls, tmp_path, ray="auto", workers=2, shard_size=2)

    assert lost == [0]
    assert [r.url for r in results] == urls  # each URL once
    # The lost shard was handed out again and found its files complete: no second request for them.
    assert [r.status for r in results] == [Status.SKIPPED] * 2 + [Status.OK] * 2
    assert [len(file_server.requests_for(f"/w{i}.txt")) for i in range(4)] == [1] * 4
