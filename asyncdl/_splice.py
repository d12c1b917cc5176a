"""The rest of a large plain-HTTP body moved from the socket to the file by the kernel (Linux splice).

Reading a body through aiohttp costs two copies per byte in this process (socket to a Python bytes
object, bytes object to the file) and a pass of the event loop per chunk. With ``splice(2)`` the
kernel moves the socket's pages into a pipe and from the pipe into the file's page cache: one copy,
no Python per byte. For one 1 GiB file on a loopback server this took the transfer from about
0.9 s to about 0.35 s (see benchmarks/README.md).

How: once aiohttp has parsed the headers, ``detach_socket`` drains the body bytes aiohttp has already
buffered and stops aiohttp reading the socket (its own flow control API). ``pump`` then runs in a
thread of its own: it splices exactly the remaining Content-Length bytes, at the file offsets that
follow, waiting with ``poll`` (the stall timeout applies to every wait) and stopping early when the
download is cancelled. The connection is closed afterwards, never reused: aiohttp's parser still
expects the body it did not see.

Only when nothing can go wrong by skipping aiohttp's reader: plain HTTP (no TLS), an identity body
of known length, no rate limit to obey (a checksum is computed from the file as it grows). Anything
unexpected in aiohttp's state (a future version that keeps bytes elsewhere) means the normal reader
is used.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import fcntl
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any

from ._exceptions import StallError
from ._urls import redact_url

AVAILABLE = hasattr(os, "splice")
# Bodies with less than this to come are read by aiohttp: a thread and a new connection per body
# cost more than the copies they save (1,000 x 1 MiB with splice: 2.42 s and 2.06 s of CPU, against
# 1.99 s and 1.39 s without; small bodies are written whole in one thread hop, see _files).
MIN_REST = 2 * 1024 * 1024
# The pipe between socket and file: one splice call moves up to this much.
PIPE_SIZE = 1024 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
# What splice into a file answers when the file system (or an O_APPEND file) cannot take it.
_CANNOT_SPLICE_TO_FILE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})
# Progress is passed to the event loop at most this often (bytes, seconds).
REPORT_BYTES = 4 * 1024 * 1024
REPORT_SECONDS = 0.2


def detach_socket(response: Any) -> tuple[bytes, int | None]:
    """Take the buffered bytes of an aiohttp response's body and, when possible, the socket for the rest.

    Returns ``(buffered, fd)``. With ``fd`` None nothing was changed for the bytes still to come:
    read them from ``response.content`` as usual (the buffered bytes are already taken).
    """
    buffered, transport = stop_reader(response, lambda t: t.get_extra_info("sslcontext") is None)
    return buffered, None if transport is None else transport.get_extra_info("socket").fileno()


def stop_reader(response: Any, usable: Callable[[Any], bool]) -> tuple[bytes, Any]:
    """Take the buffered bytes of an aiohttp response's body and, when possible, stop aiohttp's reading.

    ``usable(transport)`` says whether the caller can take over the connection's transport. Returns
    ``(buffered, transport)``: with a transport, aiohttp's reader is paused for good (its read timer
    stopped) and the rest of the body is the caller's; with None nothing was changed for the bytes
    still to come: read them from ``response.content`` as usual.
    """
    content = response.content
    if content.exception() is not None:
        return b"", None  # the normal reader hands over what arrived, then raises the error
    chunks: list[bytes] = []
    while True:
        # Each read lets aiohttp re-feed what its paused parser held back, so repeat until empty.
        try:
            data = content.read_nowait(-1)
        except Exception:  # an error stored meanwhile: the normal reader raises it after the rest
            return b"".join(chunks), None
        if not data:
            break
        chunks.append(data)
    buffered = b"".join(chunks)
    connection = response.connection
    if connection is None or content.is_eof() or content.exception() is not None:
        return buffered, None
    protocol: Any = connection.protocol
    transport: Any = connection.transport
    if protocol is None or transport is None or not usable(transport):
        return buffered, None
    is_reading = getattr(transport, "is_reading", None)
    if (
        transport.get_extra_info("socket") is None
        or is_reading is None
        or not is_reading()
        # aiohttp holds no bytes of its own while it is not pausing the socket for a full buffer
        # (its parser keeps unparsed input only while paused). Private attributes: when they are
        # gone, this answers "no" and the normal reader goes on.
        or getattr(protocol, "_reading_paused", True)
        or getattr(protocol, "_buffer_paused", True)
        or getattr(protocol, "_tail", b"")
    ):
        return buffered, None
    protocol.pause_reading()  # also stops aiohttp's sock_read timer: the pump has its own
    if is_reading():
        protocol.resume_reading()
        return buffered, None
    return buffered, transport


def _copy(pipe: int, out: int, n: int, at: int) -> int:
    """Up to ``n`` bytes from ``pipe`` written at ``at`` in ``out`` by read and pwrite; returns how many."""
    data = memoryview(os.read(pipe, n))
    written = 0
    while written < len(data):
        written += os.pwrite(out, data[written:], at + written)
    return written


class WriteFailed(Exception):
    """Writing to the file failed (the OSError is the cause)."""


class Pipes:
    """The descriptors one spliced body needs, made before aiohttp is asked to let go of the socket.

    A process out of descriptors (EMFILE) fails here, where the normal reader can still take over.
    ``data``: the pipe between socket and file (not made with ``data=False``: a body that is not
    spliced but copied by a thread, see _tlspump); ``wake``: wakes the thread's poll at a stop request.
    """

    def __init__(self, *, data: bool = True) -> None:
        self.requested = False
        self.data_r, self.data_w = os.pipe2(os.O_CLOEXEC) if data else (-1, -1)
        try:
            self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            if data:
                os.close(self.data_r)
                os.close(self.data_w)
            raise
        if data:
            with contextlib.suppress(OSError):  # a smaller pipe still works, with more calls
                fcntl.fcntl(self.data_w, _F_SETPIPE_SZ, PIPE_SIZE)

    def request_stop(self) -> None:
        self.requested = True
        with contextlib.suppress(OSError):
            os.write(self.wake_w, b"x")

    def close(self) -> None:
        for fd in (self.data_r, self.data_w, self.wake_r, self.wake_w):
            if fd >= 0:
                os.close(fd)


def _pump(  # noqa: PLR0917 - one call site, in this module
    sock: int,
    out: int,
    offset: int,
    count: int,
    stall_timeout: float | None,
    pipes: Pipes,
    report: Callable[[int], None],
) -> int:
    """Move up to ``count`` bytes from ``sock`` into ``out`` at ``offset``; return how many.

    Returns early at the end of the stream or at a stop request. Raises TimeoutError for a stall,
    OSError for the socket and WriteFailed for the file; the bytes written before are reported.
    """
    pipe_r, pipe_w = pipes.data_r, pipes.data_w
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    poller.register(pipes.wake_r, select.POLLIN)
    wait_ms = -1 if stall_timeout is None else max(1, int(stall_timeout * 1000))
    done = 0
    reported = 0
    last_report = time.monotonic()
    flags = os.SPLICE_F_MOVE
    copy = False
    try:
        while done < count and not pipes.requested:
            try:
                n = os.splice(sock, pipe_w, min(PIPE_SIZE, count - done), flags=flags | os.SPLICE_F_NONBLOCK)
            except BlockingIOError:
                if done > reported:  # nothing more for now: tell what is on disk before waiting
                    report(done)
                    reported, last_report = done, time.monotonic()
                if not poller.poll(wait_ms):
                    raise TimeoutError("no data for the stall timeout") from None
                continue
            if n == 0:
                break  # the server closed the connection: the caller sees a short body
            while n:
                try:
                    if copy:
                        m = _copy(pipe_r, out, n, offset + done)
                    else:
                        m = os.splice(pipe_r, out, n, offset_dst=offset + done, flags=flags)
                except OSError as exc:
                    if not copy and exc.errno in _CANNOT_SPLICE_TO_FILE:
                        copy = True  # a file system without splice: the bytes go through this thread
                        continue
                    raise WriteFailed() from exc
                done += m
                n -= m
            now = time.monotonic()
            if done - reported >= REPORT_BYTES or now - last_report >= REPORT_SECONDS:
                report(done)
                reported, last_report = done, now
        return done
    finally:
        report(done)


async def pump(
    sock: int,
    out: int,
    pipes: Pipes,
    *,
    offset: int,
    count: int,
    stall_timeout: float | None,
    on_bytes: Callable[[int], None],
    url: str,
) -> int:
    """Splice ``count`` bytes of body from ``sock`` into the file ``out`` at ``offset`` in a thread.

    Takes ``pipes`` over: they are closed when this returns.
    ``on_bytes(n)`` is called on the event loop as bytes reach the file, and for every one of them
    before this returns or raises. Returns the bytes written (fewer than ``count`` when the server
    closed early). Raises StallError, WriteFailed (the file), or the socket's OSError. A cancelled
    call stops the thread and waits for it, so the socket and the file are never closed under it.
    """
    return await run_pump(
        lambda report: _pump(sock, out, offset, count, stall_timeout, pipes, report),
        pipes,
        on_bytes=on_bytes,
        url=url,
        thread_name="asyncdl-splice",
    )


async def run_pump(
    work: Callable[[Callable[[int], None]], int],
    pipes: Pipes,
    *,
    on_bytes: Callable[[int], None],
    url: str,
    thread_name: str,
) -> int:
    """Run ``work(report)`` in a thread of its own; its result (bytes written) once it ends.

    ``work`` calls ``report(total)`` with the bytes on disk so far, from its thread; ``on_bytes(n)``
    is called on the event loop with what is new, for every byte before this returns or raises.
    Takes ``pipes`` over (closed when this returns). A cancelled call asks the thread to stop
    (``pipes.request_stop()``) and waits for it, so its socket and file are never closed under it.
    A TimeoutError from ``work`` is raised as StallError.
    """
    loop = asyncio.get_running_loop()
    seen = 0

    def note(total: int) -> None:
        nonlocal seen
        if total > seen:
            delta, seen = total - seen, total
            on_bytes(delta)

    def report(total: int) -> None:
        loop.call_soon_threadsafe(note, total)

    future: concurrent.futures.Future[int] = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(work(report))
        except BaseException as exc:  # handed to the awaiting coroutine
            future.set_exception(exc)

    try:
        threading.Thread(target=run, name=thread_name, daemon=True).start()
    except RuntimeError as exc:  # no thread to be had: a transient failure, retried from the disk
        pipes.close()
        raise OSError(errno.EAGAIN, f"cannot start a thread: {exc}") from exc
    waiting = asyncio.wrap_future(future)
    try:
        try:
            done = await asyncio.shield(waiting)
        except asyncio.CancelledError:
            pipes.request_stop()
            while not waiting.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(waiting)
            if not waiting.cancelled():
                waiting.exception()  # retrieved: the cancellation is what the caller sees
            raise
    except TimeoutError as exc:
        raise StallError(f"stalled: no data for the stall timeout ({redact_url(url)})", url=url) from exc
    finally:
        pipes.close()
    note(done)  # the thread's last report may still be queued behind this wake-up
    return done
