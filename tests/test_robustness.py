"""Robustness of downloads against a server that misbehaves on the wire (tests/faultserver.py).

Retry classification, backoff and Retry-After, the stall timeout, validated resume (within a run and
across runs), integrity checks, mirrors and hostile input. Retries use a policy with millisecond backoff
and, where the length of a wait is the point, an injected sleep that records instead of sleeping.
"""

from __future__ import annotations

import asyncio
import errno
import gzip
import hashlib
import os
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiofiles
import pytest
import yarl
from faultserver import FaultServer, RecordedRequest

import asyncdl._download as download_module
import asyncdl._exceptions as asyncdl_errors
from asyncdl import Downloader, Request, Result, RetryPolicy, Status, download_many
from asyncdl._cli import main as cli_main
from asyncdl._download import Engine, Settings
from asyncdl._files import ResumeMeta, TempFile
from asyncdl._http import make_session
from asyncdl._naming import temp_name
from asyncdl._progress import Progress

BODY = os.urandom(200_000)
RETRYABLE = (408, 425, 429, 500, 502, 503, 504)


def fast(retries: int = 3) -> RetryPolicy:
    return RetryPolicy(retries=retries, backoff_base_s=0.001, backoff_max_s=0.002)


def visible(directory: Path) -> list[str]:
    """Files below ``directory`` except our hidden temporary ones, as sorted relative paths."""
    return sorted(
        str(p.relative_to(directory))
        for p in directory.rglob("*")
        if p.is_file() and not p.name.startswith(".asyncdl")
    )


def temp_files(directory: Path) -> list[Path]:
    """The temporary data files (not their .meta sidecars) in ``directory``."""
    return sorted(
        p for p in directory.iterdir() if p.name.startswith(".asyncdl") and not p.name.endswith(".meta")
    )


def range_start(request: RecordedRequest) -> int | None:
    value = request.header("Range")
    if value is None:
        return None
    assert value.startswith("bytes=") and value.endswith("-"), value
    return int(value[len("bytes=") : -1])


async def get_one(url: str | Request, dest: Path, **options: Any) -> Result:
    options.setdefault("retry_policy", fast())
    (result,) = await download_many([url], dest, **options)
    return result


async def run_engine(
    requests: Sequence[str | Request],
    dest: Path,
    *,
    policy: RetryPolicy,
    sleeps: list[float],
    rng: Callable[[], float] = lambda: 0.5,
) -> list[Result]:
    """Run downloads through an Engine whose sleep records the wait instead of waiting."""

    async def record(seconds: float) -> None:
        sleeps.append(seconds)

    session = make_session(connections=4, stall_timeout_s=10)
    try:
        engine = Engine(
            session, Settings(dest=dest, retry=policy), progress=Progress(), sleep=record, rng=rng
        )
        return [await engine.run(engine.plan(Request.coerce(r))) for r in requests]
    finally:
        await session.close()


async def leave_partial(dest: Path, url: str, name: str, data: bytes, meta: ResumeMeta) -> Path:
    """Write the temporary file an interrupted run would have left for ``url`` saved as ``name``."""
    temp = TempFile(dest / temp_name(name, f"{url}\n{name}"))
    await temp.begin(0, meta)
    await temp.write(data)
    await temp.close()
    return temp.path


# --- retry classification ----------------------------------------------------------------------------


async def test_reset_mid_body_is_retried_and_resumed(fault_server: FaultServer, tmp_path: Path) -> None:
    route = fault_server.route("/f.bin", body=BODY, reset_after=50_000, fail_times=2)
    result = await get_one(fault_server.url("/f.bin"), tmp_path)
    assert result.status is Status.OK, result.error
    assert result.attempts == 3
    assert (tmp_path / "f.bin").read_bytes() == BODY
    first, second, third = fault_server.requests_for("/f.bin")
    etag = route.etag_for(0)
    assert range_start(first) is None
    # Every retry resumes from what is on disk, validated by the strong ETag.
    assert range_start(second) == 50_000 and second.header("If-Range") == etag
    assert range_start(third) == 100_000 and third.header("If-Range") == etag
    assert visible(tmp_path) == ["f.bin"] and os.listdir(tmp_path) == ["f.bin"]


async def test_reset_in_a_chunked_body_is_retried(fault_server: FaultServer, tmp_path: Path) -> None:
    fault_server.route("/c", body=BODY, chunked=True, chunk_size=7000, reset_after=30_500, fail_times=1)
    result = await get_one(fault_server.url("/c"), tmp_path)
    assert result.status is Status.OK and result.attempts == 2
    assert (tmp_path / "c").read_bytes() == BODY


