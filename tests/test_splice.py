"""Large plain-HTTP bodies go from the socket to the file by splice(2) (asyncdl/_splice.py).

Every test runs against a real server on 127.0.0.1 and checks the bytes on disk; a spy on
``_splice.pump`` shows which path a download took, so a test of the splice path fails when the
download quietly falls back to aiohttp's reader.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from faultserver import FaultServer, RecordedRequest
from multidict import CIMultiDict
from test_robustness import mounted_tmpfs, temp_files, visible
from test_tls import self_signed, tls_server  # noqa: F401 - self_signed is a fixture

import asyncdl._exceptions as asyncdl_errors
import asyncdl._splice as splice_module
from asyncdl import Downloader, Request, RetryPolicy, Status, download_many
from asyncdl._files import TempFile
from asyncdl._http import Body, make_session
from asyncdl._models import Checksum
from asyncdl._segments import PIECE_SIZE

pytestmark = pytest.mark.skipif(not splice_module.AVAILABLE, reason="os.splice is Linux-only")

MiB = 1024 * 1024
BIG = os.urandom(8 * MiB)


def fast(retries: int = 3) -> RetryPolicy:
    return RetryPolicy(retries=retries, backoff_base_s=0.001, backoff_max_s=0.002)


def range_start(request: RecordedRequest) -> int | None:
    value = request.header("Range")
    return None if value is None else int(value[len("bytes=") :].rstrip("-"))


class PumpSpy:
    """Wraps ``module.pump``: counts its calls and the bytes it moved; can act at a byte count."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, module: Any = splice_module) -> None:
        self.calls = 0
        self.moved = 0
        self.at: tuple[int, Callable[[], None]] | None = None
        real = module.pump

        async def pump(*args: Any, on_bytes: Callable[[int], None], **kwargs: Any) -> int:
            self.calls += 1

            def counted(n: int) -> None:
                self.moved += n
                if self.at is not None and self.moved >= self.at[0]:
                    _, act = self.at
                    self.at = None
                    act()
                on_bytes(n)

            return await real(*args, on_bytes=counted, **kwargs)

        monkeypatch.setattr(module, "pump", pump)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> PumpSpy:
    return PumpSpy(monkeypatch)


def splice_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name in {"asyncdl-splice", "asyncdl-hash"}]


def no_thread_left() -> bool:
    """No splice thread and, once they see the abandon, no hashing thread.

    The pump waits for its thread's result; the thread may still be returning from its function
    at that moment (under load), hence the join.
    """
    for thread in splice_threads():
        thread.join(timeout=10)
    return splice_threads() == []


async def test_a_large_body_is_spliced_byte_exact(
    fault_server: FaultServer, tmp_path: Path, spy: PumpSpy
) -> None:
    fault_server.route("/big.bin", body=BIG)
    fault_server.route("/small.bin", body=BIG[:MiB])
    results = await download_many(
        [fault_server.url("/big.bin"), fault_server.url("/small.bin")], tmp_path, retry_policy=fast()
    )
    assert [r.status for r in results] == [Status.OK, Status.OK], [r.error for r in results]
    assert results[0].bytes == len(BIG) and results[1].bytes == MiB
    assert (tmp_path / "big.bin").read_bytes() == BIG
    assert (tmp_path / "small.bin").read_bytes() == BIG[:MiB]
    assert spy.calls == 1  # the big body only: a small one is not worth a thread and a connection
    assert 0 < spy.moved <= len(BIG)  # the rest after what aiohttp had buffered
    assert visible(tmp_path) == ["big.bin", "small.bin"] and temp_files(tmp_path) == []
    assert no_thread_left()


