"""A scriptable HTTP/1.1 server that misbehaves on purpose, for robustness tests.

Built on raw asyncio streams (``asyncio.start_server``) rather than a web framework, so that it can do what
no well-behaved server does: reset a connection mid-body, stall, announce more bytes than it sends, cut a
chunked body mid-chunk, or send any bytes at all. Every request is recorded for assertions.

Each path is scripted with a :class:`Route`; the *attempt* number of a route counts the requests made to
that path (1 for the first), and most misbehaviour is keyed to it::

    from faultserver import FaultServer

    async def test_resume_after_reset() -> None:
        async with FaultServer() as server:
            server.route("/file", body=b"x" * 5000, reset_after=1000, fail_times=2)
            ...  # the first two GETs of /file die after 1000 body bytes, the third succeeds
            first, second, third = server.requests_for("/file")
            assert third.header("Range") == "bytes=2000-"

Or, with the pytest fixture from ``conftest.py``::

    async def test_redirect(fault_server: FaultServer) -> None:
        fault_server.route("/old", redirect_to="/new", redirect_code=301)
        fault_server.route("/new", body=b"hello")
        url = fault_server.url("/old")

Options of a route (all keyword-only; see :class:`Route` for the details):

=====================  ================================================================================
``body`` / ``bodies``  the content; ``bodies=[v1, v2]`` are versions, by attempt or by ``route.version``
``etag``, ``etags``    ``True`` (derived from the content), ``False`` (none), or the value; ``weak_etag``
``last_modified``      ``True`` (a fixed date per version), ``False``, a string or a ``datetime``
``ranges``             ``"honour"`` (206), ``"ignore"`` (200), ``"offset"`` (206 from ``range_offset``)
``statuses``           a status per attempt, the last one repeating: ``[503, (429, 2), 200]``
``redirect_to``        ``Location`` of a ``redirect_code`` answer (301/302/303/307/308)
``reset_after``        TCP reset after N body bytes           } on the attempts up to ``fail_times``
``stall_after``        N body bytes, then silence             } (every attempt when it is ``None``)
``truncate_after``     N body bytes, then a clean close       }
``content_length``     announce this length, send the body, close }
``raw``                send these bytes instead of an answer, close }
``chunked``            ``Transfer-Encoding: chunked`` in ``chunk_size`` chunks
``rate``               bytes per second, paced
``hang``               read the request, never answer (a black hole)              } on the attempts up
``endless``            a chunked 200 whose body never ends                        } to ``fail_times``
``gzip``               gzip the body when the request accepts gzip
=====================  ================================================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip as gziplib
import hashlib
import http
import re
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from types import TracebackType
from typing import Any, Literal

__all__ = ["FaultServer", "RecordedRequest", "RetryAfter", "Route", "http_date"]

#: Retry-After value: seconds (int or float, sent as whole seconds), an HTTP-date string, or a datetime.
RetryAfter = int | float | str | datetime
RangeMode = Literal["honour", "ignore", "offset"]

#: Last-Modified of version 0 when ``last_modified=True``; version i is i days later.
BASE_LAST_MODIFIED = datetime(2024, 1, 1, tzinfo=timezone.utc)
WRITE_SIZE = 64 * 1024  # largest single write of a body
MAX_HEADER_COUNT = 200
PACING_STEPS_PER_SECOND = 20  # a throttled body is written in pieces of about rate / 20 bytes
SERVER_NAME = "faultserver"


def http_date(moment: datetime) -> str:
    """``moment`` as an HTTP-date (``Mon, 01 Jan 2024 00:00:00 GMT``); naive datetimes are taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return format_datetime(moment.astimezone(timezone.utc), usegmt=True)


def _retry_after_value(value: RetryAfter) -> str:
    if isinstance(value, datetime):
        return http_date(value)
    if isinstance(value, str):
        return value
    return str(int(value))


def _format_etag(value: str, *, weak: bool) -> str:
    """Quote a bare tag; keep an already quoted or ``W/`` one; make it weak if asked."""
    tag = value if value.startswith(('"', "W/")) else f'"{value}"'
    if weak and not tag.startswith("W/"):
        tag = "W/" + tag
    return tag