async def test_chunked_body_cut_mid_chunk_is_retried(fault_server: FaultServer, tmp_path: Path) -> None:
    fault_server.route("/c", body=BODY, chunked=True, chunk_size=7000, truncate_after=30_500, fail_times=2)
    result = await get_one(fault_server.url("/c"), tmp_path)
    assert result.status is Status.OK and result.attempts == 3
    assert (tmp_path / "c").read_bytes() == BODY


async def test_truncated_body_is_retried_and_resumed(fault_server: FaultServer, tmp_path: Path) -> None:
    fault_server.route("/t", body=BODY, truncate_after=120_000, fail_times=1)
    result = await get_one(fault_server.url("/t"), tmp_path)
    assert result.status is Status.OK and result.attempts == 2
    assert (tmp_path / "t").read_bytes() == BODY
    assert range_start(fault_server.requests_for("/t")[1]) == 120_000


async def test_garbage_instead_of_a_response_is_retried(fault_server: FaultServer, tmp_path: Path) -> None:
    fault_server.route("/g", body=BODY, raw=b"HTTP/1.1 200 OK\r\nContent-Len", fail_times=2)
    result = await get_one(fault_server.url("/g"), tmp_path)
    # aiohttp itself may repeat an idempotent request once when the server hangs up on it.
    assert result.status is Status.OK and 2 <= result.attempts <= 3
    assert len(fault_server.requests_for("/g")) == 3
    assert (tmp_path / "g").read_bytes() == BODY


async def test_stall_is_cut_by_the_timeout_and_resumed(fault_server: FaultServer, tmp_path: Path) -> None:
    fault_server.route("/s", body=BODY, stall_after=70_000, fail_times=1)
    started = time.monotonic()
    result = await get_one(fault_server.url("/s"), tmp_path, timeout=0.3)
    assert result.status is Status.OK, result.error
    assert result.attempts == 2
    assert time.monotonic() - started < 5
    assert (tmp_path / "s").read_bytes() == BODY
    assert range_start(fault_server.requests_for("/s")[1]) == 70_000


async def test_a_server_that_always_stalls_fails_with_a_clear_error(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.route("/s", body=BODY, stall_after=1000)
    result = await get_one(fault_server.url("/s"), tmp_path, timeout=0.2, retry_policy=fast(retries=1))
    assert result.status is Status.FAILED and result.attempts == 2
    assert "stalled" in (result.error or "")
    assert visible(tmp_path) == []


@pytest.mark.parametrize("status", RETRYABLE)
async def test_transient_statuses_are_retried(fault_server: FaultServer, tmp_path: Path, status: int) -> None:
    fault_server.route("/r", body=b"payload", statuses=[status, status, 200])
    result = await get_one(fault_server.url("/r"), tmp_path)
    assert result.status is Status.OK and result.attempts == 3
    assert len(fault_server.requests_for("/r")) == 3
    assert (tmp_path / "r").read_bytes() == b"payload"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 410, 451])
async def test_other_client_errors_fail_at_once(
    fault_server: FaultServer, tmp_path: Path, status: int
) -> None:
    fault_server.route("/r", body=b"payload", statuses=[status, 200])
    result = await get_one(fault_server.url("/r"), tmp_path)
    assert result.status is Status.FAILED and result.attempts == 1
    assert str(status) in (result.error or "")
    assert len(fault_server.requests_for("/r")) == 1
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("retries", [0, 1, 4])
async def test_retries_bounds_the_attempts(fault_server: FaultServer, tmp_path: Path, retries: int) -> None:
    fault_server.route("/r", statuses=[503])
    result = await get_one(fault_server.url("/r"), tmp_path, retry_policy=fast(retries))
    assert result.status is Status.FAILED and result.attempts == retries + 1
    assert "503" in (result.error or "")
    assert len(fault_server.requests_for("/r")) == retries + 1


async def test_retries_option_of_the_downloader(fault_server: FaultServer, tmp_path: Path) -> None:
    fault_server.route("/r", body=b"x", reset_after=0)
    sleeps: list[float] = []
    results = await run_engine(
        [fault_server.url("/r")], tmp_path, policy=RetryPolicy(retries=2), sleeps=sleeps
    )
    assert results[0].attempts == 3 and len(sleeps) == 2
    assert Downloader(tmp_path, retries=7).settings.retry.retries == 7


