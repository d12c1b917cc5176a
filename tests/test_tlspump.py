"""Large HTTPS bodies are decrypted and written by a thread of their own (asyncdl/_tlspump.py).

Every test runs against a real HTTPS server on 127.0.0.1 (aiohttp.web with a certificate made by
openssl, trusted by the client for the test) and checks the bytes on disk; a spy on
``_tlspump.pump`` shows which path a download took, and one on ``_tlspump._pump`` which thread ran
it, so a test of the fast path fails when the download quietly falls back to aiohttp's reader.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from test_robustness import temp_files, visible
from test_splice import PumpSpy
from test_tls import self_signed  # noqa: F401 - a fixture

import asyncdl._tlspump as tlspump
from asyncdl import Downloader, Request, RetryPolicy, Status, download_many
from asyncdl._models import Checksum

pytestmark = pytest.mark.skipif(not tlspump.AVAILABLE, reason="needs poll, readv and pwrite")

MiB = 1024 * 1024
BIG = os.urandom(8 * MiB)
ETAG = '"v1"'


def fast(retries: int = 3) -> RetryPolicy:
    return RetryPolicy(retries=retries, backoff_base_s=0.001, backoff_max_s=0.002)


class Files:
    """An HTTPS server for one body with ranges; ``faults`` spoil the next answers, one each.

    A fault is ``(kind, n)``: ``n`` body bytes, then a TLS close (``close``), a TCP reset
    (``reset``) or silence until the server stops (``stall``).
    """

    def __init__(self, origin: str, body: bytes) -> None:
        self.url = f"{origin}/big.bin"
        self.body = body
        self.faults: list[tuple[str, int]] = []
        self.starts: list[int | None] = []  # the Range start of each request (None: no Range)
        self.peers: list[object] = []  # the client's address of each request: its connection
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        asked = request.headers.get("Range")
        first, _, last = asked[len("bytes=") :].partition("-") if asked else ("0", "", "")
        start = int(first)
        end = int(last) + 1 if last else len(self.body)
        self.starts.append(start if asked else None)
        self.peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        data = self.body[start:end]
        headers = {"ETag": ETAG, "Accept-Ranges": "bytes", "Content-Length": str(len(data))}
        if asked:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(self.body)}"
        response = web.StreamResponse(status=206 if asked else 200, headers=headers)
        await response.prepare(request)
        fault = self.faults.pop(0) if self.faults else None
        if fault is None:
            await response.write(data)
            await response.write_eof()
            return response
        kind, after = fault
        await response.write(data[:after])
        transport = request.transport
        assert transport is not None
        if kind == "stall":
            await self.release.wait()
        elif kind == "close":
            transport.close()
        else:
            transport.abort()
        return response


@asynccontextmanager
async def https_files(context: ssl.SSLContext, body: bytes = BIG) -> AsyncIterator[Files]:
    files: Files | None = None

    async def handler(request: web.Request) -> web.StreamResponse:
        assert files is not None
        return await files.handle(request)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    files = Files(f"https://127.0.0.1:{port}", body)
    try:
        yield files
    finally:
        files.release.set()
        await runner.cleanup()


@pytest.fixture
def trusted(self_signed: ssl.SSLContext) -> ssl.SSLContext:  # noqa: F811
    """The server context of ``self_signed``; ``options(dest)`` makes the client trust it."""
    return self_signed


def options(dest: Path, **more: Any) -> dict[str, Any]:
    """Download options: fast retries, and the test certificate (beside ``dest``) as the CA."""
    return {"retry_policy": fast(), "ca_certificate": dest.parent / "cert.pem", **more}


class Spy(PumpSpy):
    """The PumpSpy of test_splice on ``_tlspump.pump``; it also names the threads that ran the pump."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(monkeypatch, tlspump)
        self.threads: list[str] = []
        real_thread_pump = tlspump._pump

        def thread_pump(*args: Any, **kwargs: Any) -> int:
            self.threads.append(threading.current_thread().name)
            return real_thread_pump(*args, **kwargs)

        monkeypatch.setattr(tlspump, "_pump", thread_pump)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    return Spy(monkeypatch)


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """The download directory (beside the certificate files in ``tmp_path``)."""
    return tmp_path / "out"


def no_thread_left() -> bool:
    """No pump thread (the pump waits for its result; the thread may still be returning from its
    function, hence the join) and, once they see the abandon, no hashing thread."""
    for thread in threading.enumerate():
        if thread.name in {"asyncdl-tls", "asyncdl-hash"}:
            thread.join(timeout=10)
    return not any(t.name in {"asyncdl-tls", "asyncdl-hash"} for t in threading.enumerate())


@pytest.mark.parametrize("checked", [False, True], ids=["plain", "with-checksum"])
async def test_a_large_https_body_is_decrypted_in_a_thread_byte_exact(
    trusted: ssl.SSLContext, dest: Path, spy: Spy, checked: bool
) -> None:
    checksum = Checksum("sha256", hashlib.sha256(BIG).hexdigest()) if checked else None
    async with https_files(trusted) as files:
        (result,) = await download_many([Request(files.url, checksum=checksum)], dest, **options(dest))
    assert result.status is Status.OK and result.attempts == 1, result.error
    assert result.bytes == len(BIG)
    assert (dest / "big.bin").read_bytes() == BIG
    assert spy.calls == 1 and 0 < spy.moved <= len(BIG)
    assert spy.threads == ["asyncdl-tls"]  # not the event loop's thread
    assert visible(dest) == ["big.bin"] and temp_files(dest) == []
    assert no_thread_left()


