"""The rest of a large HTTPS body decrypted and written by a thread of its own.

Read through aiohttp, an HTTPS body is decrypted in the event loop's thread, one TLS record
(16 KiB) at a time, and each piece passes through aiohttp's parser and buffer before it is written:
for one 1 GiB file the loop spends more time on that than curl spends in all. asyncio drives TLS
with an ``ssl.SSLObject`` over two memory BIOs (``asyncio.sslproto``): the socket's bytes go into the
incoming BIO, ``SSLObject.read`` gives the plaintext. Once aiohttp has parsed the headers,
``detach_tls`` takes the body bytes aiohttp has buffered, stops aiohttp and asyncio reading the
socket, and hands the same SSLObject, its BIOs and the socket to ``pump``, which goes on in a thread:
``readv`` from the socket into the incoming BIO, ``SSLObject.read`` into a 1 MiB buffer, ``pwrite``
at the file offsets that follow. OpenSSL's read, the socket read and the file write all release the
GIL, so the event loop serves the other downloads meanwhile. Whatever TLS state asyncio held (bytes
in the incoming BIO, a record half-read) is in the SSLObject and BIOs the thread goes on with.

The guarantees are those of the splice path (_splice): exactly Content-Length bytes, each reported
as it reaches the file, so that a failure resumes after them; the stall timeout applies to every
wait (``poll``); a cancelled download stops the thread and waits for it. The connection is aborted
afterwards, never reused (aiohttp's parser still expects the body it did not see). Anything
unexpected in asyncio's or aiohttp's state (another event loop such as uvloop, a version that
keeps bytes elsewhere, pending writes) means the normal reader is used.
"""

from __future__ import annotations

import os
import select
import ssl
import sys
import time
from asyncio import sslproto
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import _splice
from ._splice import Pipes, WriteFailed

# asyncio's state of a connection whose handshake is done and that is not closing.
_WRAPPED: Any = getattr(getattr(sslproto, "SSLProtocolState", None), "WRAPPED", object())
AVAILABLE = hasattr(select, "poll") and hasattr(os, "readv") and hasattr(os, "pwrite")
# Plaintext gathered before one pwrite, and raw bytes taken from the socket at a time.
PLAIN_BUFFER = 1024 * 1024
RAW_BUFFER = 256 * 1024


@dataclass
class Detached:
    """The TLS state of one connection, handed from asyncio's SSL protocol to the pump's thread."""

    sock: int
    sslobj: ssl.SSLObject
    incoming: ssl.MemoryBIO
    outgoing: ssl.MemoryBIO
    protocol: Any  # aiohttp's protocol: aborted once the thread is done

    def abort(self) -> None:
        """Drop the connection without a TLS close (the thread is done with the SSLObject)."""
        self.protocol.abort()


def is_tls(response: Any) -> bool:
    """Whether ``response`` came over TLS."""
    connection = response.connection
    transport = connection.transport if connection is not None else None
    return transport is not None and transport.get_extra_info("sslcontext") is not None


def _ssl_protocol(transport: Any) -> Any:
    """asyncio's SSLProtocol behind ``transport``, when it is in a state the pump can take over."""
    proto: Any = getattr(transport, "_ssl_protocol", None)
    if type(proto) is not sslproto.SSLProtocol:
        return None  # another event loop (uvloop) or another TLS layer
    # Private attributes of asyncio's SSLProtocol: a version without them answers "no".
    raw = getattr(proto, "_transport", None)
    sslobj = getattr(proto, "_sslobj", None)
    outgoing = getattr(proto, "_outgoing", None)
    if (
        raw is None
        or raw.is_closing()
        or getattr(raw, "get_write_buffer_size", lambda: 1)() != 0
        or not isinstance(sslobj, ssl.SSLObject)
        or getattr(proto, "_state", None) is not _WRAPPED
        or getattr(proto, "_eof_received", True)
        or getattr(proto, "_write_backlog", True)
        or not isinstance(getattr(proto, "_incoming", None), ssl.MemoryBIO)
        or not isinstance(outgoing, ssl.MemoryBIO)
        or outgoing.pending
        or not hasattr(proto, "_incoming_high_water")
        or not hasattr(raw, "pause_reading")
    ):
        return None
    return proto


def detach_tls(response: Any) -> tuple[bytes, Detached | None]:
    """Take the buffered body bytes of an HTTPS response and, when possible, its TLS state for the rest.

    Returns ``(buffered, detached)``. With ``detached`` None nothing was changed for the bytes still
    to come: read them from ``response.content`` as usual (the buffered bytes are already taken).
    """
    buffered, transport = _splice.stop_reader(response, lambda t: _ssl_protocol(t) is not None)
    if transport is None:
        return buffered, None
    proto = _ssl_protocol(transport)
    protocol = response.connection.protocol
    if proto is None:
        protocol.resume_reading()
        return buffered, None
    raw = proto._transport
    raw.pause_reading()  # the socket's bytes are the thread's from now on
    if raw.is_reading():
        protocol.resume_reading()
        return buffered, None
    # asyncio's flow control would resume the socket once the incoming BIO drains (as the thread
    # drains it): with these marks it never pauses or resumes it again.
    proto._incoming_high_water = sys.maxsize
    proto._incoming_low_water = -1
    sock = raw.get_extra_info("socket").fileno()
    return buffered, Detached(sock, proto._sslobj, proto._incoming, proto._outgoing, protocol)


