"""Downloads end to end through the library, against a real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from httpserver import FileServer

import asyncdl
from asyncdl import Downloader, Request, RetryPolicy, Status, download_many
from asyncdl._hosts import DEFAULT_LOOKAHEAD

FAST_RETRY = RetryPolicy(retries=3, backoff_base_s=0.001, backoff_max_s=0.002)


def visible(directory: Path) -> list[str]:
    """Every file below ``directory`` but our hidden temporary ones, as sorted relative paths."""
    return sorted(
        str(p.relative_to(directory))
        for p in directory.rglob("*")
        if p.is_file() and not p.name.startswith(".asyncdl")
    )


async def test_download_many_saves_every_file_in_input_order(file_server: FileServer, tmp_path: Path) -> None:
    bodies = {f"/f{i}.bin": os.urandom(1000 * i + 1) for i in range(40)}
    for path, body in bodies.items():
        file_server.add(path, body)
    urls = [file_server.url(p) for p in bodies]
    file_server.gate = 8  # every request waits until 8 are in flight,
    file_server.gate_skip = 2  # but the first two: a new origin has 2 slots until it answers well

    results = await download_many(urls, tmp_path, jobs=8)

    assert [r.url for r in results] == urls
    assert all(r.status is Status.OK and r.ok for r in results)
    for path, body in bodies.items():
        assert (tmp_path / path.lstrip("/")).read_bytes() == body
    assert [r.bytes for r in results] == [len(b) for b in bodies.values()]
    # Concurrency is real and bounded by jobs.
    assert file_server.max_in_flight == 8
    # After a run where everything succeeded only the targets remain (and hidden .asyncdl files).
    assert sorted(os.listdir(tmp_path)) == sorted(p.lstrip("/") for p in bodies)


async def test_stream_reads_the_input_lazily(file_server: FileServer, tmp_path: Path) -> None:
    file_server.add("/x", b"x")
    pulled = 0

    def requests() -> Iterator[Request]:
        nonlocal pulled
        for i in range(1_000_000):
            pulled += 1
            yield Request(file_server.url("/x"), out=f"x{i}")

    async with Downloader(tmp_path, jobs=4) as dl:
        stream = dl.stream(requests())
        first = await anext(stream)
        await stream.aclose()
    assert first.status is Status.OK
    # A new origin has 2 of the 4 slots until it answers well: the input is read ahead for other
    # origins' work meanwhile, but never beyond the scheduler's window.
    assert pulled <= DEFAULT_LOOKAHEAD + 4 * 3


async def test_every_request_asks_for_identity_and_carries_user_headers(
    file_server: FileServer, tmp_path: Path
) -> None:
    file_server.add("/a", b"abc")
    async with Downloader(tmp_path, headers={"X-Token": "t1"}) as dl:
        result = await dl.download(Request(file_server.url("/a"), headers={"X-Extra": "e"}))
    assert result.status is Status.OK
    (seen,) = file_server.requests_for("/a")
    assert seen.headers["Accept-Encoding"] == "identity"
    assert seen.headers["X-Token"] == "t1"
    assert seen.headers["X-Extra"] == "e"


async def test_out_dir_and_content_disposition_name_the_file(file_server: FileServer, tmp_path: Path) -> None:
    file_server.add("/a", b"A")
    file_server.add("/download", b"CD", headers={"Content-Disposition": 'attachment; filename="report.pdf"'})
    file_server.add("/dir/", b"<html>")
    requests = [
        Request(file_server.url("/a"), out="named.txt", dir="sub/deeper"),
        file_server.url("/download?id=7"),
        file_server.url("/dir/"),
    ]
    file_server.add(
        "/download?id=7", b"CD", headers={"Content-Disposition": 'attachment; filename="report.pdf"'}
    )
    results = await download_many(requests, tmp_path)
    assert [r.status for r in results] == [Status.OK] * 3
    assert (tmp_path / "sub" / "deeper" / "named.txt").read_bytes() == b"A"
    assert (tmp_path / "report.pdf").read_bytes() == b"CD"
    assert (tmp_path / "index.html").read_bytes() == b"<html>"


async def test_a_large_body_goes_into_a_dir_that_does_not_exist_yet(
    file_server: FileServer, tmp_path: Path
) -> None:
    # Over the size kept in memory: written as it arrives (spliced over plain HTTP), not at commit.
    body = os.urandom(3 * 1024 * 1024 + 5)
    file_server.add("/big.bin", body)
    (result,) = await download_many([Request(file_server.url("/big.bin"), dir="new/deeper")], tmp_path)
    assert result.status is Status.OK, result.error
    assert (tmp_path / "new" / "deeper" / "big.bin").read_bytes() == body


@pytest.mark.parametrize(
    ("path", "disposition"),
    [
        ("/..%2F..%2Fescape.txt", None),
        ("/%2e%2e", None),
        ("/f", 'attachment; filename="../../escape.txt"'),
        ("/f", "attachment; filename*=UTF-8''..%2F..%2Fescape.txt"),
        ("/f", 'attachment; filename="/etc/passwd"'),
    ],
)
async def test_hostile_names_stay_inside_the_output_directory(
    file_server: FileServer, tmp_path: Path, path: str, disposition: str | None
) -> None:
    headers = {"Content-Disposition": disposition} if disposition else {}
    # The client may normalise the path before sending it: answer whatever arrives.
    file_server.fallback = file_server.add(path, b"payload", headers=headers)
    dest = tmp_path / "out"
    (result,) = await download_many([file_server.url(path)], dest)
    assert result.status is Status.OK, result.error
    assert result.path is not None
    saved = Path(result.path).resolve()
    assert saved.parent == dest.resolve()
    assert saved.read_bytes() == b"payload"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


async def test_same_name_twice_in_one_run_gets_distinct_names(
    file_server: FileServer, tmp_path: Path
) -> None:
    file_server.add("/a/data.tar.gz", b"one")
    file_server.add("/b/data.tar.gz", b"two")
    file_server.add("/c/data.tar.gz", b"three")
    results = await download_many([file_server.url(f"/{x}/data.tar.gz") for x in "abc"], tmp_path, jobs=3)
    assert [Path(r.path or "").name for r in results] == ["data.tar.gz", "data.1.tar.gz", "data.2.tar.gz"]
    assert [(tmp_path / Path(r.path or "").name).read_bytes() for r in results] == [b"one", b"two", b"three"]


async def test_existing_target_is_skipped_without_a_request(file_server: FileServer, tmp_path: Path) -> None:
    file_server.add("/a.txt", b"new")
    (tmp_path / "a.txt").write_bytes(b"old")
    (result,) = await download_many([file_server.url("/a.txt")], tmp_path)
    assert result.status is Status.SKIPPED and result.ok
    assert (tmp_path / "a.txt").read_bytes() == b"old"
    assert file_server.requests == []


async def test_overwrite_replaces_an_existing_target(file_server: FileServer, tmp_path: Path) -> None:
    file_server.add("/a.txt", b"new")
    (tmp_path / "a.txt").write_bytes(b"old")
    (result,) = await download_many([file_server.url("/a.txt")], tmp_path, overwrite=True)
    assert result.status is Status.OK
    assert (tmp_path / "a.txt").read_bytes() == b"new"


async def test_a_failing_url_fails_alone(file_server: FileServer, tmp_path: Path) -> None:
    file_server.add("/ok", b"fine")
    port_with_nothing = _unused_port()
    urls = [
        file_server.url("/missing"),
        f"http://127.0.0.1:{port_with_nothing}/refused",
        "ftp://example.invalid/x",
        file_server.url("/ok"),
    ]
    results = await download_many(urls, tmp_path, retry_policy=FAST_RETRY)
    assert [r.status for r in results] == [Status.FAILED, Status.FAILED, Status.FAILED, Status.OK]
    assert "404" in (results[0].error or "")
    assert "connect" in (results[1].error or "")
    assert results[1].attempts == 4  # the first and three retries
    assert "http" in (results[2].error or "")
    assert visible(tmp_path) == ["ok"]


async def test_server_errors_are_retried_then_succeed(file_server: FileServer, tmp_path: Path) -> None:
    file_server.add("/flaky", b"finally", statuses=[503, 500])
    (result,) = await download_many([file_server.url("/flaky")], tmp_path, retry_policy=FAST_RETRY)
    assert result.status is Status.OK
    assert result.attempts == 3
    assert (tmp_path / "flaky").read_bytes() == b"finally"


async def test_checksum_is_verified(file_server: FileServer, tmp_path: Path) -> None:
    body = os.urandom(3 * 1024 * 1024 + 5)
    file_server.add("/good", body)
    file_server.add("/bad", body)
    good = Request(file_server.url("/good"), checksum=f"sha-256={hashlib.sha256(body).hexdigest()}")
    bad = Request(file_server.url("/bad"), checksum="md5=" + "0" * 32)
    results = await download_many([good, bad], tmp_path, retry_policy=FAST_RETRY)
    assert results[0].status is Status.OK
    assert results[1].status is Status.FAILED
    assert "md5 mismatch" in (results[1].error or "")
    assert os.listdir(tmp_path) == ["good"]  # the bad one's temporary file is removed too


async def test_large_file_is_written_through_the_buffered_path(
    file_server: FileServer, tmp_path: Path
) -> None:
    body = os.urandom(5 * 1024 * 1024 + 123)
    file_server.add("/big", body)
    (result,) = await download_many([file_server.url("/big")], tmp_path)
    assert result.status is Status.OK and result.bytes == len(body)
    assert (tmp_path / "big").read_bytes() == body


async def test_redirects_are_followed_and_user_headers_stay_home(tmp_path: Path) -> None:
    async with FileServer() as home, FileServer() as other:
        other.add("/file", b"elsewhere")
        home.add("/start", redirect_to="/hop")
        home.add("/hop", redirect_to=other.url("/file"))
        home.add("/loop1", redirect_to="/loop2")
        home.add("/loop2", redirect_to="/loop1")
        home.add("/ftp", redirect_to="ftp://127.0.0.1/x")
        requests = [
            Request(home.url("/start"), headers={"X-Api-Key": "secret", "Authorization": "Bearer s"}),
            home.url("/loop1"),
            home.url("/ftp"),
        ]
        results = await download_many(requests, tmp_path)
    assert results[0].status is Status.OK
    assert (tmp_path / "start").read_bytes() == b"elsewhere"
    assert home.requests_for("/hop")[0].headers["X-Api-Key"] == "secret"
    (seen,) = other.requests_for("/file")
    assert "X-Api-Key" not in seen.headers and "Authorization" not in seen.headers
    assert results[1].status is Status.FAILED and "loop" in (results[1].error or "")
    assert results[2].status is Status.FAILED and "ftp" in (results[2].error or "")


async def test_url_credentials_are_sent_but_never_shown(file_server: FileServer, tmp_path: Path) -> None:
    file_server.add("/private", status=401)
    url = file_server.url("/private").replace("http://", "http://alice:s3cret@")
    (result,) = await download_many([url], tmp_path)
    assert result.status is Status.FAILED
    assert file_server.requests[0].headers["Authorization"].startswith("Basic ")
    assert "s3cret" not in repr(result) and "s3cret" not in (result.error or "")
    assert "alice:***@" in result.url


async def test_progress_is_visible_to_library_callers(file_server: FileServer, tmp_path: Path) -> None:
    file_server.add("/a", b"a" * 100)
    file_server.add("/b", b"b" * 50)
    finished: list[asyncdl.Result] = []
    async with Downloader(tmp_path) as dl:
        dl.progress.add_listener(finished.append)
        async for _ in dl.stream([file_server.url("/a"), file_server.url("/b"), file_server.url("/nope")]):
            pass
        snap = dl.progress.snapshot()
    assert (snap.ok, snap.skipped, snap.failed) == (2, 0, 1)
    assert snap.bytes_done == 150
    assert snap.active == ()
    assert len(finished) == 3


async def test_downloader_requires_async_with(tmp_path: Path) -> None:
    dl = Downloader(tmp_path)
    with pytest.raises(RuntimeError, match="async with"):
        await dl.download("http://127.0.0.1:1/x")
    await dl.aclose()
    await dl.aclose()  # idempotent


def _unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_limit_rate_caps_the_overall_rate(file_server: FileServer, tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    body = os.urandom(600 * 1024)
    file_server.add("/a", body)
    file_server.add("/b", body)
    started = loop.time()
    results = await download_many([file_server.url("/a"), file_server.url("/b")], tmp_path, limit_rate="2M")
    elapsed = loop.time() - started
    assert all(r.status is Status.OK for r in results)
    # 1.2 MiB at 2 MiB/s cannot take less than 0.6 s, less the 0.1 s burst allowed after idling.
    assert elapsed >= 0.5


async def test_report_option_of_the_library(file_server: FileServer, tmp_path: Path) -> None:
    file_server.add("/a", b"a")
    report = tmp_path / "report.jsonl"
    async with Downloader(tmp_path / "out", report=report) as dl:
        one = await dl.download(file_server.url("/a"))
        streamed = [r async for r in dl.stream([file_server.url("/missing")])]
    records = [json.loads(line) for line in report.read_text().splitlines()]
    assert [r["status"] for r in records] == [one.status.value, streamed[0].status.value] == ["ok", "failed"]
    assert records[0] == one.to_record()