async def test_the_bytes_aiohttp_buffered_while_paused_come_first(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    """aiohttp pauses a full buffer and keeps unparsed input in its parser: detach takes all of it."""
    fault_server.route("/big.bin", body=BIG)
    out = tmp_path / "out"
    async with (
        make_session(connections=1, stall_timeout_s=10) as session,
        session.get(fault_server.url("/big.bin")) as response,
    ):
        protocol: Any = response.connection.protocol  # type: ignore[union-attr]
        for _ in range(100_000):  # each pass of the loop lets the client read a little more
            if protocol._reading_paused:
                break
            await asyncio.sleep(0)
        assert protocol._reading_paused, "aiohttp never paused: the case under test did not happen"
        buffered, sock = splice_module.detach_socket(response)
        assert sock is not None
        assert 0 < len(buffered) < len(BIG)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, buffered)
            moved = await splice_module.pump(
                sock,
                fd,
                splice_module.Pipes(),
                offset=len(buffered),
                count=len(BIG) - len(buffered),
                stall_timeout=10,
                on_bytes=lambda n: None,
                url="http://x/",
            )
        finally:
            os.close(fd)
        response.close()
    assert moved == len(BIG) - len(buffered)
    assert out.read_bytes() == BIG


async def test_a_body_broken_before_the_splice_starts_is_left_to_aiohttp_s_reader(
    fault_server: FaultServer,
) -> None:
    """The connection broke before detach: the normal reader salvages the bytes and raises."""
    fault_server.route("/big.bin", body=BIG, reset_after=1000)
    async with (
        make_session(connections=1, stall_timeout_s=10) as session,
        session.get(fault_server.url("/big.bin")) as response,
    ):
        for _ in range(100_000):
            if response.content.exception() is not None:
                break
            await asyncio.sleep(0)
        assert response.content.exception() is not None, "the reset never reached aiohttp"
        body = Body(response, url=fault_server.url("/big.bin"), requested_offset=0)
        assert body.detach() == (b"", None)
        received = bytearray()
        with pytest.raises(asyncdl_errors.TransientError):
            async for chunk in body.chunks():
                received.extend(chunk)
    assert bytes(received) == BIG[:1000]


def test_an_error_stored_while_draining_leaves_the_rest_to_aiohttp_s_reader() -> None:
    """Draining lets aiohttp parse what it held back, which may store an error: no raw exception escapes."""

    class Content:
        def __init__(self) -> None:
            self.reads = [b"first bytes"]

        def exception(self) -> BaseException | None:
            return None

        def read_nowait(self, n: int) -> bytes:
            if self.reads:
                return self.reads.pop()
            raise aiohttp.ClientPayloadError("broken in the held-back bytes")

    class Response:
        content = Content()

    assert splice_module.detach_socket(Response()) == (b"first bytes", None)


async def test_a_tls_body_is_read_by_aiohttp(self_signed: ssl.SSLContext) -> None:  # noqa: F811
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=BIG)

    async with (
        tls_server(self_signed, handler) as origin,
        aiohttp.ClientSession() as session,
        session.get(f"{origin}/big", ssl=False) as response,
    ):
        buffered, sock = splice_module.detach_socket(response)
        assert sock is None  # the socket carries TLS records, not the body
        rest = await response.content.read()
    assert buffered + rest == BIG


@pytest.mark.parametrize(
    "fault",
    [{"reset_after": 5 * MiB}, {"truncate_after": 5 * MiB}],
    ids=["reset", "truncated"],
)
async def test_a_broken_spliced_body_keeps_every_byte_and_resumes(
    fault_server: FaultServer, tmp_path: Path, spy: PumpSpy, fault: dict[str, int]
) -> None:
    fault_server.route("/big.bin", body=BIG, fail_times=1, **fault)
    result = (await download_many([fault_server.url("/big.bin")], tmp_path, retry_policy=fast()))[0]
    assert result.status is Status.OK, result.error
    assert result.attempts == 2
    assert (tmp_path / "big.bin").read_bytes() == BIG
    first, second = fault_server.requests_for("/big.bin")
    assert range_start(first) is None
    if "truncate_after" in fault:
        assert range_start(second) == 5 * MiB  # nothing received before the break was lost
    else:
        # A reset also drops what the server's kernel had not sent yet: the client resumes after
        # what reached it, well into the spliced part.
        assert 2 * MiB < (range_start(second) or 0) <= 5 * MiB
    assert spy.calls == 2  # the 3 MiB rest is spliced too
    assert temp_files(tmp_path) == []


