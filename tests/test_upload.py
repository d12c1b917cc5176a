"""Streaming uploads against real local servers that hash what they receive and record the headers.

``Sink`` is an aiohttp.web server that streams each request body (raw or multipart) through sha256
without keeping it, and answers as its per-path script says. ``CuttingServer`` is a raw asyncio server
that drops the connection in the middle of a request body, which no well-behaved server does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import BodyPartReader, web

import asyncdl
from asyncdl._http import make_session
from asyncdl._upload import Uploader, UploadItem, make_settings, plan_uploads

MiB = 1024 * 1024


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_file(path: Path, size: int, seed: int = 1) -> str:
    """A file of ``size`` pseudo-random bytes (no repeating pattern); its sha256."""
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    data = bytearray()
    counter = 0
    while len(data) < size:
        data += hashlib.sha256(block + counter.to_bytes(8, "big")).digest() * 2048
        counter += 1
    del data[size:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return sha256(bytes(data))


# -- a streaming, hashing server ---------------------------------------------------------------------


@dataclass
class Part:
    name: str | None
    filename: str | None
    content_type: str | None
    size: int
    sha256: str
    text: str | None  # the value of a small non-file field


@dataclass
class Received:
    method: str
    path: str  # raw, percent-encoded as sent
    headers: dict[str, str]  # lower-case names
    size: int
    sha256: str
    parts: list[Part] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class Script:
    """Answers of one path, by attempt: ``statuses`` (the last repeats) as (status, headers, text)."""

    statuses: list[tuple[int, dict[str, str], str]] = field(default_factory=lambda: [(201, {}, "")])
    attempts: int = 0


class Sink:
    def __init__(self) -> None:
        self.scripts: dict[str, Script] = {}
        self.received: list[Received] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *answers: tuple[int, dict[str, str], str]) -> Script:
        script = Script(list(answers))
        self.scripts[path] = script
        return script

    def for_path(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def __aenter__(self) -> Sink:
        app = web.Application(client_max_size=1024**4)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        headers = {k.lower(): v for k, v in request.headers.items()}
        received = Received(request.method, request.raw_path, headers, 0, "")
        hasher = hashlib.sha256()
        if request.content_type == "multipart/form-data":
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                assert isinstance(part, BodyPartReader)
                part_hash = hashlib.sha256()
                size = 0
                first = b""
                while chunk := await part.read_chunk(MiB):
                    part_hash.update(chunk)
                    size += len(chunk)
                    if len(first) < 100:
                        first += chunk[:100]
                filename = part.filename
                received.parts.append(
                    Part(
                        part.name,
                        filename,
                        part.headers.get("Content-Type"),
                        size,
                        part_hash.hexdigest(),
                        None if filename else first.decode(),
                    )
                )
        else:
            async for chunk in request.content.iter_chunked(MiB):
                hasher.update(chunk)
                received.size += len(chunk)
        received.sha256 = hasher.hexdigest()
        self.received.append(received)
        script = self.scripts.get(request.path) or Script()
        script.attempts += 1
        status, extra, text = script.statuses[min(script.attempts, len(script.statuses)) - 1]
        return web.Response(status=status, headers=extra, text=text)


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    async with Sink() as server:
        yield server


@pytest.fixture
async def other_sink() -> AsyncIterator[Sink]:
    async with Sink() as server:
        yield server


# -- a raw server that drops connections mid-body -----------------------------------------------------


class CuttingServer:
    """Reads ``cut_after`` body bytes of the first ``fail_times`` requests, then resets the
    connection; later requests are read whole (hashed) and answered 201."""

    def __init__(self, *, cut_after: int, fail_times: int) -> None:
        self.cut_after = cut_after
        self.fail_times = fail_times
        self.attempts = 0
        self.complete: list[tuple[int, str]] = []  # (size, sha256) of whole bodies
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> CuttingServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            assert match is not None
            length = int(match.group(1))
            self.attempts += 1
            if self.attempts <= self.fail_times:
                await reader.readexactly(min(self.cut_after, length))
                writer.transport.abort()
                return
            hasher = hashlib.sha256()
            remaining = length
            while remaining:
                chunk = await reader.read(min(MiB, remaining))
                if not chunk:
                    return
                hasher.update(chunk)
                remaining -= len(chunk)
            self.complete.append((length, hasher.hexdigest()))
            writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


# -- helpers -----------------------------------------------------------------------------------------


async def upload_with_fake_sleep(
    path: Path, url: str, **options: object
) -> tuple[asyncdl.Result, list[float], asyncdl.Progress]:
    """Upload through the internal Uploader, recording the retry waits instead of sleeping."""
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    settings = make_settings(**options)  # type: ignore[arg-type]
    progress = asyncdl.Progress()
    session = make_session(connections=1, stall_timeout_s=settings.timeout)
    try:
        uploader = Uploader(session, settings, progress=progress, sleep=sleep, rng=lambda: 0.0)
        result = await uploader.run(UploadItem(path, url, path.name))
    finally:
        await session.close()
    return result, waits, progress


async def run_cli(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asyncdl",
        "upload",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout=40)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# -- library: bodies and headers ---------------------------------------------------------------------


async def test_put_streams_the_file_with_content_length_and_headers(sink: Sink, tmp_path: Path) -> None:
    digest = write_file(tmp_path / "data.bin", 3 * MiB + 17)
    url = sink.url("/put/data.bin").replace("http://", "http://alice:s3cret@")

    result = await asyncdl.upload(tmp_path / "data.bin", url, headers={"X-Custom": "yes"})

    assert result.status is asyncdl.Status.OK
    assert (result.bytes, result.attempts, result.error) == (3 * MiB + 17, 1, None)
    assert "s3cret" not in result.url and "alice:***@" in result.url
    [got] = sink.received
    assert (got.method, got.path, got.size, got.sha256) == ("PUT", "/put/data.bin", 3 * MiB + 17, digest)
    assert got.header("Content-Length") == str(3 * MiB + 17)
    assert got.header("Transfer-Encoding") is None
    assert got.header("Content-Type") == "application/octet-stream"
    assert got.header("X-Custom") == "yes"
    assert got.header("Authorization") == "Basic YWxpY2U6czNjcmV0"  # alice:s3cret


async def test_post_sends_the_body_and_reports_progress(sink: Sink, tmp_path: Path) -> None:
    digest = write_file(tmp_path / "a.bin", 2 * MiB)
    progress = asyncdl.Progress()

    result = await asyncdl.upload(tmp_path / "a.bin", sink.url("/in"), method="post", progress=progress)

    assert result.ok
    [got] = sink.received
    assert (got.method, got.sha256) == ("POST", digest)
    snap = progress.snapshot()
    assert (snap.ok, snap.failed, snap.bytes_done, snap.active) == (1, 0, 2 * MiB, ())


async def test_multipart_streams_the_file_part_after_the_fields(sink: Sink, tmp_path: Path) -> None:
    digest = write_file(tmp_path / "photo.png", MiB + 5)

    result = await asyncdl.upload(
        tmp_path / "photo.png",
        sink.url("/form"),
        method="POST",
        form_field="upload",
        fields={"title": "holiday", "album": "2024"},
        headers=[("X-Token", "t1")],
    )

    assert result.ok, result.error
    [got] = sink.received
    content_type = got.header("Content-Type") or ""
    assert content_type.startswith("multipart/form-data; boundary=")
    length = got.header("Content-Length")
    assert length is not None and int(length) > MiB + 5
    assert got.header("Transfer-Encoding") is None
    assert got.header("X-Token") == "t1"
    assert [(p.name, p.text) for p in got.parts[:2]] == [("title", "holiday"), ("album", "2024")]
    file_part = got.parts[2]
    assert (file_part.name, file_part.filename) == ("upload", "photo.png")
    assert file_part.content_type == "image/png"
    assert (file_part.size, file_part.sha256) == (MiB + 5, digest)


async def test_a_sparse_64_mib_file_arrives_whole(sink: Sink, tmp_path: Path) -> None:
    """The body is streamed from disk; memory itself is measured by benchmarks/upload.py."""
    path = tmp_path / "sparse.img"
    with path.open("wb") as f:
        f.truncate(64 * MiB)
    expected = hashlib.sha256()
    zeros = bytes(MiB)
    for _ in range(64):
        expected.update(zeros)

    result = await asyncdl.upload(path, sink.url("/big"))

    assert result.ok and result.bytes == 64 * MiB
    [got] = sink.received
    assert (got.size, got.sha256) == (64 * MiB, expected.hexdigest())
    assert got.header("Content-Length") == str(64 * MiB)


async def test_an_empty_file_is_sent_with_content_length_0(sink: Sink, tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    result = await asyncdl.upload(tmp_path / "empty", sink.url("/empty"))
    assert result.ok
    [got] = sink.received
    assert (got.size, got.header("Content-Length")) == (0, "0")


# -- library: failures and retries -------------------------------------------------------------------


async def test_413_fails_at_once_with_the_status_and_the_answer(sink: Sink, tmp_path: Path) -> None:
    write_file(tmp_path / "f.bin", 100_000)
    sink.script("/limited", (413, {}, "Request entity too large:\n  the limit here is 64 KiB " + "x" * 500))

    result = await asyncdl.upload(tmp_path / "f.bin", sink.url("/limited"))

    assert result.status is asyncdl.Status.FAILED
    assert result.attempts == 1
    assert result.error is not None
    assert result.error.startswith("HTTP 413 Request Entity Too Large: Request entity too large: the limit")
    assert len(result.error) < 300  # the start of the answer, on one line
    assert "\n" not in result.error


async def test_500_is_retried_then_fails_with_the_status(sink: Sink, tmp_path: Path) -> None:
    digest = write_file(tmp_path / "f.bin", 300_000)
    sink.script("/broken", (500, {}, "database is down"))

    result, waits, _ = await upload_with_fake_sleep(tmp_path / "f.bin", sink.url("/broken"), retries=2)

    assert result.status is asyncdl.Status.FAILED
    assert result.attempts == 3 and len(waits) == 2
    assert result.error == "HTTP 500 Internal Server Error: database is down"
    assert [r.sha256 for r in sink.received] == [digest] * 3  # each attempt sent the whole file


async def test_503_with_retry_after_is_honoured_and_the_body_resent_whole(sink: Sink, tmp_path: Path) -> None:
    digest = write_file(tmp_path / "f.bin", 2 * MiB + 3)
    sink.script(
        "/busy", (503, {"Retry-After": "7"}, "busy"), (503, {"Retry-After": "2"}, "busy"), (201, {}, "")
    )

    result, waits, progress = await upload_with_fake_sleep(tmp_path / "f.bin", sink.url("/busy"))

    assert result.ok and result.attempts == 3 and result.bytes == 2 * MiB + 3
    assert waits == [7.0, 2.0]
    assert [(r.size, r.sha256) for r in sink.received] == [(2 * MiB + 3, digest)] * 3
    assert progress.snapshot().bytes_done == 3 * (2 * MiB + 3)  # bytes sent, re-sends included


async def test_a_connection_dropped_mid_body_is_retried_from_the_start(tmp_path: Path) -> None:
    size = 8 * MiB
    digest = write_file(tmp_path / "f.bin", size)
    async with CuttingServer(cut_after=MiB, fail_times=2) as server:
        result, waits, _ = await upload_with_fake_sleep(
            tmp_path / "f.bin", f"http://127.0.0.1:{server.port}/up/f.bin"
        )

    assert result.ok, result.error
    assert (result.attempts, len(waits)) == (3, 2)
    assert server.complete == [(size, digest)]


async def test_post_is_not_retried_without_retry_post(sink: Sink, tmp_path: Path) -> None:
    write_file(tmp_path / "f.bin", 1000)
    sink.script("/post", (503, {"Retry-After": "0"}, "try later"), (201, {}, ""))

    result, waits, _ = await upload_with_fake_sleep(tmp_path / "f.bin", sink.url("/post"), method="POST")

    assert result.status is asyncdl.Status.FAILED
    assert (result.attempts, waits, len(sink.received)) == (1, [], 1)
    assert result.error == "HTTP 503 Service Unavailable: try later"


async def test_post_is_retried_with_retry_post(sink: Sink, tmp_path: Path) -> None:
    digest = write_file(tmp_path / "f.bin", 1000)
    sink.script("/post", (503, {"Retry-After": "0"}, "try later"), (201, {}, ""))

    result, waits, _ = await upload_with_fake_sleep(
        tmp_path / "f.bin", sink.url("/post"), method="POST", retry_post=True
    )

    assert result.ok and result.attempts == 2 and waits == [0.0]
    assert [r.sha256 for r in sink.received] == [digest, digest]


async def test_an_unreadable_file_is_a_failed_result(sink: Sink, tmp_path: Path) -> None:
    result = await asyncdl.upload(tmp_path / "missing.bin", sink.url("/x"))
    assert result.status is asyncdl.Status.FAILED
    assert result.error is not None and "cannot read" in result.error and "missing.bin" in result.error
    assert result.attempts == 0 and sink.received == []


async def test_a_bad_method_or_url_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(asyncdl.UsageError):
        await asyncdl.upload(tmp_path / "f", "http://127.0.0.1:9/x", method="DELETE")
    with pytest.raises(asyncdl.UsageError):
        await asyncdl.upload(tmp_path / "f", "ftp://example.org/x")


# -- redirects -----------------------------------------------------------------------------------------


async def test_307_redirect_resends_the_whole_body(sink: Sink, tmp_path: Path) -> None:
    digest = write_file(tmp_path / "f.bin", 3 * MiB)
    sink.script("/old", (307, {"Location": "/new"}, ""))

    result = await asyncdl.upload(tmp_path / "f.bin", sink.url("/old"), headers={"X-Custom": "1"})

    assert result.ok
    old, new = sink.received
    assert (old.path, new.path) == ("/old", "/new")
    assert (new.method, new.size, new.sha256) == ("PUT", 3 * MiB, digest)
    assert new.header("X-Custom") == "1"  # same origin: user headers kept


async def test_303_after_post_continues_with_a_get_without_body(sink: Sink, tmp_path: Path) -> None:
    write_file(tmp_path / "f.bin", 1000)
    sink.script("/form", (303, {"Location": "/done"}, ""))
    sink.script("/done", (200, {}, "thanks"))

    result = await asyncdl.upload(tmp_path / "f.bin", sink.url("/form"), method="POST")

    assert result.ok
    post, get = sink.received
    assert (post.method, post.size) == ("POST", 1000)
    assert (get.method, get.path, get.size) == ("GET", "/done", 0)


async def test_a_cross_origin_redirect_drops_user_headers_and_credentials(
    sink: Sink, other_sink: Sink, tmp_path: Path
) -> None:
    digest = write_file(tmp_path / "f.bin", MiB)
    sink.script("/start", (308, {"Location": other_sink.url("/landed")}, ""))
    url = sink.url("/start").replace("http://", "http://bob:pw@")

    result = await asyncdl.upload(tmp_path / "f.bin", url, headers={"X-Secret": "42", "Cookie": "c=1"})

    assert result.ok
    [first] = sink.received
    assert first.header("X-Secret") == "42" and first.header("Authorization") is not None
    [landed] = other_sink.received
    assert landed.sha256 == digest
    assert landed.header("X-Secret") is None
    assert landed.header("Cookie") is None
    assert landed.header("Authorization") is None


async def test_a_redirect_loop_fails(sink: Sink, tmp_path: Path) -> None:
    write_file(tmp_path / "f.bin", 10)
    sink.script("/a", (307, {"Location": "/b"}, ""))
    sink.script("/b", (307, {"Location": "/a"}, ""))
    result = await asyncdl.upload(tmp_path / "f.bin", sink.url("/a"))
    assert result.status is asyncdl.Status.FAILED
    assert result.error is not None and "redirect loop" in result.error


# -- many files ----------------------------------------------------------------------------------------


def test_plan_puts_each_file_under_the_prefix_percent_encoded(tmp_path: Path) -> None:
    (tmp_path / "tree" / "sub dir").mkdir(parents=True)
    (tmp_path / "tree" / "b.txt").write_bytes(b"b")
    (tmp_path / "tree" / "sub dir" / "é#?.txt").write_bytes(b"c")
    (tmp_path / "single.bin").write_bytes(b"a")

    items = list(plan_uploads([tmp_path / "single.bin", tmp_path / "tree"], "http://h/up/"))

    assert [item.url for item in items] == [
        "http://h/up/single.bin",
        "http://h/up/tree/b.txt",
        "http://h/up/tree/sub%20dir/%C3%A9%23%3F.txt",
    ]
    assert all(item.problem is None for item in items)


async def test_upload_many_returns_results_in_walk_order(sink: Sink, tmp_path: Path) -> None:
    digests = {name: write_file(tmp_path / "d" / name, 1000 + i, seed=i) for i, name in enumerate("cab")}

    results = await asyncdl.upload_many([tmp_path / "d"], sink.url("/up/"), jobs=3)

    assert [r.url for r in results] == [sink.url(f"/up/d/{n}") for n in "abc"]
    assert all(r.ok for r in results)
    assert {r.path: r.sha256 for r in sink.received} == {f"/up/d/{n}": digests[n] for n in "abc"}


# -- command line --------------------------------------------------------------------------------------


async def test_cli_single_upload_exit_0_with_summary(sink: Sink, tmp_path: Path) -> None:
    digest = write_file(tmp_path / "f.bin", 500_000)

    code, _, err = await run_cli(str(tmp_path / "f.bin"), sink.url("/dest/f.bin"), "--header", "X-A: b")

    assert code == 0, err
    [got] = sink.received
    assert (got.path, got.sha256, got.header("X-A")) == ("/dest/f.bin", digest, "b")
    assert err.strip().splitlines()[-1].startswith("1 ok, 0 skipped, 0 failed")


async def test_cli_413_exits_1_with_the_status_in_the_message(sink: Sink, tmp_path: Path) -> None:
    write_file(tmp_path / "f.bin", 1000)
    sink.script("/small", (413, {}, "too big for us"))

    code, _, err = await run_cli("-q", str(tmp_path / "f.bin"), sink.url("/small"))

    assert code == 1
    assert f"FAILED {sink.url('/small')}: HTTP 413 Request Entity Too Large: too big for us" in err


async def test_cli_500_after_retries_exits_1(sink: Sink, tmp_path: Path) -> None:
    write_file(tmp_path / "f.bin", 1000)
    sink.script("/err", (500, {"Retry-After": "0"}, "oops"))

    code, _, err = await run_cli("-q", "--retries", "1", str(tmp_path / "f.bin"), sink.url("/err"))

    assert code == 1
    assert "HTTP 500 Internal Server Error: oops" in err
    assert len(sink.received) == 2


async def test_cli_multipart_post_with_fields(sink: Sink, tmp_path: Path) -> None:
    digest = write_file(tmp_path / "doc.txt", 70_000)
    args = ["-q", "--method", "POST", "--form", "file", "--field", "a=1", "--field", "b=x=y"]

    code, _, err = await run_cli(*args, str(tmp_path / "doc.txt"), sink.url("/form"))

    assert code == 0, err
    [got] = sink.received
    assert got.method == "POST"
    assert [(p.name, p.text) for p in got.parts[:2]] == [("a", "1"), ("b", "x=y")]
    assert (got.parts[2].filename, got.parts[2].sha256) == ("doc.txt", digest)


async def test_cli_stdin_is_streamed_chunked(sink: Sink) -> None:
    data = os.urandom(3 * MiB + 1)

    code, _, err = await run_cli("-q", "-", sink.url("/from-stdin"), stdin=data)

    assert code == 0, err
    [got] = sink.received
    assert (got.size, got.sha256) == (len(data), sha256(data))
    assert got.header("Transfer-Encoding") == "chunked"
    assert got.header("Content-Length") is None


@pytest.mark.parametrize("problem", ["missing", "dangling link", "directory to a URL"])
async def test_cli_single_unreadable_file_is_a_usage_error(sink: Sink, tmp_path: Path, problem: str) -> None:
    path = tmp_path / "file.bin"
    if problem == "dangling link":
        path.symlink_to(tmp_path / "nowhere")
    elif problem == "directory to a URL":
        path.mkdir()

    code, out, err = await run_cli(str(path), sink.url("/x"))

    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("asyncdl: "), err
    assert "Traceback" not in err
    assert sink.received == []


async def test_cli_usage_errors(sink: Sink, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    for args in (
        [str(tmp_path / "f")],  # no URL
        [str(tmp_path / "f"), "not a url"],
        [str(tmp_path / "f"), str(tmp_path / "f"), sink.url("/no-slash")],
        ["--method", "PATCH", str(tmp_path / "f"), sink.url("/x")],
        ["--field", "a=b", str(tmp_path / "f"), sink.url("/x")],  # a field without --form
        ["-", str(tmp_path / "f"), sink.url("/up/")],
    ):
        code, _, err = await run_cli(*args)
        assert code == 2, (args, err)
        assert len(err.strip().splitlines()) == 1, err
    assert sink.received == []


async def test_cli_directory_upload_with_jobs_and_report(sink: Sink, tmp_path: Path) -> None:
    tree = tmp_path / "photos"
    digests = {
        "photos/a.jpg": write_file(tree / "a.jpg", 300_000, seed=1),
        "photos/2024/b c.jpg": write_file(tree / "2024" / "b c.jpg", 200_000, seed=2),
        "photos/2024/d.jpg": write_file(tree / "2024" / "d.jpg", 0, seed=3),
    }
    (tree / "2024" / "broken.jpg").symlink_to(tmp_path / "gone")  # listed, but cannot be read
    extra = tmp_path / "notes.txt"
    digests["notes.txt"] = write_file(extra, 1234, seed=4)
    report = tmp_path / "report.jsonl"

    code, _, err = await run_cli(
        "-j", "3", "--report", str(report), str(tree), str(extra), sink.url("/backup/")
    )

    assert code == 1  # the unreadable file failed; the others still went up
    got = {r.path: r.sha256 for r in sink.received}
    assert got == {
        "/backup/photos/a.jpg": digests["photos/a.jpg"],
        "/backup/photos/2024/b%20c.jpg": digests["photos/2024/b c.jpg"],
        "/backup/photos/2024/d.jpg": digests["photos/2024/d.jpg"],
        "/backup/notes.txt": digests["notes.txt"],
    }
    records = [json.loads(line) for line in report.read_text().splitlines()]
    assert len(records) == 5
    by_url = {r["url"]: r for r in records}
    failed = by_url[sink.url("/backup/photos/2024/broken.jpg")]
    assert failed["status"] == "failed" and "cannot read" in failed["error"]
    assert failed["path"] == str(tree / "2024" / "broken.jpg")
    ok = by_url[sink.url("/backup/photos/a.jpg")]
    assert (ok["status"], ok["bytes"], ok["attempts"], ok["error"]) == ("ok", 300_000, 1, None)
    assert set(records[0]) == {"url", "path", "status", "bytes", "attempts", "error"}
    assert "FAILED " in err and "broken.jpg" in err
    assert err.strip().splitlines()[-1].startswith("4 ok, 0 skipped, 1 failed")


async def test_cli_password_is_never_printed(sink: Sink, tmp_path: Path) -> None:
    write_file(tmp_path / "f.bin", 10)
    sink.script("/deny", (403, {}, "no"))
    url = sink.url("/deny").replace("http://", "http://me:hunter2@")
    report = tmp_path / "r.jsonl"

    code, out, err = await run_cli("--report", str(report), str(tmp_path / "f.bin"), url)

    assert code == 1
    assert "hunter2" not in out + err + report.read_text()
    assert "me:***@" in err