async def test_a_small_https_body_stays_with_aiohttp(trusted: ssl.SSLContext, dest: Path, spy: Spy) -> None:
    async with https_files(trusted, BIG[:MiB]) as files:
        (result,) = await download_many([files.url], dest, **options(dest))
    assert result.status is Status.OK, result.error
    assert (dest / "big.bin").read_bytes() == BIG[:MiB]
    assert spy.calls == 0  # a thread and a new connection cost more than they save


async def test_an_unexpected_tls_state_keeps_aiohttp_s_reader(
    trusted: ssl.SSLContext, dest: Path, spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another event loop or asyncio version (no SSLProtocol the pump knows): the normal reader."""
    monkeypatch.setattr(tlspump, "_ssl_protocol", lambda transport: None)
    async with https_files(trusted) as files:
        (result,) = await download_many([files.url], dest, **options(dest))
    assert result.status is Status.OK and result.attempts == 1, result.error
    assert (dest / "big.bin").read_bytes() == BIG
    assert spy.calls == 0


@pytest.mark.parametrize("kind", ["close", "reset"])
async def test_a_broken_https_body_keeps_every_byte_and_resumes(
    trusted: ssl.SSLContext, dest: Path, spy: Spy, kind: str
) -> None:
    async with https_files(trusted) as files:
        files.faults.append((kind, 5 * MiB))
        (result,) = await download_many([files.url], dest, **options(dest))
    assert result.status is Status.OK and result.attempts == 2, result.error
    assert (dest / "big.bin").read_bytes() == BIG
    first, second = files.starts
    assert first is None and second is not None
    if kind == "close":
        assert second == 5 * MiB  # nothing received before the TLS close was lost
    else:
        # A reset also drops what the server's kernel had not sent yet.
        assert 2 * MiB < second <= 5 * MiB
    assert spy.calls == 2  # the 3 MiB rest goes through the thread too
    assert no_thread_left()


async def test_a_stalled_https_body_is_cut_by_the_timeout(
    trusted: ssl.SSLContext, dest: Path, spy: Spy
) -> None:
    started = time.monotonic()
    async with https_files(trusted) as files:
        files.faults.append(("stall", 5 * MiB))
        (result,) = await download_many([files.url], dest, timeout=0.3, **options(dest))
    assert result.status is Status.OK and result.attempts == 2, result.error
    assert time.monotonic() - started < 10
    assert files.starts[1] == 5 * MiB
    assert (dest / "big.bin").read_bytes() == BIG
    assert spy.calls == 2
    assert no_thread_left()


async def test_a_cancelled_https_pump_stops_its_thread_and_keeps_the_bytes(
    trusted: ssl.SSLContext, dest: Path, spy: Spy
) -> None:
    async with https_files(trusted) as files:
        files.faults.append(("stall", 5 * MiB))
        reached = asyncio.Event()
        spy.at = (MiB, reached.set)  # well into the thread's part
        async with Downloader(dest, timeout=60, **options(dest)) as downloader:
            task = asyncio.ensure_future(downloader.download(files.url))
            await asyncio.wait_for(reached.wait(), 30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert no_thread_left()
        (partial,) = temp_files(dest)
        kept = partial.stat().st_size
        assert kept >= MiB
        assert partial.read_bytes() == BIG[:kept]
        # The next run resumes after the kept bytes.
        (result,) = await download_many([files.url], dest, **options(dest))
    assert result.status is Status.OK, result.error
    assert files.starts[-1] == kept
    assert (dest / "big.bin").read_bytes() == BIG


async def test_the_pieces_of_a_segmented_https_download_go_through_the_thread(
    trusted: ssl.SSLContext, dest: Path, spy: Spy
) -> None:
    async with https_files(trusted) as files:
        (result,) = await download_many([files.url], dest, connections=2, **options(dest))
    assert result.status is Status.OK, result.error
    assert (dest / "big.bin").read_bytes() == BIG
    assert spy.calls == 2  # both 4 MiB pieces
    assert no_thread_left()


async def test_the_connection_of_a_pumped_body_is_not_reused(
    trusted: ssl.SSLContext, dest: Path, spy: Spy
) -> None:
    """aiohttp's parser never saw the body the thread read: that connection must not serve another request."""
    async with https_files(trusted) as files, Downloader(dest, jobs=1, **options(dest)) as downloader:
        first = await downloader.download(files.url, out="first.bin")
        second = await downloader.download(files.url, out="second.bin")
    assert first.status is Status.OK and second.status is Status.OK, (first.error, second.error)
    assert spy.calls == 2
    assert (dest / "first.bin").read_bytes() == BIG == (dest / "second.bin").read_bytes()
    assert len(files.peers) == 2 and files.peers[0] != files.peers[1]  # a new connection for the second
