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
from types import SimpleNamespace
from typing import Any

import pytest
from faultserver import FaultServer
from httpserver import FileServer
from worker_runs import (
    CountingServer,
    batch_is_byte_exact,
    killed_worker_loses_nothing,
    lost_answer_does_not_hang,
    partial_sizes,
    start_asyncdl,
    visible,
)

from asyncdl import Downloader, Request, Status
from asyncdl._ray import RayCluster
from asyncdl._shards import ShardSpec, WorkerLost

ray = pytest.importorskip("ray")  # in the test extra: CI runs these

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module", autouse=True)
def ray_instance() -> Iterator[None]:
    """One small local Ray instance for the whole module (starting one costs seconds)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


async def test_a_batch_is_byte_exact_with_names_distinct_across_shards(
    file_server: FileServer, tmp_path: Path
) -> None:
    await batch_is_byte_exact(file_server, tmp_path, ray="auto", workers=2)


async def test_a_killed_worker_loses_nothing(fault_server: FaultServer, tmp_path: Path) -> None:
    async def first_pid(dl: Downloader) -> int:
        pid: int = await dl._cluster.actors[0].pid.remote()  # type: ignore[union-attr]
        return pid

    await killed_worker_loses_nothing(fault_server, tmp_path, first_pid, ray="auto", workers=2)


class _Calls:
    """A fake actor method: each ``remote()`` call gives the next outcome (an exception is raised)."""

    def __init__(self, *outcomes: object) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    def remote(self, *_args: object) -> Any:
        self.calls += 1
        outcome = self.outcomes.pop(0)

        async def answer() -> object:
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        return answer()


async def test_a_restarting_worker_gets_a_shard_only_once_it_answers_again() -> None:
    """Ray refuses calls to an actor while it restarts: those refusals are not deaths of the shard
    sent next (three of them used to fail a shard for good on a loaded machine)."""

    def restarting() -> Exception:
        return ray.exceptions.ActorUnavailableError("The actor is restarting", None)

    answer = ("o", [1], [1], {}, {}, "new", 1)
    actor = SimpleNamespace(run_shard=_Calls(restarting(), answer), pid=_Calls(restarting(), restarting(), 7))
    cluster = object.__new__(RayCluster)  # the calls only: no actors started
    cluster.ray, cluster._actors, cluster._restarting = ray, [actor], set()
    spec: ShardSpec = (["http://127.0.0.1/a"], ["a"], {}, 0, 0)

    died, _ = cluster._submit(0, spec)
    with pytest.raises(WorkerLost) as lost:
        await died  # the worker died with the shard: that counts
    assert not lost.value.gone
    again, _ = cluster._submit(0, (*spec[:3], 1, 0))
    assert await again == answer
    assert (actor.pid.calls, actor.run_shard.calls) == (3, 2)  # sent once the restarted actor answered


async def test_limit_rate_is_split_between_workers(file_server: FileServer, tmp_path: Path) -> None:
    async with Downloader(tmp_path, ray="auto", workers=2, limit_rate="1M") as dl:
        cluster = dl._cluster
        assert cluster is not None
        (result,) = [r async for r in dl.stream([Request(file_server.url("/missing"))])]
    assert result.status is Status.FAILED and "404" in (result.error or "")
    assert cluster.worker_config.limit_rate == 512 * 1024  # the run's cap, shared evenly


async def test_the_options_of_a_run_and_of_each_request_reach_the_workers(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.route("/a", body=b"a")
    fault_server.route("/b", body=b"b")
    fault_server.route("/gone", statuses=[503], retry_after=0)
    cookies = tmp_path / "cookies.txt"
    cookies.write_text("# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t0\tc\t1\n")
    requests = [
        Request(fault_server.url("/a"), referer="https://r.example/", auth=("u", "p")),
        Request(fault_server.url("/b"), user_agent="UA/2"),
        Request(fault_server.url("/gone"), max_tries=2),
    ]
    async with Downloader(
        tmp_path / "out", ray="auto", workers=2, shard_size=1, user_agent="UA/1", cookies=cookies
    ) as dl:
        results = [r async for r in dl.stream(requests)]
    assert sorted(r.status.value for r in results) == ["failed", "ok", "ok"]
    (a,) = fault_server.requests_for("/a")
    assert (a.header("User-Agent"), a.header("Referer"), a.header("Cookie")) == (
        "UA/1",
        "https://r.example/",
        "c=1",
    )
    assert a.header("Authorization") == "Basic dTpw"
    (b,) = fault_server.requests_for("/b")
    assert (b.header("User-Agent"), b.header("Cookie")) == ("UA/2", "c=1")
    assert len(fault_server.requests_for("/gone")) == 2


async def test_the_many_hosts_rules_hold_within_each_ray_worker(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    for i in range(8):
        fault_server.route(f"/s{i}", body=b"y" * 20_000, rate=100_000)
    fault_server.route("/big", body=b"z" * 50_000)
    fault_server.route("/forbidden-once", body=b"f", statuses=[(403, 0), 200])
    requests = [Request(fault_server.url(f"/s{i}")) for i in range(8)]
    requests += [Request(fault_server.url("/big")), Request(fault_server.url("/forbidden-once"))]
    async with Downloader(
        tmp_path / "out",
        ray="auto",
        workers=2,
        shard_size=5,
        max_per_host=1,
        max_filesize="30K",
        retry_on="403",
    ) as dl:
        results = {r.url.rsplit("/", 1)[1]: r async for r in dl.stream(requests)}
    assert all(results[f"s{i}"].status is Status.OK for i in range(8))
    assert results["big"].status is Status.FAILED and "--max-filesize" in (results["big"].error or "")
    assert len(fault_server.requests_for("/big")) == 1  # over the limit: not retried
    assert results["forbidden-once"].status is Status.OK  # 403 retried, as --retry-on says
    # One download at a time to the origin in each of the two workers.
    assert max(fault_server.in_flight_seen) <= 2


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
        proc = await start_asyncdl(url_list, out, "--ray", "local", "--workers", "2", "--shard-size", "1")

        def partials() -> dict[str, int]:
            return partial_sizes(out, bodies)

        await wait_until((out / "small.txt").exists, proc, "the small file")
        await wait_until(lambda: all(server.sent.get(p) == stalled_at for p in bodies), proc, "the stalls")
        # Every byte sent is on disk (the bodies are spliced into their files) before the signal: a
        # worker that is still taking in its last bytes stops without them, and rightly counts fewer.
        await wait_until(lambda: partials() == dict.fromkeys(bodies, stalled_at), proc, "bytes on disk")

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

    await lost_answer_does_not_hang(file_server, tmp_path, monkeypatch, RayCluster, ray="auto", workers=2)