@dataclass(kw_only=True, eq=False)
class Route:
    """How the server answers one path. Mutable: a test may change any field between requests.

    Content and validators:

    - ``body``: the content; ``bodies``: several versions of it (overrides ``body``). The version served is
      ``version`` when set (a test may switch it at any time: ``route.version = 1``), else the attempt
      number minus one, capped at the last version.
    - ``etag``: ``True`` derives a strong tag from the content of the version, ``False`` sends none, a string
      is sent as is (quoted when bare). ``weak_etag`` makes it ``W/"..."``. ``etags`` gives one per version
      (``None`` in it: no ETag for that version).
    - ``last_modified``: ``True`` sends 2024-01-01 plus the version number in days, ``False`` none, a string
      verbatim, a datetime formatted. ``last_modifieds``: one per version.
    - ``content_type``, ``content_disposition`` (``None``: not sent), ``headers`` (extra headers on every
      answer of the route: a mapping or (name, value) pairs), ``accept_ranges`` (send
      ``Accept-Ranges: bytes``).

    Ranges (only for a 200 answer to GET or HEAD with a ``Range: bytes=N-``, ``bytes=N-M`` or ``bytes=-S``
    header; several ranges or other units are ignored): a start at or past the end gets 416 with
    ``Content-Range: bytes */SIZE``; an ``If-Range`` that does not match the current strong ETag (or, for a
    date, the exact Last-Modified) gets 200 and the full body. Otherwise ``ranges`` decides: ``"honour"``
    (206 with the range), ``"ignore"`` (200, full body), ``"offset"`` (206 from ``range_offset`` to the end,
    whatever was asked).

    Status script: ``statuses`` holds one status per attempt, the last repeating; an item may be
    ``(status, retry_after)``; ``retry_after`` is the default Retry-After for scripted non-2xx statuses.
    A non-2xx status gets a short text body (a 3xx carries ``Location: redirect_to`` when set). A 2xx status
    serves the content with that code (ranges only apply to 200). ``redirect_to`` (when the script does not
    say otherwise) answers every attempt with ``redirect_code`` and that Location, sent verbatim: a path,
    another server's URL, or an ``ftp://`` one.

    Faults, on the attempts up to ``fail_times`` (every attempt when ``None``); a byte count that is not
    reached by the body being sent does not fire:

    - ``reset_after=N``: N body bytes, then a TCP reset (SO_LINGER 0 and ``transport.abort()``);
    - ``stall_after=N``: headers and N body bytes, then silence until the client closes or the server stops;
    - ``truncate_after=N``: N body bytes (the announced length is the full one), then a clean close;
    - ``content_length=L``: announce L instead of the real length, send the body, close;
    - ``raw=b"..."``: send exactly these bytes instead of any answer, then close.

    A black hole: ``hang=True`` reads the request and never answers, until the client closes. A body
    that never ends: ``endless=True`` answers 200 with a chunked body of ``body`` repeated forever.

    Body framing and pace: ``chunked`` sends ``Transfer-Encoding: chunked`` with ``chunk_size`` bytes of
    content per chunk (with ``truncate_after``/``reset_after`` it stops mid-chunk); ``rate`` caps the body at
    that many bytes per second (paced writes of about rate/20 bytes, never ahead of schedule); ``gzip``
    gzips the content when the request's Accept-Encoding allows gzip (ETag gets a ``-gzip`` suffix).

    ``close``: answer with ``Connection: close`` and close after each response (else keep-alive).
    ``attempts`` counts the requests to this path so far (a test may reset it to 0).
    """

    path: str
    body: bytes = b""
    bodies: Sequence[bytes] | None = None
    version: int | None = None
    etag: str | bool = True
    etags: Sequence[str | None] | None = None
    weak_etag: bool = False
    last_modified: str | datetime | bool = True
    last_modifieds: Sequence[str | datetime | None] | None = None
    content_type: str = "application/octet-stream"
    content_disposition: str | None = None
    headers: Mapping[str, str] | Sequence[tuple[str, str]] = ()
    accept_ranges: bool = True
    ranges: RangeMode = "honour"
    range_offset: int = 0
    statuses: Sequence[int | tuple[int, RetryAfter | None]] = ()
    retry_after: RetryAfter | None = None
    redirect_to: str | None = None
    redirect_code: int = 302
    fail_times: int | None = None
    reset_after: int | None = None
    stall_after: int | None = None
    truncate_after: int | None = None
    content_length: int | None = None
    raw: bytes | None = None
    chunked: bool = False
    chunk_size: int = 16 * 1024
    rate: float | None = None
    gzip: bool = False
    close: bool = False
    hang: bool = False
    endless: bool = False
    attempts: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ValueError(f"route path must start with '/': {self.path!r}")
        if self.bodies is not None and not self.bodies:
            raise ValueError("bodies must hold at least one version")
        if self.etags is not None and len(self.etags) != len(self.versions):
            raise ValueError("etags needs one entry per version")
        if self.last_modifieds is not None and len(self.last_modifieds) != len(self.versions):
            raise ValueError("last_modifieds needs one entry per version")
        if self.ranges not in ("honour", "ignore", "offset"):
            raise ValueError(f"ranges must be 'honour', 'ignore' or 'offset', not {self.ranges!r}")
        if not 300 <= self.redirect_code < 400:
            raise ValueError(f"redirect_code must be a 3xx status, not {self.redirect_code}")
        if self.chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be positive")

    @property
    def versions(self) -> Sequence[bytes]:
        """The content versions: ``bodies``, or ``[body]``."""
        return self.bodies if self.bodies is not None else (self.body,)

    def version_for(self, attempt: int) -> int:
        """Index of the version served on ``attempt`` (1-based)."""
        index = self.version if self.version is not None else attempt - 1
        return max(0, min(index, len(self.versions) - 1))

    def etag_for(self, version: int) -> str | None:
        """The ETag header value of ``version`` (before any gzip suffix), or None."""
        if self.etags is not None:
            tag = self.etags[version]
            return None if tag is None else _format_etag(tag, weak=self.weak_etag)
        if self.etag is False:
            return None
        if self.etag is True:
            digest = hashlib.sha256(self.versions[version]).hexdigest()[:20]
            return _format_etag(digest, weak=self.weak_etag)
        return _format_etag(self.etag, weak=self.weak_etag)

    def last_modified_for(self, version: int) -> str | None:
        """The Last-Modified header value of ``version``, or None."""
        value: str | datetime | bool | None = self.last_modified
        if self.last_modifieds is not None:
            value = self.last_modifieds[version]
        if value is None or value is False:
            return None
        if value is True:
            return http_date(BASE_LAST_MODIFIED + timedelta(days=version))
        return value if isinstance(value, str) else http_date(value)

    def faults_active(self, attempt: int) -> bool:
        """True when the fault options apply to ``attempt``."""
        return self.fail_times is None or attempt <= self.fail_times

    def scripted_status(self, attempt: int) -> tuple[int | None, RetryAfter | None]:
        """(status, retry_after) of the status script for ``attempt``; (None, None) without a script."""
        if not self.statuses:
            return None, None
        entry = self.statuses[min(attempt, len(self.statuses)) - 1]
        if isinstance(entry, tuple):
            return entry[0], entry[1]
        return entry, self.retry_after

    def extra_headers(self) -> list[tuple[str, str]]:
        items = self.headers.items() if isinstance(self.headers, Mapping) else self.headers
        return [(str(name), str(value)) for name, value in items]


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server read it.

    ``target`` is the request-target as sent (path with query); ``path`` and ``query`` split it.
    ``headers`` keeps every header in order, names as sent; use :meth:`header` for a case-insensitive
    lookup. ``body`` is the request body (Content-Length or chunked, de-chunked). ``attempt`` is the
    route's attempt number this request was (0 when no route matched). ``timestamp`` is ``time.monotonic()``
    when the request had been read completely.
    """

    method: str
    target: str
    http_version: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    connection_id: int
    attempt: int
    timestamp: float
    chunked: bool = False

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (any case), else ``default``."""
        values = self.header_values(name)
        return values[0] if values else default

    def header_values(self, name: str) -> list[str]:
        """Every value of header ``name`` (any case), in order."""
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]

    def has_header(self, name: str) -> bool:
        return bool(self.header_values(name))

    def header_tokens(self, name: str) -> set[str]:
        """Lower-cased tokens of a header without parameters (Connection, Accept-Encoding)."""
        tokens = set()
        for value in self.header_values(name):
            for item in value.split(","):
                token = item.split(";", 1)[0].strip().lower()
                if token:
                    tokens.add(token)
        return tokens