async def test_backoff_is_capped_exponential_with_jitter(fault_server: FaultServer, tmp_path: Path) -> None:
    fault_server.route("/r", statuses=[500])
    sleeps: list[float] = []
    policy = RetryPolicy(retries=6, backoff_base_s=0.5, backoff_max_s=3.0)
    (result,) = await run_engine(
        [fault_server.url("/r")], tmp_path, policy=policy, sleeps=sleeps, rng=lambda: 0.5
    )
    assert result.attempts == 7
    # random() * min(max, base * 2**(n-1)): the injected random 0.5 halves each ceiling.
    assert sleeps == [0.25, 0.5, 1.0, 1.5, 1.5, 1.5]


async def test_retry_after_seconds_is_honoured_and_capped(fault_server: FaultServer, tmp_path: Path) -> None:
    fault_server.route("/a", body=b"a", statuses=[(503, 7), (429, 2), 200])
    fault_server.route("/b", body=b"b", statuses=[(503, 86_400), 200])
    sleeps: list[float] = []
    policy = RetryPolicy(retries=3, retry_after_max_s=60)
    results = await run_engine(
        [fault_server.url("/a"), fault_server.url("/b")], tmp_path, policy=policy, sleeps=sleeps
    )
    assert [r.status for r in results] == [Status.OK, Status.OK]
    assert sleeps == [7.0, 2.0, 60.0]


async def test_retry_after_http_date_is_honoured(fault_server: FaultServer, tmp_path: Path) -> None:
    when = datetime.now(timezone.utc) + timedelta(seconds=120)
    fault_server.route("/d", body=b"d", statuses=[(503, when), 200])
    sleeps: list[float] = []
    (result,) = await run_engine([fault_server.url("/d")], tmp_path, policy=RetryPolicy(), sleeps=sleeps)
    assert result.status is Status.OK
    (waited,) = sleeps
    assert 115 <= waited <= 121  # the date has whole seconds


async def test_retry_after_on_a_permanent_error_is_not_waited_for(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.route("/p", statuses=[(404, 30)])
    sleeps: list[float] = []
    (result,) = await run_engine([fault_server.url("/p")], tmp_path, policy=RetryPolicy(), sleeps=sleeps)
    assert result.status is Status.FAILED and result.attempts == 1 and sleeps == []


# --- validated resume --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "if_range"),
    [
        ({"etag": "strong-1", "last_modified": True}, '"strong-1"'),
        ({"etag": "v1", "weak_etag": True, "last_modified": True}, "Mon, 01 Jan 2024 00:00:00 GMT"),
        ({"etag": False, "last_modified": True}, "Mon, 01 Jan 2024 00:00:00 GMT"),
    ],
    ids=["strong-etag", "weak-etag-falls-back-to-date", "date-only"],
)
async def test_resume_sends_range_with_the_right_validator(
    fault_server: FaultServer, tmp_path: Path, options: dict[str, Any], if_range: str
) -> None:
    fault_server.route("/v", body=BODY, reset_after=40_000, fail_times=1, **options)
    result = await get_one(fault_server.url("/v"), tmp_path)
    assert result.status is Status.OK and (tmp_path / "v").read_bytes() == BODY
    second = fault_server.requests_for("/v")[1]
    assert range_start(second) == 40_000
    assert second.header("If-Range") == if_range
    assert second.header("If-Range", "").startswith("W/") is False


@pytest.mark.parametrize("weak", [True, False], ids=["weak-etag-only", "no-validator"])
async def test_no_range_without_a_strong_validator(
    fault_server: FaultServer, tmp_path: Path, weak: bool
) -> None:
    fault_server.route(
        "/w", body=BODY, etag="v1" if weak else False, weak_etag=weak, last_modified=False,
        reset_after=40_000, fail_times=1,
    )  # fmt: skip
    result = await get_one(fault_server.url("/w"), tmp_path)
    assert result.status is Status.OK and result.attempts == 2
    assert (tmp_path / "w").read_bytes() == BODY
    for request in fault_server.requests_for("/w"):
        assert not request.has_header("Range") and not request.has_header("If-Range")


