"""The only module that imports aiohttp: the session, opening a body at an offset, error translation.

Everything aiohttp raises is translated here, once, into the tree of ``_exceptions`` (``raise ... from
exc``), so the rest of asyncdl never sees an aiohttp type. Timeouts are translated first: aiohttp's
``ServerTimeoutError`` is both a connection error and a ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import aiohttp

from ._exceptions import (
    ConnectError,
    DownloadError,
    HTTPStatusError,
    IncompleteBody,
    RedirectError,
    RetryableStatus,
    StallError,
)
from ._retry import RETRYABLE_STATUSES, parse_retry_after
from ._urls import SCHEMES, origin, redact_url
from ._version import __version__

# Reads of up to 1 MiB per iteration: at 64 KiB the loop pays a Python iteration (and, without
# write buffering, a thread hop) per 64 KiB, which dominated the time for large files.
CHUNK_SIZE = 1024 * 1024
# aiohttp's per-connection read buffer (it pauses the socket at twice this): large enough that a
# 1 MiB read finds a full chunk waiting, small enough to keep memory flat with many connections.
READ_BUFSIZE = 512 * 1024
MAX_REDIRECTS = 10
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class Validator:
    """What we send as If-Range: a strong ETag, else a Last-Modified date."""

    etag: str | None = None
    last_modified: str | None = None

    @property
    def if_range(self) -> str | None:
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified or None


def make_session(
    *, connections: int, stall_timeout_s: float | None, trust_env: bool = True
) -> aiohttp.ClientSession:
    """One session (and keep-alive connection pool) for every download of a Downloader.

    The total timeout is off: a long download must never be cut by a wall-clock limit. The stall
    timeout applies to connecting and to every socket read instead.
    """
    connector = aiohttp.TCPConnector(limit=max(1, connections), limit_per_host=0, ttl_dns_cache=300)
    timeout = aiohttp.ClientTimeout(
        total=None, connect=None, sock_connect=stall_timeout_s, sock_read=stall_timeout_s
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        trust_env=trust_env,  # HTTP(S)_PROXY, NO_PROXY and .netrc
        read_bufsize=READ_BUFSIZE,
        # Cookies are not kept: a jar would grow with the list, and downloads should not depend on it.
        cookie_jar=aiohttp.DummyCookieJar(),
        # The list may come with many hosts; aiohttp adds a default User-Agent otherwise.
        headers={"User-Agent": f"asyncdl/{__version__}"},
    )


def translate(exc: BaseException, url: str) -> DownloadError:
    """One of our exceptions for an exception from aiohttp or the socket layer."""
    shown = redact_url(url)
    if isinstance(exc, DownloadError):
        return exc
    # Timeouts first: ServerTimeoutError is also a ClientConnectionError.
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return StallError(f"stalled: no data for the stall timeout ({shown})", url=url)
    if isinstance(exc, aiohttp.InvalidURL):
        return DownloadError(f"invalid URL: {shown}", url=url)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ConnectError(f"connection broke during the body: {_brief(exc)}", url=url)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ConnectError(f"cannot connect to {exc.host}:{exc.port}: {_brief(exc.os_error)}", url=url)
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        return ConnectError(f"connection error: {_brief(exc)}", url=url)
    return DownloadError(f"{type(exc).__name__}: {_brief(exc)}", url=url)


def _brief(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _strip_credentials(url: str) -> tuple[str, str | None]:
    """The URL without ``user:password@``, and the Basic Authorization value they make."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.netloc.rpartition("@")[2]
    pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    auth = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
    return urlunsplit(parts._replace(netloc=host)), auth


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(start, total) from ``bytes START-END/TOTAL`` or ``bytes */TOTAL``; None where absent."""
    if not value:
        return None, None
    unit, _, spec = value.strip().partition(" ")
    if unit.lower() != "bytes":
        return None, None
    span, _, total_text = spec.partition("/")
    total = int(total_text) if total_text.strip().isdigit() else None
    start_text = span.partition("-")[0].strip()
    start = int(start_text) if start_text.isdigit() else None
    return start, total


class Body:
    """An open response: status, what its headers say about the body, and the body's chunks."""

    def __init__(self, response: aiohttp.ClientResponse, *, url: str, requested_offset: int) -> None:
        self._response = response
        self.url = url  # the URL after redirects
        self.status = response.status
        headers = response.headers
        self.etag = headers.get("ETag")
        self.last_modified = headers.get("Last-Modified")
        self.content_disposition = headers.get("Content-Disposition")
        self.content_encoding = headers.get("Content-Encoding")
        self.accept_ranges = headers.get("Accept-Ranges", "").lower() == "bytes"
        length = headers.get("Content-Length")
        self.content_length = int(length) if length and length.isdigit() else None
        self.range_start, self.range_total = _content_range(headers.get("Content-Range"))
        self.requested_offset = requested_offset
        self.received = 0

    @property
    def validator(self) -> Validator:
        return Validator(etag=self.etag, last_modified=self.last_modified)

    @property
    def total_size(self) -> int | None:
        """Size of the whole remote file when the answer tells it."""
        if self.status == 206:
            if self.range_total is not None:
                return self.range_total
            if self.range_start is not None and self.content_length is not None:
                return self.range_start + self.content_length
            return None
        return self.content_length

    async def chunks(self, size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        """The body in chunks of at most ``size`` bytes; a short body raises IncompleteBody."""
        expected = self.content_length
        broken: BaseException | None = None
        try:
            async for chunk in self._response.content.iter_chunked(size):
                self.received += len(chunk)
                yield chunk
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            broken = exc
        if broken is not None:
            # Bytes that arrived before the connection broke are still in aiohttp's buffer, but its
            # reads raise the stored error first: hand them over, so the next attempt resumes after them.
            rest = _salvage(self._response.content)
            if rest:
                self.received += len(rest)
                yield rest
            if isinstance(broken, aiohttp.ClientPayloadError) and expected is not None:
                raise self._incomplete(expected) from broken
            raise translate(broken, self.url) from broken
        if expected is not None and self.received < expected:
            raise self._incomplete(expected)

    def _incomplete(self, expected: int) -> IncompleteBody:
        return IncompleteBody(
            f"body cut short: {self.received} of {expected} bytes",
            received=self.received,
            expected=expected,
            url=self.url,
        )

    def release(self) -> None:
        self._response.release()

    def close(self) -> None:
        self._response.close()


def _salvage(content: aiohttp.StreamReader) -> bytes:
    """What a broken body left in the stream's buffer (aiohttp keeps it, but read() raises first)."""
    read_nowait = getattr(content, "_read_nowait", None)  # private: fall back to nothing if it goes
    if read_nowait is None:
        return b""
    try:
        data = read_nowait(-1)
    except Exception:  # a stream in an unexpected state: keep what we have
        return b""
    return data if isinstance(data, bytes) else b""


def status_error(status: int, reason: str | None, headers: Mapping[str, str], url: str) -> DownloadError:
    """The exception for a status that is neither success nor redirect."""
    text = f"HTTP {status}{' ' + reason if reason else ''}"
    if status in RETRYABLE_STATUSES:
        retry_after = parse_retry_after(headers.get("Retry-After"), now=time.time())
        return RetryableStatus(text, status=status, retry_after=retry_after, url=url)
    return HTTPStatusError(text, status=status, url=url)


@asynccontextmanager
async def open_body(
    session: aiohttp.ClientSession,
    url: str,
    *,
    offset: int = 0,
    validator: Validator | None = None,
    headers: Iterable[tuple[str, str]] = (),
    method: str = "GET",
) -> AsyncIterator[Body]:
    """GET ``url`` (following redirects) asking for the bytes from ``offset`` on.

    Yields a :class:`Body` for 2xx and 416 answers; raises RetryableStatus / HTTPStatusError for the
    others, RedirectError for loops, and TransientError subclasses for network trouble. User headers and
    URL credentials go only to the origin of ``url``: a redirect to another origin drops them.
    """
    request_url, auth = _strip_credentials(url)
    first_origin = origin(request_url)
    user_headers = list(headers)
    seen = {request_url}
    response: aiohttp.ClientResponse | None = None
    try:
        for _hop in range(MAX_REDIRECTS + 1):
            same_origin = origin(request_url) == first_origin
            send: dict[str, str] = {}
            if same_origin:
                if auth is not None:
                    send["Authorization"] = auth
                for name, value in user_headers:
                    send[name] = value
            # Ask for the bytes as served: a compressed body could not be resumed or checked.
            send["Accept-Encoding"] = "identity"
            if offset > 0:
                send["Range"] = f"bytes={offset}-"
                if validator is not None and validator.if_range:
                    send["If-Range"] = validator.if_range
            try:
                response = await session.request(
                    method,
                    request_url,
                    headers=send,
                    allow_redirects=False,
                )
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                raise translate(exc, url) from exc
            if response.status in REDIRECT_STATUSES and "Location" in response.headers:
                location = urljoin(request_url, response.headers["Location"])
                response.release()
                response = None
                scheme = urlsplit(location).scheme.lower()
                if scheme not in SCHEMES:
                    raise RedirectError(f"redirect to a {scheme or 'relative'}: URL is not followed", url=url)
                location, _ = _strip_credentials(location)
                if location in seen:
                    raise RedirectError(f"redirect loop at {redact_url(location)}", url=url)
                seen.add(location)
                request_url = location
                continue
            break
        else:
            raise RedirectError(f"more than {MAX_REDIRECTS} redirects", url=url)
        assert response is not None
        if not (200 <= response.status < 300 or response.status == 416):
            error = status_error(response.status, response.reason, response.headers, url)
            response.release()
            raise error
        body = Body(response, url=request_url, requested_offset=offset)
        yield body
    except BaseException:
        if response is not None:
            response.close()
        raise
    else:
        response.release()