async def test_a_stalled_spliced_body_is_cut_by_the_timeout(
    fault_server: FaultServer, tmp_path: Path, spy: PumpSpy
) -> None:
    fault_server.route("/big.bin", body=BIG, stall_after=5 * MiB, fail_times=1)
    started = time.monotonic()
    result = (
        await download_many([fault_server.url("/big.bin")], tmp_path, timeout=0.3, retry_policy=fast())
    )[0]
    assert result.status is Status.OK, result.error
    assert result.attempts == 2
    assert time.monotonic() - started < 10
    assert (tmp_path / "big.bin").read_bytes() == BIG
    assert range_start(fault_server.requests_for("/big.bin")[1]) == 5 * MiB
    assert spy.calls >= 1


async def test_a_server_that_always_stalls_fails_as_a_stall(
    fault_server: FaultServer, tmp_path: Path, spy: PumpSpy
) -> None:
    fault_server.route("/big.bin", body=BIG, stall_after=3 * MiB)
    result = (
        await download_many([fault_server.url("/big.bin")], tmp_path, timeout=0.2, retry_policy=fast(1))
    )[0]
    assert result.status is Status.FAILED
    assert "stalled" in (result.error or ""), result.error
    assert spy.calls == 2
    # Each attempt got 3 MiB before the stall; all of it is kept for the next run.
    (partial,) = temp_files(tmp_path)
    assert partial.read_bytes() == BIG[: 6 * MiB]
    assert no_thread_left()


async def test_a_body_longer_than_its_content_length_is_cut_at_the_length(
    fault_server: FaultServer, tmp_path: Path, spy: PumpSpy
) -> None:
    fault_server.route("/big.bin", body=BIG, content_length=6 * MiB)
    result = (await download_many([fault_server.url("/big.bin")], tmp_path, retry_policy=fast()))[0]
    assert result.status is Status.OK and result.bytes == 6 * MiB
    assert (tmp_path / "big.bin").read_bytes() == BIG[: 6 * MiB]
    assert spy.calls == 1


async def test_a_chunked_body_that_also_claims_a_length_is_never_spliced(
    fault_server: FaultServer, tmp_path: Path, spy: PumpSpy
) -> None:
    body = BIG[: 3 * MiB]
    framed = b"".join(
        b"%x\r\n%s\r\n" % (64 * 1024, body[i : i + 64 * 1024]) for i in range(0, len(body), 64 * 1024)
    )
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(body)
    fault_server.route("/both", raw=head + framed + b"0\r\n\r\n")
    result = (await download_many([fault_server.url("/both")], tmp_path, retry_policy=fast(1)))[0]
    assert spy.calls == 0  # the socket carries chunk framing, not the body
    if result.status is Status.OK:
        assert (tmp_path / "both").read_bytes() == body
    else:
        assert visible(tmp_path) == []


@pytest.mark.parametrize(
    ("headers", "candidate"),
    [
        ({"Content-Length": str(3 * MiB)}, True),
        ({"Content-Length": str(3 * MiB), "Content-Encoding": "identity"}, True),
        ({"Content-Length": str(MiB)}, False),  # small: aiohttp's reader
        ({"Content-Length": str(3 * MiB), "Transfer-Encoding": "chunked"}, False),
        ({"Content-Length": str(3 * MiB), "Content-Encoding": "gzip"}, False),
        ({}, False),  # no length: read until the server closes
    ],
)
def test_which_bodies_may_be_spliced(headers: dict[str, str], candidate: bool) -> None:
    class Answer:
        status = 200

    answer = Answer()
    answer.headers = CIMultiDict(headers)  # type: ignore[attr-defined]
    assert Body(answer, url="http://x/", requested_offset=0).splice_candidate is candidate  # type: ignore[arg-type]


