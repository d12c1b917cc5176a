"""Worker processes on this machine (--processes N): the shard driver of a Ray run, without Ray.

Real worker processes (``python -c 'from asyncdl._procs import worker_main; ...'``), real servers on
127.0.0.1: the batch is byte-exact, names stay distinct across workers, a killed worker loses
nothing, Ctrl-C and a killed driver leave no worker behind and keep the temporary files.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

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

from asyncdl import Downloader, Status, UsageError
from asyncdl._download import Engine
from asyncdl._procs import ProcessCluster

pytestmark = pytest.mark.timeout(60)


def cluster_of(dl: Downloader) -> ProcessCluster:
    cluster = dl._cluster
    assert isinstance(cluster, ProcessCluster)
    return cluster


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return False


def worker_pids(parent: int) -> list[int]:
    """The worker processes started by ``parent`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().split(") ", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"asyncdl._procs" in cmdline:
            found.append(int(entry))
    return found


async def wait_until(
    condition: Callable[[], bool], what: str, proc: asyncio.subprocess.Process | None = None
) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        if proc is not None and proc.returncode is not None:
            _out, err = await proc.communicate()
            raise AssertionError(f"asyncdl ended before {what}: {err.decode(errors='replace')}")
        assert time.monotonic() < deadline, f"{what}: not in time"
        await asyncio.sleep(0.02)


async def test_a_batch_is_byte_exact_with_names_distinct_across_workers(
    file_server: FileServer, tmp_path: Path
) -> None:
    await batch_is_byte_exact(file_server, tmp_path, processes=2)


async def test_progress_counts_the_workers_bytes(file_server: FileServer, tmp_path: Path) -> None:
    for i in range(5):
        file_server.add(f"/p{i}", b"x" * 1000)
    async with Downloader(tmp_path, processes=2, shard_size=2) as dl:
        results = [r async for r in dl.stream(file_server.url(f"/p{i}") for i in range(5))]
        snapshot = dl.progress.snapshot()
    assert [r.status for r in results] == [Status.OK] * 5
    assert snapshot.ok == 5
    assert snapshot.bytes_done == 5000


async def test_a_killed_worker_process_loses_nothing(fault_server: FaultServer, tmp_path: Path) -> None:
    pids: list[int] = []

    async def first_pid(dl: Downloader) -> int:
        pids.extend(await cluster_of(dl).pids())
        return pids[0]

    async def restarted(dl: Downloader) -> None:
        after = await cluster_of(dl).pids()
        assert after[0] != pids[0] and after[1] == pids[1]  # worker 0 was started again
        pids.extend(after)

    await killed_worker_loses_nothing(fault_server, tmp_path, first_pid, then=restarted, processes=2)
    assert not any(alive(pid) for pid in pids)  # the run's end stopped them all


async def test_limit_rate_is_split_between_workers(file_server: FileServer, tmp_path: Path) -> None:
    async with Downloader(tmp_path, processes=2, limit_rate="1M") as dl:
        (result,) = [r async for r in dl.stream([file_server.url("/missing")])]
        assert cluster_of(dl).worker_config.limit_rate == 512 * 1024  # the run's cap, shared evenly
    assert result.status is Status.FAILED and "404" in (result.error or "")


def test_processes_and_ray_together_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="processes"):
        Downloader(tmp_path, processes=2, ray="local")
    with pytest.raises(UsageError, match="at least 1"):
        Downloader(tmp_path, processes=0)


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "asyncdl", *args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=50)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--processes", "2", "--ray", "local"], "--processes and --ray"),
        (["--shard-size", "5"], "--shard-size needs --ray or --processes"),
        (["--workers", "2"], "--workers needs --ray"),
        (["--processes", "0"], "--processes"),
    ],
)
async def test_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    code, _out, err = await run_cli("http://127.0.0.1:9/x", "-d", str(tmp_path), *args)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


async def test_cli_end_to_end_with_a_report(file_server: FileServer, tmp_path: Path) -> None:
    for i in range(6):
        file_server.add(f"/d{i}.txt", f"file {i}".encode())
    url_list = tmp_path / "urls.txt"
    lines = [file_server.url(f"/d{i}.txt") for i in range(6)]
    url_list.write_text(
        "\n".join([*lines[:2], "  out=renamed.txt", *lines[2:], file_server.url("/missing")]) + "\n"
    )
    out_dir = tmp_path / "out"
    report = tmp_path / "report.jsonl"

    code, _out, err = await run_cli(
        str(url_list),
        "-d",
        str(out_dir),
        "--processes",
        "2",
        "--shard-size",
        "2",
        "-q",
        "--report",
        str(report),
    )

    assert code == 1, err
    assert (out_dir / "renamed.txt").read_bytes() == b"file 1"
    assert visible(out_dir) == ["d0.txt", "d2.txt", "d3.txt", "d4.txt", "d5.txt", "renamed.txt"]
    records = [json.loads(line) for line in report.read_text().splitlines()]
    assert sorted(r["status"] for r in records) == ["failed", *["ok"] * 6]
    assert {r["worker"] for r in records} == {0, 1}
    assert sorted({r["shard"] for r in records}) == [0, 1, 2, 3]
    assert "404" in err
    assert re.search(r"^6 ok, 0 skipped, 1 failed; 36 B in ", err, re.MULTILINE), err

    # A re-run asks nothing of the server for the complete files.
    before = len(file_server.requests)
    code, _out, err = await run_cli(str(url_list), "-d", str(out_dir), "--processes", "2", "-q")
    assert code == 1
    assert [r.path for r in file_server.requests[before:]] == ["/missing"]
    assert re.search(r"^0 ok, 6 skipped, 1 failed", err, re.MULTILINE), err


@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
async def test_stopping_the_driver_stops_the_workers_and_keeps_temporary_files(
    tmp_path: Path, how: str
) -> None:
    stalled_at = 1024 * 1024 + 4096  # more than a write buffer: part of it is on disk before the signal
    bodies = {f"/big{i}.bin": os.urandom(3 * 1024 * 1024) for i in range(2)}
    async with CountingServer() as server:
        for path, body in bodies.items():
            server.route(path, body=body, stall_after=stalled_at)
        url_list = tmp_path / "urls.txt"
        url_list.write_text("".join(f"{server.url(p)}\n" for p in bodies))
        out = tmp_path / "out"
        # Shards of one URL: each worker stalls on one big file.
        proc = await start_asyncdl(url_list, out, "--processes", "2", "--shard-size", "1")

        def partials() -> dict[str, int]:
            return partial_sizes(out, bodies)

        await wait_until(lambda: len(worker_pids(proc.pid)) == 2, "the workers", proc)
        workers = worker_pids(proc.pid)
        await wait_until(lambda: all(server.sent.get(p) == stalled_at for p in bodies), "the stalls", proc)
        # Every byte sent is on disk (the bodies are spliced into their files) before the signal: a
        # worker that is still taking in its last bytes stops without them, and rightly counts fewer.
        await wait_until(lambda: partials() == dict.fromkeys(bodies, stalled_at), "bytes on disk", proc)

        proc.send_signal(getattr(signal, how))
        sent_at = time.monotonic()
        _out, err_bytes = await asyncio.wait_for(proc.communicate(), 30)
        err = err_bytes.decode(errors="replace")
        if how == "SIGINT":
            assert proc.returncode == 130, err
            assert time.monotonic() - sent_at < 10
            assert "Traceback" not in err, err
            assert re.search(r"^0 ok, 0 skipped, 0 failed; 2\.0 MiB in ", err, re.MULTILINE), err
        # The workers stop by themselves: told to by the driver, or when it is gone (end of input).
        await wait_until(lambda: not any(alive(pid) for pid in workers), "the workers' end")
        for path, body in bodies.items():
            (part,) = out.glob(f".asyncdl-{path[1:]}-*.part")
            kept = part.read_bytes()
            assert (len(kept), kept) == (stalled_at, body[:stalled_at]), path
            assert not (out / path[1:]).exists()


async def test_an_answer_that_never_arrives_does_not_hang_the_run(
    file_server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await lost_answer_does_not_hang(file_server, tmp_path, monkeypatch, ProcessCluster, processes=2)


async def test_a_server_name_taken_by_another_worker_after_the_check_takes_the_next_suffix(
    file_server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers share the directory: between this download's look at a Content-Disposition name and
    its commit, another worker may commit a file of that name. Never a reason to skip (it used to be,
    and the download then reported the other worker's file as its own)."""
    file_server.add("/cd/x", b"mine", headers={"Content-Disposition": 'attachment; filename="report.pdf"'})
    exists = Engine.exists

    async def exists_then_taken(self: Engine, directory: Path, name: str, *, exact: bool = False) -> bool:
        found = await exists(self, directory, name, exact=exact)
        if name == "report.pdf" and not found:
            (directory / name).write_bytes(b"another worker's")  # taken right after the look
        return found

    monkeypatch.setattr(Engine, "exists", exists_then_taken)
    downloader = Downloader(tmp_path)
    downloader.settings = dataclasses.replace(downloader.settings, shared_dest=True)  # as on a worker
    async with downloader as dl:
        result = await dl.download(file_server.url("/cd/x"))

    assert result.status is Status.OK, result
    assert result.path == str(tmp_path / "report.1.pdf")
    assert (tmp_path / "report.1.pdf").read_bytes() == b"mine"
    assert (tmp_path / "report.pdf").read_bytes() == b"another worker's"