def _send(sock: int, data: bytes, wait_ms: int) -> None:
    """TLS bytes the SSLObject wants sent (a key update's answer), on the non-blocking socket."""
    view = memoryview(data)
    out = select.poll()
    out.register(sock, select.POLLOUT)
    while view:
        try:
            view = view[os.write(sock, view) :]
        except BlockingIOError:
            if not out.poll(wait_ms):
                raise TimeoutError("the socket took no data for the stall timeout") from None


def _pump(  # noqa: PLR0917 - one call site, in this module
    tls: Detached,
    out: int,
    offset: int,
    count: int,
    stall_timeout: float | None,
    pipes: Pipes,
    report: Callable[[int], None],
) -> int:
    """Decrypt up to ``count`` body bytes from ``tls`` into ``out`` at ``offset``; return how many.

    Returns early at the end of the stream (a TLS close or the socket's end) or at a stop request.
    Raises TimeoutError for a stall, OSError (ssl.SSLError included) for the connection and
    WriteFailed for the file; the bytes written before are reported.
    """
    sock, incoming = tls.sock, tls.incoming
    # read(n, buffer) fills the buffer and answers the count (typeshed knows only read(n) -> bytes).
    read_into: Callable[[int, memoryview], int] = tls.sslobj.read  # type: ignore[assignment]
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    poller.register(pipes.wake_r, select.POLLIN)
    wait_ms = -1 if stall_timeout is None else max(1, int(stall_timeout * 1000))
    plain = memoryview(bytearray(min(PLAIN_BUFFER, count)))
    raw = memoryview(bytearray(RAW_BUFFER))
    done = 0
    reported = 0
    last_report = time.monotonic()
    socket_ended = False
    try:
        while done < count and not pipes.requested:
            want = min(len(plain), count - done)
            filled = 0
            ended = need_input = False
            failure: OSError | None = None
            try:
                while filled < want:
                    got = read_into(want - filled, plain[filled:want])
                    if got == 0:  # the server's TLS close: the caller sees a short body
                        ended = True
                        break
                    filled += got
            except ssl.SSLWantReadError:
                need_input = True
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                ended = True
            except OSError as exc:  # a TLS error: what was decrypted before it still goes to the file
                failure = exc
            written = 0
            while written < filled:
                try:
                    written += os.pwrite(out, plain[written:filled], offset + done + written)
                except OSError as exc:
                    done += written
                    raise WriteFailed() from exc
            done += filled
            if failure is not None:
                raise failure
            if tls.outgoing.pending:
                _send(sock, tls.outgoing.read(), wait_ms)
            now = time.monotonic()
            if done - reported >= _splice.REPORT_BYTES or now - last_report >= _splice.REPORT_SECONDS:
                report(done)
                reported, last_report = done, now
            if ended or (need_input and socket_ended):
                break
            if not need_input:
                continue
            try:
                n = os.readv(sock, [raw])
            except BlockingIOError:
                if done > reported:  # nothing more for now: tell what is on disk before waiting
                    report(done)
                    reported, last_report = done, time.monotonic()
                if not poller.poll(wait_ms):
                    raise TimeoutError("no data for the stall timeout") from None
                continue
            if n == 0:
                incoming.write_eof()  # the next read ends (SSLEOFError) after what is complete
                socket_ended = True
                continue
            incoming.write(raw[:n])
        return done
    finally:
        report(done)


async def pump(
    tls: Detached,
    out: int,
    pipes: Pipes,
    *,
    offset: int,
    count: int,
    stall_timeout: float | None,
    on_bytes: Callable[[int], None],
    url: str,
) -> int:
    """Decrypt ``count`` body bytes of ``tls`` into the file ``out`` at ``offset``, in a thread.

    As ``_splice.pump``: takes ``pipes`` over (only their wake pipe is used), ``on_bytes(n)`` on the
    event loop as bytes reach the file, returns the bytes written (fewer than ``count`` when the
    server closed early), raises StallError, WriteFailed or the connection's OSError; a cancelled
    call stops the thread and waits for it. The connection is not closed here (``tls.abort()``).
    """
    return await _splice.run_pump(
        lambda report: _pump(tls, out, offset, count, stall_timeout, pipes, report),
        pipes,
        on_bytes=on_bytes,
        url=url,
        thread_name="asyncdl-tls",
    )
