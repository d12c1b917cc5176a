"""Interrupted runs of the real command (``python -m asyncdl``): kill -9, Ctrl-C and SIGTERM, then resume.

What the second run fetched is proven on the server side: the Range header it sent, and the number of
body bytes the server wrote in answer. Waiting is done by polling the output directory with a deadline,
never by a fixed sleep.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from faultserver import FaultServer, RecordedRequest, Route

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
BIG = os.urandom(6 * MIB)
SUMMARY = re.compile(r"^\d+ ok, \d+ skipped, \d+ failed; .* in [0-9.]+ s \(.*/s\)$", re.MULTILINE)
DEADLINE_S = 20.0


@dataclass(frozen=True)
class Sent:
    path: str
    attempt: int
    body_bytes: int


class CountingServer(FaultServer):
    """A FaultServer that records how many body bytes it finished writing for each answer."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[Sent] = []

    async def _send_body(self, conn: Any, payload: bytes, *, limit: int, route: Route) -> None:
        await super()._send_body(conn, payload, limit=limit, route=route)
        self.sent.append(Sent(route.path, route.attempts, limit))

    def body_bytes(self, path: str, attempt: int) -> int:
        return sum(s.body_bytes for s in self.sent if s.path == path and s.attempt == attempt)


@pytest.fixture
async def server() -> Any:
    async with CountingServer() as started:
        yield started


async def start(*args: str, cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asyncdl",
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    _, err = await asyncio.wait_for(proc.communicate(), DEADLINE_S)
    assert proc.returncode is not None
    return proc.returncode, err.decode("utf-8", "replace")


def temp_files(directory: Path) -> list[Path]:
    if not directory.exists():
        return []
    return sorted(
        p for p in directory.iterdir() if p.name.startswith(".asyncdl") and not p.name.endswith(".meta")
    )


async def wait_for_partial(directory: Path, at_least: int, proc: asyncio.subprocess.Process) -> Path:
    """Poll until a temporary file in ``directory`` holds ``at_least`` bytes (bounded by a deadline)."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        for path in temp_files(directory):
            if path.stat().st_size >= at_least:
                return path
        if proc.returncode is not None:
            raise AssertionError(f"asyncdl ended early: {(await finish(proc))[1]}")
        await asyncio.sleep(0.01)
    raise AssertionError(f"no temporary file of {at_least} bytes in {directory} in time")


async def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def wait_for_file(path: Path) -> None:
    await wait_until(path.exists)


def range_start(request: RecordedRequest) -> int | None:
    value = request.header("Range")
    return None if value is None else int(value.removeprefix("bytes=").removesuffix("-"))


def report(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


async def test_kill_9_then_rerun_fetches_only_the_rest(server: CountingServer, tmp_path: Path) -> None:
    route = server.route("/big.bin", body=BIG, rate=4 * MIB)  # about 1.5 s for the whole file
    out = tmp_path / "out"
    args = ("-q", "-d", str(out), server.url("/big.bin"))
    proc = await start(*args, cwd=tmp_path)
    partial = await wait_for_partial(out, MIB, proc)
    proc.kill()
    await finish(proc)
    assert proc.returncode == -signal.SIGKILL

    kept = partial.stat().st_size
    assert MIB <= kept < len(BIG)
    assert partial.read_bytes() == BIG[:kept]  # a prefix of the content, nothing else
    assert partial.with_name(partial.name + ".meta").exists()
    assert not (out / "big.bin").exists()

    route.rate = None
    code, err = await finish(await start(*args, "--report", str(tmp_path / "r.jsonl"), cwd=tmp_path))
    assert code == 0, err
    first, second = server.requests_for("/big.bin")
    assert range_start(first) is None
    assert range_start(second) == kept and second.header("If-Range") == route.etag_for(0)
    assert server.body_bytes("/big.bin", 2) == len(BIG) - kept  # only the rest travelled
    assert (out / "big.bin").read_bytes() == BIG
    assert os.listdir(out) == ["big.bin"]
    (record,) = report(tmp_path / "r.jsonl")
    assert record["status"] == "ok" and record["attempts"] == 1


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_signal_stops_cleanly_and_a_later_run_resumes(
    server: CountingServer, tmp_path: Path, signum: signal.Signals, status: int
) -> None:
    stalled_at = MIB + 4096
    route = server.route("/slow.bin", body=BIG, stall_after=stalled_at, fail_times=1)
    server.route("/small.txt", body=b"small")
    out = tmp_path / "out"
    urls = tmp_path / "urls.txt"
    urls.write_text(f"{server.url('/slow.bin')}\n{server.url('/small.txt')}\n", encoding="utf-8")
    proc = await start("-d", str(out), str(urls), cwd=tmp_path)
    await wait_for_file(out / "small.txt")
    partial = await wait_for_partial(out, MIB, proc)
    await wait_until(lambda: server.body_bytes("/slow.bin", 1) == stalled_at)  # the server now stalls

    proc.send_signal(signum)
    sent_at = time.monotonic()
    code, err = await finish(proc)
    assert time.monotonic() - sent_at < 2.0
    assert code == status, err
    assert "Traceback" not in err
    summary = SUMMARY.findall(err)
    assert summary and summary[-1].startswith("1 ok, 0 skipped, 0 failed"), err

    # The bytes received before the signal were flushed to the temporary file, which is kept.
    kept = partial.stat().st_size
    assert kept == stalled_at  # the last bytes were still in the write buffer when the signal came
    assert partial.read_bytes() == BIG[:kept]
    assert not (out / "slow.bin").exists()

    code, err = await finish(await start("-q", "-d", str(out), str(urls), cwd=tmp_path))
    assert code == 0, err
    assert SUMMARY.search(err) and "1 ok, 1 skipped, 0 failed" in err
    resumed = server.requests_for("/slow.bin")[-1]
    assert range_start(resumed) == kept and resumed.header("If-Range") == route.etag_for(0)
    assert server.body_bytes("/slow.bin", 2) == len(BIG) - kept
    assert len(server.requests_for("/small.txt")) == 1  # skipped: already there
    assert (out / "slow.bin").read_bytes() == BIG
    assert sorted(os.listdir(out)) == ["slow.bin", "small.txt"]