async def test_out_of_descriptors_keeps_aiohttp_s_reader(
    fault_server: FaultServer, tmp_path: Path, spy: PumpSpy, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_descriptors(**_options: bool) -> splice_module.Pipes:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(splice_module, "Pipes", no_descriptors)
    fault_server.route("/big.bin", body=BIG)
    (result,) = await download_many([fault_server.url("/big.bin")], tmp_path, retry_policy=fast())
    assert result.status is Status.OK and result.attempts == 1, result.error
    assert (tmp_path / "big.bin").read_bytes() == BIG
    assert spy.calls == 0


@pytest.mark.parametrize("thread", ["asyncdl-splice", "asyncdl-hash"])
async def test_no_thread_for_the_splice_is_a_retried_failure(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, thread: str
) -> None:
    real_start = threading.Thread.start
    refused: list[str] = []

    def start_once_refused(self: threading.Thread) -> None:
        if self.name == thread and not refused:
            refused.append(self.name)
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start_once_refused)
    fault_server.route("/big.bin", body=BIG)
    descriptors = len(os.listdir("/proc/self/fd"))
    checksum = Checksum("sha256", hashlib.sha256(BIG).hexdigest()) if thread == "asyncdl-hash" else None
    (result,) = await download_many(
        [Request(fault_server.url("/big.bin"), checksum=checksum)], tmp_path, retry_policy=fast()
    )
    assert refused and result.status is Status.OK and result.attempts == 2, result.error
    assert (tmp_path / "big.bin").read_bytes() == BIG
    assert len(os.listdir("/proc/self/fd")) <= descriptors  # the pipes of the refused splice were closed