async def test_range_ignored_restarts_from_zero(fault_server: FaultServer, tmp_path: Path) -> None:
    fault_server.route("/i", body=BODY, ranges="ignore", reset_after=90_000, fail_times=1)
    result = await get_one(fault_server.url("/i"), tmp_path)
    assert result.status is Status.OK and result.attempts == 2
    assert range_start(fault_server.requests_for("/i")[1]) == 90_000
    assert (tmp_path / "i").read_bytes() == BODY  # the 200 body replaced the prefix, not appended to it


@pytest.mark.parametrize("answered_from", [0, 10_000, 60_000])
async def test_206_from_another_offset_is_refused(
    fault_server: FaultServer, tmp_path: Path, answered_from: int
) -> None:
    fault_server.route(
        "/o", body=BODY, ranges="offset", range_offset=answered_from, reset_after=40_000, fail_times=1
    )
    result = await get_one(fault_server.url("/o"), tmp_path)
    assert result.status is Status.OK, result.error
    assert (tmp_path / "o").read_bytes() == BODY
    requests = fault_server.requests_for("/o")
    assert [range_start(r) for r in requests] == [None, 40_000, None]  # refused, then a fresh start
    assert result.attempts == 3


async def test_content_changing_between_attempts_ends_as_the_new_content(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    old, new = os.urandom(150_000), os.urandom(150_000)  # same size: only the validator tells them apart
    route = fault_server.route("/x", bodies=[old, new], reset_after=100_000, fail_times=1)
    result = await get_one(fault_server.url("/x"), tmp_path)
    assert result.status is Status.OK and result.attempts == 2
    second = fault_server.requests_for("/x")[1]
    assert second.header("If-Range") == route.etag_for(0)  # asked for the old version's rest, got all of new
    assert (tmp_path / "x").read_bytes() == new


@pytest.mark.parametrize("validator", ["etag", "last_modified"])
async def test_content_changing_between_runs_ends_as_the_new_content(
    fault_server: FaultServer, tmp_path: Path, validator: str
) -> None:
    old, new = os.urandom(150_000), os.urandom(150_000)
    options: dict[str, Any] = {"etag": False} if validator == "last_modified" else {"last_modified": False}
    route = fault_server.route("/x", bodies=[old, new], version=0, reset_after=100_000, **options)
    first = await get_one(fault_server.url("/x"), tmp_path, retry_policy=fast(0))
    assert first.status is Status.FAILED
    (partial,) = temp_files(tmp_path)
    assert partial.read_bytes() == old[:100_000]
    assert visible(tmp_path) == []

    route.version, route.reset_after = 1, None
    second = await get_one(fault_server.url("/x"), tmp_path)
    assert second.status is Status.OK
    assert range_start(fault_server.requests_for("/x")[-1]) == 100_000
    assert (tmp_path / "x").read_bytes() == new
    assert os.listdir(tmp_path) == ["x"]


async def test_partial_from_an_interrupted_run_is_resumed(fault_server: FaultServer, tmp_path: Path) -> None:
    route = fault_server.route("/p", body=BODY, reset_after=64_000)
    first = await get_one(fault_server.url("/p"), tmp_path, retry_policy=fast(0))
    assert first.status is Status.FAILED and visible(tmp_path) == []
    (partial,) = temp_files(tmp_path)
    assert partial.stat().st_size == 64_000

    route.reset_after = None
    second = await get_one(fault_server.url("/p"), tmp_path)
    assert second.status is Status.OK
    last = fault_server.requests_for("/p")[-1]
    assert range_start(last) == 64_000 and last.header("If-Range") == route.etag_for(0)
    assert second.bytes == len(BODY)
    assert (tmp_path / "p").read_bytes() == BODY


async def test_416_with_everything_on_disk_completes_without_a_body(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    route = fault_server.route("/done", body=BODY)
    url = fault_server.url("/done")
    await leave_partial(
        tmp_path, url, "done", BODY, ResumeMeta(url=url, etag=route.etag_for(0), size=len(BODY))
    )
    result = await get_one(url, tmp_path)
    assert result.status is Status.OK and result.bytes == len(BODY)
    (request,) = fault_server.requests_for("/done")  # answered 416: no body travelled
    assert range_start(request) == len(BODY)
    assert (tmp_path / "done").read_bytes() == BODY
    assert os.listdir(tmp_path) == ["done"]


async def test_416_with_a_size_mismatch_restarts(fault_server: FaultServer, tmp_path: Path) -> None:
    # The remote file shrank but kept its date: a Last-Modified If-Range still matches, the range does not.
    new = os.urandom(10_000)
    route = fault_server.route("/shrunk", body=new, etag=False)
    url = fault_server.url("/shrunk")
    meta = ResumeMeta(url=url, last_modified=route.last_modified_for(0), size=30_000)
    await leave_partial(tmp_path, url, "shrunk", os.urandom(20_000), meta)
    result = await get_one(url, tmp_path)
    assert result.status is Status.OK, result.error
    assert [range_start(r) for r in fault_server.requests_for("/shrunk")] == [20_000, None]
    assert (tmp_path / "shrunk").read_bytes() == new


async def test_partial_longer_than_the_recorded_size_is_not_resumed(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    route = fault_server.route("/long", body=BODY)
    url = fault_server.url("/long")
    meta = ResumeMeta(url=url, etag=route.etag_for(0), size=1000)
    await leave_partial(tmp_path, url, "long", os.urandom(5000), meta)
    result = await get_one(url, tmp_path)
    assert result.status is Status.OK
    assert [range_start(r) for r in fault_server.requests_for("/long")] == [None]
    assert (tmp_path / "long").read_bytes() == BODY


async def test_partial_without_metadata_is_not_resumed(fault_server: FaultServer, tmp_path: Path) -> None:
    fault_server.route("/nometa", body=BODY)
    url = fault_server.url("/nometa")
    path = await leave_partial(tmp_path, url, "nometa", os.urandom(5000), ResumeMeta(url=url))
    path.with_name(path.name + ".meta").write_text("{not json", encoding="utf-8")
    result = await get_one(url, tmp_path)
    assert result.status is Status.OK
    assert [range_start(r) for r in fault_server.requests_for("/nometa")] == [None]
    assert (tmp_path / "nometa").read_bytes() == BODY


async def test_failure_while_restarting_never_pairs_old_bytes_with_new_metadata(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run dies (here: the file cannot be reopened) just as it restarts a partial whose remote changed;
    # the next run must not take the old bytes for a prefix of the new version.
    # Above the size kept in memory until commit (SMALL_BODY_MAX): a file is opened while receiving.
    old, new = os.urandom(3_000_000), os.urandom(3_000_000)
    route = fault_server.route("/x", bodies=[old, new], version=1)
    url = fault_server.url("/x")
    meta = ResumeMeta(url=url, etag=route.etag_for(0), size=len(old))
    await leave_partial(tmp_path, url, "x", old[:100_000], meta)
    real_open = aiofiles.open

    def failing_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if mode == "wb":
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_open(path, mode, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(aiofiles, "open", failing_open)
        first = await get_one(url, tmp_path, retry_policy=fast(0))
    assert first.status is Status.FAILED
    second = await get_one(url, tmp_path)
    assert second.status is Status.OK
    assert (tmp_path / "x").read_bytes() == new


# --- integrity ---------------------------------------------------------------------------------------


async def test_body_shorter_than_content_length_is_never_ok(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.route("/short", body=BODY, content_length=len(BODY) + 100)
    result = await get_one(fault_server.url("/short"), tmp_path, retry_policy=fast(2))
    assert result.status is Status.FAILED and result.attempts == 3
    assert "cut short" in (result.error or "")
    assert visible(tmp_path) == []  # nothing under the final name


async def test_a_length_lie_once_then_the_truth(fault_server: FaultServer, tmp_path: Path) -> None:
    fault_server.route("/lie", body=BODY, content_length=len(BODY) + 100, fail_times=1)
    result = await get_one(fault_server.url("/lie"), tmp_path)
    assert result.status is Status.OK, result.error
    assert (tmp_path / "lie").read_bytes() == BODY


async def test_checksum_is_computed_while_streaming(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix_reads: list[int] = []
    real = download_module.hash_prefix

    async def spy(path: Path, length: int, algorithm: str) -> Any:
        prefix_reads.append(length)
        return await real(path, length, algorithm)

    monkeypatch.setattr(download_module, "hash_prefix", spy)
    fault_server.route("/whole", body=BODY)
    fault_server.route("/resumed", body=BODY, reset_after=80_000, fail_times=1)
    digest = "sha-256=" + hashlib.sha256(BODY).hexdigest()
    results = await download_many(
        [Request(fault_server.url(p), checksum=digest) for p in ("/whole", "/resumed")],
        tmp_path,
        jobs=1,
        retry_policy=fast(),
    )
    assert [r.status for r in results] == [Status.OK, Status.OK]
    # No second read of a whole file: only the prefix kept from the failed attempt is read back.
    assert prefix_reads == [80_000]
    assert (tmp_path / "resumed").read_bytes() == BODY


async def test_checksum_mismatch_removes_the_partial_and_the_next_run_starts_over(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    good = os.urandom(100_000)
    route = fault_server.route("/sum", bodies=[os.urandom(100_000), good], version=0)
    request = Request(fault_server.url("/sum"), checksum="sha-256=" + hashlib.sha256(good).hexdigest())
    first = await get_one(request, tmp_path)
    assert first.status is Status.FAILED and first.attempts == 1
    assert "sha256 mismatch" in (first.error or "")
    assert os.listdir(tmp_path) == []  # neither the target nor the temporary file

    route.version = 1
    second = await get_one(request, tmp_path)
    assert second.status is Status.OK
    assert range_start(fault_server.requests_for("/sum")[-1]) is None
    assert (tmp_path / "sum").read_bytes() == good


async def test_corrupt_partial_is_caught_by_the_checksum_and_dropped(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    route = fault_server.route("/c", body=BODY)
    url = fault_server.url("/c")
    request = Request(url, checksum="sha-256=" + hashlib.sha256(BODY).hexdigest())
    meta = ResumeMeta(url=url, etag=route.etag_for(0), size=len(BODY))
    await leave_partial(tmp_path, url, "c", b"\0" * 50_000, meta)
    first = await get_one(request, tmp_path, retry_policy=fast(0))
    assert first.status is Status.FAILED and "mismatch" in (first.error or "")
    assert os.listdir(tmp_path) == []
    second = await get_one(request, tmp_path)
    assert second.status is Status.OK
    assert (tmp_path / "c").read_bytes() == BODY


# --- mirrors -----------------------------------------------------------------------------------------


async def test_a_mirror_that_fails_permanently_hands_over(fault_server: FaultServer, tmp_path: Path) -> None:
    fault_server.route("/gone", statuses=[404])
    fault_server.route("/busy", statuses=[503])
    fault_server.route("/ok", body=BODY)
    request = Request(fault_server.url("/gone"), mirrors=(fault_server.url("/busy"), fault_server.url("/ok")))
    result = await get_one(request, tmp_path, retry_policy=fast(1))
    assert result.status is Status.OK, result.error
    assert result.attempts == 1 + 2 + 1  # 404 once, 503 with one retry, then the good mirror
    assert (tmp_path / "gone").read_bytes() == BODY


async def test_every_mirror_failing_fails_with_the_last_error(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.route("/a", statuses=[404])
    fault_server.route("/b", statuses=[410])
    result = await get_one(Request(fault_server.url("/a"), mirrors=(fault_server.url("/b"),)), tmp_path)
    assert result.status is Status.FAILED and result.attempts == 2
    assert "/b" in (result.error or "") and "410" in (result.error or "")


async def test_partial_resumes_from_a_mirror_with_the_same_validator(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    async with FaultServer() as mirror:
        fault_server.route("/f", body=BODY, reset_after=70_000)
        mirror.route("/f", body=BODY)  # same content, same derived strong ETag
        request = Request(fault_server.url("/f"), mirrors=(mirror.url("/f"),))
        result = await get_one(request, tmp_path, retry_policy=fast(0))
        (seen,) = mirror.requests_for("/f")
    assert result.status is Status.OK
    assert range_start(seen) == 70_000 and seen.header("If-Range") == fault_server.routes["/f"].etag_for(0)
    assert (tmp_path / "f").read_bytes() == BODY


async def test_partial_restarts_on_a_mirror_with_another_validator(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    other = os.urandom(len(BODY))
    async with FaultServer() as mirror:
        fault_server.route("/f", body=BODY, reset_after=70_000)
        mirror.route("/f", body=other)  # another version: its ETag differs
        request = Request(fault_server.url("/f"), mirrors=(mirror.url("/f"),))
        result = await get_one(request, tmp_path, retry_policy=fast(0))
    assert result.status is Status.OK
    assert (tmp_path / "f").read_bytes() == other  # never BODY[:70000] + other[70000:]


# --- hostile input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "disposition"),
    [
        ("/..%2F..%2Fescape.txt", None),
        ("/..%5C..%5Cescape.txt", None),
        ("/%2e%2e", None),
        ("/a/%2e%2e/%2e%2e/%2e%2e/escape.txt", None),
        ("/f", 'attachment; filename="../../escape.txt"'),
        ("/f", 'attachment; filename="..\\..\\escape.txt"'),
        ("/f", 'attachment; filename="/etc/passwd"'),
        ("/f", 'attachment; filename=".."'),
        ("/f", "attachment; filename*=UTF-8''..%2F..%2Fescape.txt"),
        ("/f", "attachment; filename*=UTF-8''%2Fetc%2Fpasswd; filename=\"ok.txt\""),
        ("/f", "attachment; filename*=UTF-8''a%00b%0A..%2Fc"),
    ],
)
async def test_hostile_names_stay_inside_the_output_directory(
    fault_server: FaultServer, tmp_path: Path, path: str, disposition: str | None
) -> None:
    url = fault_server.url(path)
    # The client normalises dot segments before sending: route what it will ask for.
    fault_server.route(yarl.URL(url).raw_path, body=b"payload", content_disposition=disposition)
    dest = tmp_path / "a" / "b" / "out"
    result = await get_one(url, dest)
    assert result.status is Status.OK, result.error
    assert result.path is not None
    saved = Path(result.path)
    assert saved.resolve().parent == dest.resolve()
    assert saved.read_bytes() == b"payload"
    assert all(c.isprintable() for c in saved.name)
    assert [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()] == [
        str(saved.relative_to(tmp_path))
    ]


async def test_user_headers_are_not_sent_to_another_host(fault_server: FaultServer, tmp_path: Path) -> None:
    secrets = {"X-Api-Key": "k3y", "Authorization": "Bearer t0k", "Cookie": "session=c00kie"}
    async with FaultServer() as other:
        other.route("/file", body=b"elsewhere")
        fault_server.route("/start", redirect_to="/hop", redirect_code=301)
        fault_server.route("/hop", redirect_to=other.url("/file"), redirect_code=307)
        url = fault_server.url("/start").replace("http://", "http://user:pa55@")
        async with Downloader(tmp_path, headers={"X-Global": "g"}, retry_policy=fast()) as dl:
            result = await dl.download(url, headers=secrets)
        (away,) = other.requests_for("/file")
    assert result.status is Status.OK
    assert (tmp_path / "start").read_bytes() == b"elsewhere"
    hop = fault_server.requests_for("/hop")[0]
    assert hop.header("X-Api-Key") == "k3y" and hop.header("X-Global") == "g"  # same origin: kept
    assert hop.header("Authorization") is not None
    for name in (*secrets, "X-Global"):
        assert not away.has_header(name), name
    assert "k3y" not in repr(away.headers) and "pa55" not in repr(away.headers)


@pytest.mark.parametrize(
    "location", ["ftp://127.0.0.1/x", "file:///etc/passwd", "data:text/plain,hi", "javascript:alert(1)"]
)
async def test_only_http_redirects_are_followed(
    fault_server: FaultServer, tmp_path: Path, location: str
) -> None:
    fault_server.route("/r", redirect_to=location)
    result = await get_one(fault_server.url("/r"), tmp_path)
    assert result.status is Status.FAILED and result.attempts == 1
    assert "not followed" in (result.error or "")
    assert len(fault_server.requests) == 1 and os.listdir(tmp_path) == []


async def test_redirect_loops_and_chains(fault_server: FaultServer, tmp_path: Path) -> None:
    fault_server.route("/loop1", redirect_to="/loop2")
    fault_server.route("/loop2", redirect_to="/loop1")
    for i in range(11):
        fault_server.route(f"/hop{i}", redirect_to=f"/hop{i + 1}")
    fault_server.route("/hop11", body=b"end")
    results = await download_many(
        [fault_server.url("/loop1"), fault_server.url("/hop1"), fault_server.url("/hop0")],
        tmp_path,
        retry_policy=fast(),
    )
    assert results[0].status is Status.FAILED and "loop" in (results[0].error or "")
    assert results[1].status is Status.OK  # ten redirects are allowed
    assert results[2].status is Status.FAILED and "more than 10 redirects" in (results[2].error or "")
    assert [r.attempts for r in results] == [1, 1, 1]
    assert visible(tmp_path) == ["hop1"]


async def test_gzip_is_not_asked_for_and_bytes_are_saved_as_served(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    text = b"hello " * 5000
    fault_server.route("/polite", body=text, gzip=True)
    # A server that compresses although identity was asked: the bytes are kept as they came.
    packed = gzip.compress(text, mtime=0)
    fault_server.route("/rude", body=packed, headers={"Content-Encoding": "gzip"})
    results = await download_many([fault_server.url("/polite"), fault_server.url("/rude")], tmp_path)
    assert [r.status for r in results] == [Status.OK, Status.OK]
    for request in fault_server.requests:
        assert request.header("Accept-Encoding") == "identity"
    assert (tmp_path / "polite").read_bytes() == text
    assert (tmp_path / "rude").read_bytes() == packed


# --- storage trouble ---------------------------------------------------------------------------------


class _FullDiskFile:
    """An aiofiles handle whose writes fail as on a full disk."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    async def writelines(self, chunks: list[bytes]) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_disk_full_fails_that_download_only_injected(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = aiofiles.open

    def open_on_full_disk(path: Any, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        async def opened() -> Any:
            handle = await real_open(path, *args, **kwargs)
            return _FullDiskFile(handle) if "big" in Path(path).name else handle

        return opened()

    monkeypatch.setattr(aiofiles, "open", open_on_full_disk)
    big = os.urandom(3 * 1024 * 1024)
    fault_server.route("/small1", body=b"one")
    fault_server.route("/big", body=big)
    fault_server.route("/small2", body=os.urandom(2 * 1024 * 1024))
    urls = [fault_server.url(p) for p in ("/small1", "/big", "/small2")]
    results = await download_many(urls, tmp_path, jobs=3, retry_policy=fast())
    assert [r.status for r in results] == [Status.OK, Status.FAILED, Status.OK]
    assert "no space left on device" in (results[1].error or "")
    assert results[1].attempts == 1  # no retry can help
    assert visible(tmp_path) == ["small1", "small2"]


@contextmanager
def mounted_tmpfs(where: Path, options: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, check=False
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mount.stderr.decode(errors='replace').strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


async def test_disk_full_fails_that_download_only_on_a_small_tmpfs(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    with mounted_tmpfs(tmp_path / "small", "size=1m") as dest:
        fault_server.route("/a", body=b"a" * 1000)
        fault_server.route("/b", body=os.urandom(100_000))
        fault_server.route("/big", body=os.urandom(3 * 1024 * 1024))
        urls = [fault_server.url(p) for p in ("/a", "/b", "/big")]
        results = await download_many(urls, dest, jobs=1, retry_policy=fast())
        assert [r.status for r in results] == [Status.OK, Status.OK, Status.FAILED]
        assert "no space left on device" in (results[2].error or "")
        assert results[2].attempts == 1
        assert visible(dest) == ["a", "b"]


@contextmanager
def unwritable_directory(tmp_path: Path) -> Iterator[Path]:
    """A directory this process cannot write to: read-only for a user, a read-only mount for root."""
    if os.geteuid() == 0:
        with mounted_tmpfs(tmp_path / "ro", "ro,size=64k") as where:
            yield where
        return
    where = tmp_path / "ro"
    where.mkdir()
    where.chmod(0o500)
    try:
        yield where
    finally:
        where.chmod(0o700)


async def test_unwritable_output_directory_is_a_clear_error(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.route("/a", body=b"a")
    with unwritable_directory(tmp_path) as where:
        results = await download_many([fault_server.url("/a")], where, retry_policy=fast())
        assert results[0].status is Status.FAILED and results[0].attempts == 1
        error = results[0].error or ""
        assert str(where / "a") in error, error
        assert "Read-only file system" in error or "Permission denied" in error, error
        # A directory that cannot even be created is an error before any request.
        blocker = tmp_path / "file"
        blocker.write_bytes(b"")
        with pytest.raises(asyncdl_errors.StorageError, match="cannot create directory"):
            await download_many([fault_server.url("/a")], blocker / "sub")
    assert len(fault_server.requests) == 1


def test_unwritable_output_directory_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with unwritable_directory(tmp_path) as where:
        status = cli_main(["-q", "-d", str(where), "http://127.0.0.1:9/x"])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("asyncdl: cannot write to output directory") and "\n" not in err


async def test_a_server_that_accepts_but_never_answers_is_a_stall(tmp_path: Path) -> None:
    connections = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while await reader.read(65536):  # read the request, answer nothing, until the client leaves
                pass
        finally:
            writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        started = time.monotonic()
        result = await get_one(f"http://127.0.0.1:{port}/x", tmp_path, timeout=0.2, retry_policy=fast(1))
    finally:
        server.close()
        await server.wait_closed()
    assert result.status is Status.FAILED and result.attempts == 2
    assert "stalled" in (result.error or "")
    assert connections == 2 and time.monotonic() - started < 5