class _BadRequestError(Exception):
    """The bytes on the wire are not an HTTP/1.x request."""


@dataclass(eq=False)
class _Connection:
    id: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    aborted: bool = False


@dataclass
class _ParsedRequest:
    method: str
    target: str
    http_version: str
    headers: list[tuple[str, str]]
    body: bytes
    chunked: bool


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError as exc:
        raise _BadRequestError("line too long") from exc
    return line.rstrip(b"\r\n")


async def _read_request(conn: _Connection) -> _ParsedRequest | None:
    """Read one request; None on a clean end of stream before its first byte."""
    reader = conn.reader
    line = b""
    for _ in range(8):  # RFC 9112 2.2: ignore empty lines before the request line
        try:
            line = await _read_line(reader)
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                return None
            raise
        if line:
            break
    parts = line.decode("latin-1").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[0].isalpha():
        raise _BadRequestError(f"bad request line {line[:100]!r}")
    method, target, version = parts

    headers: list[tuple[str, str]] = []
    while True:
        raw_header = await _read_line(reader)
        if not raw_header:
            break
        if len(headers) >= MAX_HEADER_COUNT:
            raise _BadRequestError("too many headers")
        text = raw_header.decode("utf-8", "surrogateescape")
        if text[0] in " \t" and headers:  # obsolete line folding
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {text.strip()}")
            continue
        name, sep, value = text.partition(":")
        if not sep or not name or name != name.strip():
            raise _BadRequestError(f"bad header line {raw_header[:100]!r}")
        headers.append((name, value.strip()))

    lookup = [(k.lower(), v) for k, v in headers]
    encodings = [t.strip().lower() for k, v in lookup if k == "transfer-encoding" for t in v.split(",")]
    lengths = {v.strip() for k, v in lookup if k == "content-length"}
    expects_continue = any(k == "expect" and v.lower() == "100-continue" for k, v in lookup)
    chunked = bool(encodings) and encodings[-1] == "chunked"
    if encodings and not chunked:
        raise _BadRequestError("unsupported transfer-encoding")
    if not chunked and len(lengths) > 1:
        raise _BadRequestError("conflicting Content-Length headers")
    length = 0
    if lengths and not chunked:
        text_length = lengths.pop()
        if not text_length.isdigit():
            raise _BadRequestError(f"bad Content-Length {text_length!r}")
        length = int(text_length)
    if expects_continue and (chunked or length):
        conn.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await conn.writer.drain()
    body = await _read_chunked(reader) if chunked else await reader.readexactly(length)
    return _ParsedRequest(method, target, version, headers, body, chunked)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = (await _read_line(reader)).split(b";", 1)[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError as exc:
            raise _BadRequestError(f"bad chunk size {size_line[:40]!r}") from exc
        if size == 0:
            while await _read_line(reader):  # trailer fields, ignored
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        if await _read_line(reader):
            raise _BadRequestError("chunk data longer than its size")


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a single byte range; None when the header is to be ignored.

    A start at or past ``size`` is returned as is (the caller answers 416).
    """
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", value)
    if not match:
        return None  # several ranges, another unit, garbage: served as a plain 200
    first, last = match.groups()
    if not first:
        if not last:
            return None
        suffix = int(last)
        return (size, size) if suffix == 0 else (max(0, size - suffix), size - 1)
    start = int(first)
    if last and int(last) < start:
        return None
    end = min(int(last), size - 1) if last else size - 1
    return start, end


def _if_range_matches(value: str, etag: str | None, last_modified: str | None) -> bool:
    """RFC 9110 13.1.5: a strong, identical ETag, or exactly the Last-Modified date."""
    value = value.strip()
    if value.startswith(('"', "W/")):
        return etag is not None and not etag.startswith("W/") and value == etag
    return last_modified is not None and value == last_modified


def _accepts_gzip(request: RecordedRequest) -> bool:
    for value in request.header_values("accept-encoding"):
        for item in value.split(","):
            name, _, params = item.partition(";")
            if name.strip().lower() not in ("gzip", "x-gzip", "*"):
                continue
            match = re.search(r"q\s*=\s*([0-9.]+)", params)
            if match is None or float(match.group(1)) > 0:
                return True
    return False


def _wants_close(request: RecordedRequest) -> bool:
    tokens = request.header_tokens("connection")
    if request.http_version == "HTTP/1.0":
        return "keep-alive" not in tokens
    return "close" in tokens


def _response_head(status: int, headers: Sequence[tuple[str, str]]) -> bytes:
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


class FaultServer:
    """An HTTP/1.1 server on 127.0.0.1 whose answers are scripted per path (see the module docstring).

    Use as ``async with FaultServer() as server:``, or ``await server.start()`` / ``await server.aclose()``.
    Closing cancels every connection handler (stalled ones included) and waits for them. An unexpected
    exception inside a handler (a bug of this server, not a client that went away) is kept in ``errors``
    and raised from ``aclose()``.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, write_size: int = WRITE_SIZE) -> None:
        self.host = host
        self._requested_port = port
        self.write_size = write_size
        self.routes: dict[str, Route] = {}
        self.requests: list[RecordedRequest] = []
        self.errors: list[BaseException] = []
        self.connection_count = 0
        # ("open" | "close", connections open just after): the server's connections over time.
        self.connection_events: list[tuple[str, int]] = []
        # Requests being answered at once, as each one arrived (itself included).
        self.in_flight = 0
        self.in_flight_seen: list[int] = []
        # ("start" | "end", path, requests being answered just after): the same over time.
        self.in_flight_events: list[tuple[str, str, int]] = []
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._closing = False
        self._handlers: set[asyncio.Task[object]] = set()
        self._changed = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> FaultServer:
        if self._server is not None:
            raise RuntimeError("FaultServer already started")
        self._server = await asyncio.start_server(self._handle, self.host, self._requested_port)
        self._port = self._server.sockets[0].getsockname()[1]
        return self

    async def aclose(self) -> None:
        """Stop listening, cancel every handler and wait for it; idempotent."""
        if self._server is None or self._closing:
            return
        self._closing = True
        self._server.close()
        while True:
            # Let connections accepted just before close() reach their handler, which sees _closing.
            for _ in range(5):
                await asyncio.sleep(0)
            if not self._handlers:
                break
            handlers = list(self._handlers)
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
        await self._server.wait_closed()
        if self.errors:
            raise RuntimeError(f"FaultServer handler failed: {self.errors[0]!r}") from self.errors[0]

    async def __aenter__(self) -> FaultServer:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.aclose()
            return
        with contextlib.suppress(RuntimeError):  # do not hide the test's own exception
            await self.aclose()

    # -- addresses ---------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FaultServer not started")
        return self._port

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT``"""
        return f"http://{self.host}:{self.port}"

    def url(self, path: str = "/") -> str:
        """Absolute URL of ``path`` on this server."""
        if not path.startswith("/"):
            path = "/" + path
        return self.origin + path

    # -- scripting and records ---------------------------------------------------------------------------

    def route(self, path: str, *, body: bytes = b"", **options: Any) -> Route:
        """Register (or replace) the script of ``path``, a path without query; options: see :class:`Route`."""
        return self.add_route(Route(path=path, body=body, **options))

    def add_route(self, route: Route) -> Route:
        self.routes[route.path] = route
        return route

    def requests_for(self, path: str) -> list[RecordedRequest]:
        """Requests whose path is ``path``; with a ``?`` in it, whose whole target is ``path``."""
        if "?" in path:
            return [r for r in self.requests if r.target == path]
        return [r for r in self.requests if r.path == path]

    @property
    def active_connections(self) -> int:
        """Connections whose handler is still running."""
        return len(self._handlers)

    async def wait_for_requests(self, count: int = 1, path: str | None = None) -> list[RecordedRequest]:
        """Wait until at least ``count`` requests (to ``path``, when given) were recorded; return them."""
        while True:
            found = self.requests if path is None else self.requests_for(path)
            if len(found) >= count:
                return list(found)
            await self._wait_change()

    async def wait_idle(self) -> None:
        """Wait until no connection is open (every client closed, or was closed)."""
        while self._handlers:
            await self._wait_change()

    async def _wait_change(self) -> None:
        event = self._changed
        await event.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- connection handling -----------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connection_count += 1
        conn = _Connection(self.connection_count, reader, writer)
        self._handlers.add(task)
        self.connection_events.append(("open", len(self._handlers)))
        self._notify()
        try:
            if self._closing:
                return
            # With a zero high-water mark drain() returns only once the kernel has every byte, so that
            # counts like reset_after are exact and an abort does not discard buffered data.
            writer.transport.set_write_buffer_limits(high=0)
            await self._serve(conn)
        except (OSError, asyncio.IncompleteReadError):
            pass  # the client went away: nothing to report
        except Exception as exc:  # a bug here: surfaced by aclose()
            self.errors.append(exc)
        finally:
            try:
                await self._close_connection(conn)
            finally:
                self._handlers.discard(task)
                self.connection_events.append(("close", len(self._handlers)))
                self._notify()

    async def _close_connection(self, conn: _Connection) -> None:
        transport = conn.writer.transport
        if not conn.aborted:
            if self._closing:
                transport.abort()
            else:
                conn.writer.close()
        with contextlib.suppress(Exception):
            await conn.writer.wait_closed()

    async def _serve(self, conn: _Connection) -> None:
        while True:
            try:
                parsed = await _read_request(conn)
            except _BadRequestError as exc:
                message = f"bad request: {exc}\n".encode()
                await self._send(
                    conn, _response_head(400, self._simple_headers(message, close=True)) + message
                )
                return
            if parsed is None:
                return
            route = self.routes.get(parsed.target.split("?", 1)[0])
            attempt = 0
            if route is not None:
                route.attempts += 1
                attempt = route.attempts
            request = RecordedRequest(
                method=parsed.method,
                target=parsed.target,
                http_version=parsed.http_version,
                headers=tuple(parsed.headers),
                body=parsed.body,
                connection_id=conn.id,
                attempt=attempt,
                timestamp=time.monotonic(),
                chunked=parsed.chunked,
            )
            self.requests.append(request)
            self._notify()
            if route is None:
                message = f"no route for {request.path}\n".encode()
                close = _wants_close(request)
                body = b"" if request.method == "HEAD" else message
                await self._send(conn, _response_head(404, self._simple_headers(message, close=close)) + body)
                keep_alive = not close
            else:
                self.in_flight += 1
                self.in_flight_seen.append(self.in_flight)
                self.in_flight_events.append(("start", request.path, self.in_flight))
                try:
                    keep_alive = await self._respond(conn, request, route)
                finally:
                    self.in_flight -= 1
                    self.in_flight_events.append(("end", request.path, self.in_flight))
            if not keep_alive:
                return

    async def _send(self, conn: _Connection, data: bytes) -> None:
        conn.writer.write(data)
        await conn.writer.drain()

    def _simple_headers(
        self, body: bytes, *, close: bool, extra: Sequence[tuple[str, str]] = ()
    ) -> list[tuple[str, str]]:
        headers = [
            ("Server", SERVER_NAME),
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            *extra,
        ]
        if close:
            headers.append(("Connection", "close"))
        return headers

    async def _respond(self, conn: _Connection, request: RecordedRequest, route: Route) -> bool:
        """Answer ``request`` as ``route`` says; True when the connection stays open for the next one."""
        attempt = request.attempt
        faulty = route.faults_active(attempt)
        close = route.close or _wants_close(request)
        extra = route.extra_headers()

        if faulty and route.raw is not None:
            await self._send(conn, route.raw)
            return False
        if faulty and route.hang:
            await self._stall(conn)
            return False
        if faulty and route.endless and request.method == "GET":
            head = [("Server", SERVER_NAME), ("Transfer-Encoding", "chunked"), *extra]
            await self._send(conn, _response_head(200, head))
            piece = route.body or b"x" * 1024
            chunk = b"%x\r\n" % len(piece) + piece + b"\r\n"
            while True:
                await self._send(conn, chunk)
                await asyncio.sleep(0)  # a fast reader never makes drain() wait: let others run

        status, retry_after = route.scripted_status(attempt)
        if status is None and route.redirect_to is not None:
            status = route.redirect_code
        if status is not None and not 200 <= status < 300:
            headers = list(extra)
            if 300 <= status < 400 and route.redirect_to is not None:
                headers.append(("Location", route.redirect_to))
            if retry_after is not None:
                headers.append(("Retry-After", _retry_after_value(retry_after)))
            message = f"{status} {route.path}\n".encode()
            body = b"" if request.method == "HEAD" else message
            await self._send(
                conn, _response_head(status, self._simple_headers(message, close=close, extra=headers)) + body
            )
            return not close

        version = route.version_for(attempt)
        content = route.versions[version]
        etag = route.etag_for(version)
        last_modified = route.last_modified_for(version)
        headers = [("Server", SERVER_NAME), ("Content-Type", route.content_type)]
        if route.gzip:
            headers.append(("Vary", "Accept-Encoding"))
            if _accepts_gzip(request):
                content = gziplib.compress(content, mtime=0)
                headers.append(("Content-Encoding", "gzip"))
                if etag is not None:
                    etag = etag[:-1] + '-gzip"'
        if etag is not None:
            headers.append(("ETag", etag))
        if last_modified is not None:
            headers.append(("Last-Modified", last_modified))
        if route.accept_ranges:
            headers.append(("Accept-Ranges", "bytes"))
        if route.content_disposition is not None:
            headers.append(("Content-Disposition", route.content_disposition))
        headers.extend(extra)

        size = len(content)
        payload = content
        status = status or 200
        range_header = request.header("range")
        if status == 200 and range_header is not None and request.method in ("GET", "HEAD"):
            wanted = _parse_range(range_header, size)
            if_range = request.header("if-range")
            if wanted is not None and (if_range is None or _if_range_matches(if_range, etag, last_modified)):
                start, end = wanted
                if start >= size:
                    headers += [("Content-Range", f"bytes */{size}"), ("Content-Length", "0")]
                    if close:
                        headers.append(("Connection", "close"))
                    await self._send(conn, _response_head(416, headers))
                    return not close
                if route.ranges == "offset":
                    start, end = min(route.range_offset, size), size - 1
                if route.ranges != "ignore":
                    status = 206
                    payload = content[start : end + 1]
                    headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))

        announced = len(payload)
        wrong_length = faulty and route.content_length is not None and route.content_length != announced
        if wrong_length:
            assert route.content_length is not None
            announced = route.content_length
            close = True
        if route.chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        else:
            headers.append(("Content-Length", str(announced)))
        if close:
            headers.append(("Connection", "close"))
        await self._send(conn, _response_head(status, headers))
        if request.method == "HEAD":
            return not close

        # The smallest armed byte count that the body reaches decides the fault.
        fault: tuple[int, str] | None = None
        if faulty:
            armed = [
                (count, name)
                for count, name in (
                    (route.reset_after, "reset"),
                    (route.stall_after, "stall"),
                    (route.truncate_after, "truncate"),
                )
                if count is not None and count <= len(payload)
            ]
            fault = min(armed) if armed else None
        limit = fault[0] if fault is not None else len(payload)
        await self._send_body(conn, payload, limit=limit, route=route)
        if fault is None:
            if route.chunked:
                await self._send(conn, b"0\r\n\r\n")
            return not close
        if fault[1] == "reset":
            self._reset(conn)
        elif fault[1] == "stall":
            await self._stall(conn)
        return False

    async def _send_body(self, conn: _Connection, payload: bytes, *, limit: int, route: Route) -> None:
        """Write ``payload[:limit]``, chunk-framed when the route says so, paced when it has a rate."""
        loop = asyncio.get_running_loop()
        piece = self.write_size
        if route.rate is not None:
            piece = max(1, min(piece, int(route.rate / PACING_STEPS_PER_SECOND)))
        started = loop.time()
        total = len(payload)
        position = 0
        while position < limit:
            end = min(limit, position + piece)
            parts: list[bytes] = []
            if route.chunked:
                chunk_start = position - position % route.chunk_size
                chunk_end = min(chunk_start + route.chunk_size, total)
                end = min(end, chunk_end)
                if position == chunk_start:
                    parts.append(b"%x\r\n" % (chunk_end - chunk_start))
                parts.append(payload[position:end])
                if end == chunk_end:
                    parts.append(b"\r\n")
            else:
                parts.append(payload[position:end])
            if route.rate is not None:
                # Never ahead of schedule: the bytes up to `end` are due at started + end / rate.
                delay = started + end / route.rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            await self._send(conn, b"".join(parts))
            position = end

    def _reset(self, conn: _Connection) -> None:
        """Close with a TCP RST: SO_LINGER 0 makes close() discard the connection instead of a FIN."""
        sock = conn.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.writer.transport.abort()
        conn.aborted = True

    async def _stall(self, conn: _Connection) -> None:
        """Send nothing more; return when the client closes (cancelled when the server closes)."""
        while await conn.reader.read(WRITE_SIZE):
            pass