async def test_a_failure_between_the_hand_over_and_the_splice_closes_the_pipes(
    fault_server: FaultServer, tmp_path: Path, spy: PumpSpy, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_file(self: TempFile) -> int:
        raise asyncdl_errors.StorageError("cannot write: injected")

    monkeypatch.setattr(TempFile, "raw_fd", no_file)
    fault_server.route("/big.bin", body=BIG)
    descriptors = len(os.listdir("/proc/self/fd"))
    (result,) = await download_many([fault_server.url("/big.bin")], tmp_path, retry_policy=fast())
    assert result.status is Status.FAILED and "injected" in (result.error or "")
    assert spy.calls == 0
    assert len(os.listdir("/proc/self/fd")) <= descriptors


@pytest.mark.parametrize("checked", [False, True], ids=["plain", "with-checksum"])
async def test_a_cancelled_splice_stops_its_thread_and_keeps_the_bytes(
    fault_server: FaultServer, tmp_path: Path, spy: PumpSpy, checked: bool
) -> None:
    fault_server.route("/big.bin", body=BIG, stall_after=5 * MiB)
    reached = asyncio.Event()
    spy.at = (MiB, reached.set)  # well into the spliced part
    checksum = Checksum("sha256", hashlib.sha256(BIG).hexdigest()) if checked else None
    async with Downloader(tmp_path, timeout=60, retry_policy=fast()) as downloader:
        task = asyncio.ensure_future(downloader.download(fault_server.url("/big.bin"), checksum=checksum))
        await asyncio.wait_for(reached.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert no_thread_left()
    (partial,) = temp_files(tmp_path)
    kept = partial.stat().st_size
    assert kept >= MiB
    assert partial.read_bytes() == BIG[:kept]
    # The next run resumes after the kept bytes.
    fault_server.route("/big.bin", body=BIG)
    result = (await download_many([fault_server.url("/big.bin")], tmp_path, retry_policy=fast()))[0]
    assert result.status is Status.OK, result.error
    assert range_start(fault_server.requests_for("/big.bin")[-1]) == kept
    assert (tmp_path / "big.bin").read_bytes() == BIG


async def test_a_full_disk_during_a_splice_fails_that_download_only(
    fault_server: FaultServer, tmp_path: Path, spy: PumpSpy
) -> None:
    with mounted_tmpfs(tmp_path / "small", "size=6m") as dest:
        fault_server.route("/a", body=b"a" * 1000)
        fault_server.route("/big", body=BIG)
        results = await download_many(
            [fault_server.url("/a"), fault_server.url("/big")], dest, jobs=1, retry_policy=fast()
        )
        assert [r.status for r in results] == [Status.OK, Status.FAILED]
        assert "no space left on device" in (results[1].error or ""), results[1].error
        assert results[1].attempts == 1  # no retry can help
        assert spy.calls == 1
        assert visible(dest) == ["a"]


async def test_a_rate_limit_keeps_aiohttp_s_reader(
    fault_server: FaultServer, tmp_path: Path, spy: PumpSpy
) -> None:
    fault_server.route("/big.bin", body=BIG)
    (limited,) = await download_many(
        [fault_server.url("/big.bin")], tmp_path, limit_rate=1024 * MiB, retry_policy=fast()
    )
    assert limited.status is Status.OK
    assert (tmp_path / "big.bin").read_bytes() == BIG
    assert spy.calls == 0  # the limiter takes its tokens chunk by chunk, on the event loop


async def test_a_spliced_body_is_checked_against_its_checksum(
    fault_server: FaultServer, tmp_path: Path, spy: PumpSpy
) -> None:
    fault_server.route("/good.bin", body=BIG)
    fault_server.route("/bad.bin", body=BIG)
    good = Request(
        fault_server.url("/good.bin"), checksum=Checksum("sha256", hashlib.sha256(BIG).hexdigest())
    )
    bad = Request(
        fault_server.url("/bad.bin"), checksum=Checksum("sha256", hashlib.sha256(b"other").hexdigest())
    )
    ok, mismatched = await download_many([good, bad], tmp_path, retry_policy=fast(0))
    assert spy.calls == 2
    assert ok.status is Status.OK, ok.error
    assert (tmp_path / "good.bin").read_bytes() == BIG
    assert mismatched.status is Status.FAILED
    assert "mismatch" in (mismatched.error or ""), mismatched.error
    assert visible(tmp_path) == ["good.bin"] and temp_files(tmp_path) == []


async def test_a_resumed_spliced_body_is_checked_whole(
    fault_server: FaultServer, tmp_path: Path, spy: PumpSpy
) -> None:
    """The second attempt splices only the rest: the checksum still covers the first attempt's bytes."""
    fault_server.route("/big.bin", body=BIG, truncate_after=3 * MiB, fail_times=1)
    checked = Request(
        fault_server.url("/big.bin"), checksum=Checksum("sha256", hashlib.sha256(BIG).hexdigest())
    )
    (result,) = await download_many([checked], tmp_path, retry_policy=fast())
    assert result.status is Status.OK and result.attempts == 2, result.error
    assert range_start(fault_server.requests_for("/big.bin")[1]) == 3 * MiB
    assert spy.calls == 2
    assert (tmp_path / "big.bin").read_bytes() == BIG


def test_a_failed_write_is_told_apart_from_the_socket(tmp_path: Path) -> None:
    left, right = socket.socketpair()
    (tmp_path / "ro").write_bytes(b"")
    read_only = os.open(tmp_path / "ro", os.O_RDONLY)
    pipes = splice_module.Pipes()
    try:
        left.sendall(b"x" * 1000)
        right.setblocking(False)
        with pytest.raises(splice_module.WriteFailed) as caught:
            splice_module._pump(
                right.fileno(), read_only, 0, 1000, stall_timeout=5, pipes=pipes, report=lambda n: None
            )
        assert isinstance(caught.value.__cause__, OSError)
    finally:
        pipes.close()
        os.close(read_only)
        left.close()
        right.close()


def test_a_file_that_cannot_take_a_splice_gets_the_bytes_copied(tmp_path: Path) -> None:
    """splice(2) into an O_APPEND file fails with EINVAL, as on file systems without splice support."""
    data = os.urandom(300_000)
    left, right = socket.socketpair()
    out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    pipes = splice_module.Pipes()
    reported: list[int] = []
    try:
        sender = threading.Thread(target=left.sendall, args=(data,))
        sender.start()
        right.setblocking(False)
        moved = splice_module._pump(
            right.fileno(), out, 0, len(data), stall_timeout=5, pipes=pipes, report=reported.append
        )
        sender.join()
    finally:
        pipes.close()
        os.close(out)
        left.close()
        right.close()
    assert moved == len(data) and reported[-1] == len(data)
    assert (tmp_path / "out").read_bytes() == data


def test_the_bytes_on_disk_are_reported_before_the_pump_waits() -> None:
    """A body that stalls shows every byte it wrote (progress, a worker's stats) while it waits."""
    left, right = socket.socketpair()
    pipes = splice_module.Pipes()
    all_reported = threading.Event()
    out = os.open("/dev/null", os.O_WRONLY)

    def report(total: int) -> None:
        if total == 100_000:
            all_reported.set()

    def run() -> None:
        splice_module._pump(right.fileno(), out, 0, 200_000, stall_timeout=60, pipes=pipes, report=report)

    pump = threading.Thread(target=run)
    try:
        right.setblocking(False)
        left.sendall(os.urandom(100_000))
        pump.start()
        assert all_reported.wait(timeout=10)  # long before the 60 s stall timeout
    finally:
        pipes.request_stop()
        pump.join(timeout=10)
        assert not pump.is_alive()
        pipes.close()
        os.close(out)
        left.close()
        right.close()


# --- the pieces of a segmented download (-x) ---


async def test_the_pieces_of_a_segmented_download_are_spliced(
    fault_server: FaultServer, tmp_path: Path, spy: PumpSpy
) -> None:
    body = BIG + BIG[: PIECE_SIZE + 12345]  # 3 pieces of 4 MiB and a short last one (12,345 bytes)
    fault_server.route("/x.bin", body=body)
    (result,) = await download_many(
        [fault_server.url("/x.bin")], tmp_path, connections=3, retry_policy=fast()
    )
    assert result.status is Status.OK, result.error
    assert result.bytes == len(body)
    assert (tmp_path / "x.bin").read_bytes() == body
    assert spy.calls == 3  # the last piece is too small to be worth it
    assert len(fault_server.requests_for("/x.bin")) == 4
    assert no_thread_left()


async def test_a_spliced_piece_that_breaks_is_fetched_again(
    fault_server: FaultServer, tmp_path: Path, spy: PumpSpy
) -> None:
    # The first two answers are reset after 3 MiB: the first piece (the attempt fails and the next
    # one resumes the pre-sized file), then one of the later pieces (put back in the queue).
    fault_server.route("/x.bin", body=BIG + BIG, reset_after=3 * MiB, fail_times=2)
    (result,) = await download_many(
        [fault_server.url("/x.bin")], tmp_path, connections=2, retry_policy=fast()
    )
    assert result.status is Status.OK, result.error
    assert (tmp_path / "x.bin").read_bytes() == BIG + BIG
    assert len(fault_server.requests_for("/x.bin")) == 4 + 2
    # Every piece that arrived whole was spliced; a broken one, when the reset came before the
    # hand-over, went through aiohttp's reader.
    assert 4 <= spy.calls <= 4 + 2


async def test_a_rate_limit_keeps_the_pieces_in_python(
    fault_server: FaultServer, tmp_path: Path, spy: PumpSpy
) -> None:
    fault_server.route("/x.bin", body=BIG)
    (result,) = await download_many(
        [fault_server.url("/x.bin")], tmp_path, connections=2, limit_rate=1024 * MiB, retry_policy=fast()
    )
    assert result.status is Status.OK and (tmp_path / "x.bin").read_bytes() == BIG
    assert spy.calls == 0
