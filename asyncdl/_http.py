"""The only module that imports aiohttp: the session, opening a body at an offset, error translation.

Everything aiohttp raises is translated here, once, into the tree of ``_exceptions`` (``raise ... from
exc``), so the rest of asyncdl never sees an aiohttp type. Timeouts are translated first: aiohttp's
``ServerTimeoutError`` is both a connection error and a ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import netrc
import os
import ssl
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import aiohttp

from . import _splice, _tlspump
from ._exceptions import (
    ConnectError,
    DownloadError,
    HTTPStatusError,
    IncompleteBody,
    RedirectError,
    RetryableStatus,
    StallError,
    UsageError,
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
# Connections the pool holds beyond -j x -x, for downloads whose list options ask more (split=N).
EXTRA_CONNECTIONS = 16
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


# --- the environment: proxies and .netrc ---
# aiohttp's trust_env looks both up in a worker thread on every request (two thread hops per file,
# a large share of the cost of a small file). We read them once, when a session is made, and
# decide per host in memory.


class Environment:
    """Proxies (HTTP(S)_PROXY, ALL_PROXY, NO_PROXY) and .netrc credentials, read once."""

    def __init__(self, proxies: dict[str, str], credentials: netrc.netrc | None) -> None:
        self._proxies = proxies
        self._netrc = credentials
        self._proxy_cache: dict[tuple[str, str], dict[str, Any]] = {}

    @classmethod
    def from_os(cls) -> Environment:
        path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
        try:
            credentials: netrc.netrc | None = netrc.netrc(path)
        except (OSError, netrc.NetrcParseError):
            credentials = None
        return cls(urllib.request.getproxies_environment(), credentials)

    def proxy_for(self, url: str) -> str | None:
        """The proxy for ``url``, unless NO_PROXY exempts its host."""
        return self.proxy_arguments(url).get("proxy")

    def proxy_arguments(self, url: str) -> dict[str, Any]:
        """Keyword arguments for aiohttp's request: ``proxy`` (and ``proxy_headers`` for its credentials)."""
        if not self._proxies:
            return {}
        parts = urlsplit(url)
        key = (parts.scheme.lower(), parts.netloc.rpartition("@")[2])
        found = self._proxy_cache.get(key)
        if found is None:
            found = self._decide_proxy(*key)
            if len(self._proxy_cache) < 4096:
                self._proxy_cache[key] = found
        return found

    def _decide_proxy(self, scheme: str, host_port: str) -> dict[str, Any]:
        bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
        if bypass(host_port, self._proxies):
            return {}
        proxy = self._proxies.get(scheme) or self._proxies.get("all")
        if not proxy:
            return {}
        bare, auth = _strip_credentials(proxy)
        return {"proxy": bare, "proxy_headers": {"Proxy-Authorization": auth}} if auth else {"proxy": bare}

    @property
    def has_netrc(self) -> bool:
        return self._netrc is not None

    def authorization(self, host: str) -> str | None:
        """The Basic Authorization value that .netrc gives ``host``, if any."""
        entry = self._netrc.authenticators(host) if self._netrc is not None else None
        if not entry:
            return None
        login, _account, password = entry
        return _basic(login or "", password or "")


# Refreshed by make_session(), so each Downloader sees the environment as it was when it opened.
_environment = Environment({}, None)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def basic_authorization(user: str, password: str) -> str:
    """The Authorization value of HTTP Basic authentication for ``user`` and ``password``."""
    return _basic(user, password)


class CookieSource(Protocol):
    """Gives the Cookie header for a URL (None: no cookie may go there)."""

    def cookie_header(self, url: str) -> str | None: ...


@dataclass(frozen=True, slots=True)
class HopOptions:
    """What goes with every hop of a request, to whichever origin: ``headers`` (User-Agent,
    Referer) and the cookies of ``cookies`` that may go to that hop's URL."""

    headers: tuple[tuple[str, str], ...] = ()
    cookies: CookieSource | None = None


def tls_context(*, ca_certificates: str | None, verify: bool) -> ssl.SSLContext | bool:
    """What the connector gets as ``ssl``: True (the default checks), False (none), or a context
    that trusts the PEM text ``ca_certificates`` alone. A bad PEM raises ``ssl.SSLError``."""
    if not verify:
        return False
    if ca_certificates is None:
        return True
    return ssl.create_default_context(cadata=ca_certificates)


def read_ca_certificates(path: str | os.PathLike[str]) -> str:
    """The PEM text of the CA certificates in ``path``; UsageError when it cannot be used."""
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except OSError as exc:
        raise UsageError(f"cannot read CA certificate file {path}: {exc.strerror or exc}") from None
    try:
        ssl.create_default_context(cadata=text)
    except (ssl.SSLError, ValueError) as exc:
        raise UsageError(f"no usable PEM CA certificate in {path}: {_brief(exc)}") from None
    return text


def make_session(
    *,
    connections: int,
    stall_timeout_s: float | None,
    ca_certificates: str | None = None,
    verify: bool = True,
) -> aiohttp.ClientSession:
    """One session (and keep-alive connection pool) for every download of a Downloader.

    The total timeout is off: a long download must never be cut by a wall-clock limit. The stall
    timeout applies to connecting and to every socket read instead. Proxies and .netrc come from
    the environment, read here once and decided per request in memory (see ``Environment``).
    TLS: see ``tls_context``.
    """
    global _environment  # noqa: PLW0603 - one snapshot shared by every request of the process
    _environment = Environment.from_os()
    connector = aiohttp.TCPConnector(
        # Room beyond -j x -x for the downloads whose own split asks more connections.
        limit=max(1, connections) + EXTRA_CONNECTIONS,
        limit_per_host=0,
        ttl_dns_cache=300,
        ssl=tls_context(ca_certificates=ca_certificates, verify=verify),
    )
    timeout = aiohttp.ClientTimeout(
        total=None, connect=None, sock_connect=stall_timeout_s, sock_read=stall_timeout_s
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        read_bufsize=READ_BUFSIZE,
        # Cookies are not kept: a jar would grow with the list, and downloads should not depend on it.
        cookie_jar=aiohttp.DummyCookieJar(),
        # The list may come with many hosts; aiohttp adds a default User-Agent otherwise.
        headers={"User-Agent": f"asyncdl/{__version__}"},
    )


def set_connection_limit(session: aiohttp.ClientSession, connections: int) -> None:
    """Resize the session's connection pool while it is in use (``jobs`` changed at run time).

    aiohttp has no public setter; its connector reads ``_limit`` each time it hands out a
    connection, so a larger value lets waiting requests through at the next release or request.
    """
    connector = session.connector
    if isinstance(connector, aiohttp.BaseConnector):
        connector._limit = max(1, connections)


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
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        # Not transient: the same certificate will be refused on every attempt.
        return DownloadError(
            f"TLS certificate of {exc.host}:{exc.port} not trusted: {_brief(exc.certificate_error)}", url=url
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ConnectError(
            f"cannot connect to {exc.host}:{exc.port}: {_brief(exc.os_error)}", url=url, connecting=True
        )
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        return ConnectError(f"connection error: {_brief(exc)}", url=url)
    return DownloadError(f"{type(exc).__name__}: {_brief(exc)}", url=url)


def _brief(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _strip_credentials(url: str) -> tuple[str, str | None]:
    """The URL without ``user:password@``, and the Basic Authorization value they make."""
    if "@" not in url:
        return url, None  # the common case, without parsing
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.netloc.rpartition("@")[2]
    auth = _basic(unquote(parts.username or ""), unquote(parts.password or ""))
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
        self.chunked = "Transfer-Encoding" in headers  # framing other than Content-Length
        self.accept_ranges = headers.get("Accept-Ranges", "").lower() == "bytes"
        length = headers.get("Content-Length")
        self.content_length = int(length) if length and length.isdigit() else None
        self.range_start, self.range_total = _content_range(headers.get("Content-Range"))
        self.requested_offset = requested_offset
        self.received = 0
        self._socket: int | None = None  # set by detach(): the body's rest is read from it
        self._pipes: _splice.Pipes | None = None  # and through these
        self._tls: _tlspump.Detached | None = None  # over HTTPS: and decrypted with this

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

    @property
    def splice_candidate(self) -> bool:
        """Whether the rest of this body may go from the socket to the file in a thread of its own:
        by splice over plain HTTP (see _splice), decrypted by that thread over HTTPS (see _tlspump)."""
        length = self.content_length
        return (
            (_splice.AVAILABLE or _tlspump.AVAILABLE)
            and length is not None
            and length - self.received >= _splice.MIN_REST
            and self.content_encoding in (None, "identity")
            and not self.chunked
        )

    def detach(self) -> tuple[bytes, int | None]:
        """The body bytes aiohttp holds, and the socket for the rest (None: go on with ``chunks()``)."""
        tls = _tlspump.is_tls(self._response)
        if not (_tlspump.AVAILABLE if tls else _splice.AVAILABLE):
            return b"", None
        try:
            pipes = _splice.Pipes(data=not tls)
        except OSError:  # out of descriptors: aiohttp's reader needs none
            return b"", None
        try:
            if tls:
                buffered, self._tls = _tlspump.detach_tls(self._response)
                sock = None if self._tls is None else self._tls.sock
            else:
                buffered, sock = _splice.detach_socket(self._response)
        except BaseException:
            pipes.close()
            raise
        self.received += len(buffered)
        if sock is None:
            pipes.close()
        else:
            self._socket, self._pipes = sock, pipes  # closed by splice_rest, else by drop_pipes
        return buffered, sock

    def drop_pipes(self) -> None:
        """Close the pipes of a detached body whose splice never started (open_body calls this)."""
        pipes, self._pipes = self._pipes, None
        if pipes is not None:
            pipes.close()

    async def splice_rest(
        self, out: int, *, offset: int, stall_timeout: float | None, on_bytes: Callable[[int], None]
    ) -> None:
        """After ``detach()`` gave a socket: the rest of the body into the file ``out`` from ``offset``.

        A short body raises IncompleteBody; a failed write raises ``_splice.WriteFailed``.
        """
        assert self.content_length is not None and self._socket is not None and self._pipes is not None
        expected = self.content_length
        pipes, self._pipes = self._pipes, None  # the pump closes them

        def counted(n: int) -> None:
            self.received += n
            on_bytes(n)

        tls = self._tls
        # Over TLS the thread decrypts with asyncio's SSLObject; else it splices the socket's bytes.
        pump = functools.partial(_tlspump.pump, tls) if tls else functools.partial(_splice.pump, self._socket)
        try:
            await pump(
                out,
                pipes,
                offset=offset,
                count=expected - self.received,
                stall_timeout=stall_timeout,
                on_bytes=counted,
                url=self.url,
            )
        except OSError as exc:
            raise translate(exc, self.url) from exc
        finally:
            if tls is not None:
                tls.abort()  # no TLS close: the thread left the SSLObject mid-stream
            self._response.close()  # aiohttp's parser still expects the body: never reuse this connection
        if self.received < expected:
            raise self._incomplete(expected)

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


def request_headers(
    request_url: str,
    first_url: str,
    auth: str | None,
    user_headers: list[tuple[str, str]],
) -> dict[str, str]:
    """The headers for one hop of a request: the user's and the URL's credentials only at the origin
    the user named (``first_url``'s; a redirect elsewhere drops them); .netrc credentials for the host
    they name."""
    send: dict[str, str] = {}
    # The first hop (nearly every request) needs no parsing to know it is at the named origin.
    if request_url == first_url or origin(request_url) == origin(first_url):
        if auth is not None:
            send["Authorization"] = auth
        for name, value in user_headers:
            send[name] = value
    if _environment.has_netrc and not any(name.lower() == "authorization" for name in send):
        from_netrc = _environment.authorization(urlsplit(request_url).hostname or "")
        if from_netrc is not None:
            send["Authorization"] = from_netrc
    return send


def add_hop_headers(send: dict[str, str], request_url: str, hop: HopOptions) -> None:
    """Add what goes with every hop to ``send``: a user's own header of that name stays first."""
    for name, value in hop.headers:
        lowered = name.lower()
        if not any(given.lower() == lowered for given in send):
            send[name] = value
    if hop.cookies is not None:
        cookie = hop.cookies.cookie_header(request_url)
        if cookie is not None:
            mine = send.get("Cookie")
            send["Cookie"] = f"{mine}; {cookie}" if mine else cookie


@asynccontextmanager
async def open_body(
    session: aiohttp.ClientSession,
    url: str,
    *,
    offset: int = 0,
    end: int | None = None,
    validator: Validator | None = None,
    headers: Iterable[tuple[str, str]] = (),
    method: str = "GET",
    hop: HopOptions | None = None,
) -> AsyncIterator[Body]:
    """GET ``url`` (following redirects) asking for the bytes from ``offset`` on (to ``end``, inclusive).

    Yields a :class:`Body` for 2xx and 416 answers; raises RetryableStatus / HTTPStatusError for the
    others, RedirectError for loops, and TransientError subclasses for network trouble. User headers and
    URL credentials go only to the origin of ``url``: a redirect to another origin drops them.
    ``hop`` is sent on every hop (its cookies where they may go).
    """
    request_url, auth = _strip_credentials(url)
    first_url = request_url
    user_headers = list(headers)
    seen = {request_url}
    response: aiohttp.ClientResponse | None = None
    try:
        for _hop in range(MAX_REDIRECTS + 1):
            send = request_headers(request_url, first_url, auth, user_headers)
            if hop is not None:
                add_hop_headers(send, request_url, hop)
            # Ask for the bytes as served: a compressed body could not be resumed or checked.
            send["Accept-Encoding"] = "identity"
            if offset > 0 or end is not None:
                send["Range"] = f"bytes={offset}-{'' if end is None else end}"
                if validator is not None and validator.if_range:
                    send["If-Range"] = validator.if_range
            try:
                response = await session.request(
                    method,
                    request_url,
                    headers=send,
                    allow_redirects=False,
                    **_environment.proxy_arguments(request_url),
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
        try:
            yield body
        finally:
            body.drop_pipes()
    except BaseException:
        if response is not None:
            response.close()
        raise
    else:
        response.release()


# --- uploads ---
# (imports kept here, with the code that needs them, so this section stays self-contained)
import mimetypes  # noqa: E402
from collections.abc import AsyncGenerator  # noqa: E402

from ._exceptions import UploadError  # noqa: E402

Session = aiohttp.ClientSession
"""The session type, for modules that must not import aiohttp themselves."""

ANSWER_SNIPPET_CHARS = 200
# Enough bytes for 200 characters in any encoding; the rest of an error answer is not read.
_ANSWER_READ_BYTES = 4096
# A 2xx answer longer than this is not read to its end: the connection is closed instead.
_SUCCESS_DRAIN_BYTES = 1024 * 1024
# We frame the body ourselves; a user's framing header would contradict it.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})


@dataclass(frozen=True)
class UploadBody:
    """What an upload sends.

    ``chunks()`` is called once per request that carries the body, so a 307/308 redirect re-reads
    the content from the start (a fresh file handle), never the rest of a half-read stream. ``size``
    is sent as Content-Length; None sends the body chunked. ``replayable`` is False for a stream
    that cannot be read twice (standard input). With ``form_field`` the body is multipart/form-data:
    ``fields`` first, then the file under ``form_field`` with ``filename``.
    """

    chunks: Callable[[], AsyncGenerator[bytes, None]]
    size: int | None
    filename: str
    replayable: bool = True
    form_field: str | None = None
    fields: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class UploadAnswer:
    """The final 2xx answer to an upload."""

    status: int
    reason: str
    url: str  # after redirects


class _StreamedBody(aiohttp.Payload):
    """A request body (or multipart part) fed from ``UploadBody.chunks()``, one chunk at a time.

    aiohttp wraps whatever a body raises into a connection error; ``error`` keeps the original (a
    read failure, a write stall, a bug) so the caller raises that instead.
    """

    _autoclose = True  # nothing to close: the chunk generator owns and closes its file

    def __init__(
        self,
        body: UploadBody,
        *,
        content_type: str,
        on_chunk: Callable[[int], None],
        stall_timeout_s: float | None,
        url: str,
    ) -> None:
        super().__init__(body, content_type=content_type)
        self._size = body.size
        self._body = body
        self._on_chunk = on_chunk
        self._stall_timeout_s = stall_timeout_s
        self._url = url
        self.error: Exception | None = None

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a streamed upload body cannot be decoded to text")

    async def write(self, writer: aiohttp.abc.AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: aiohttp.abc.AbstractStreamWriter, content_length: int | None
    ) -> None:
        self._consumed = True
        chunks = self._body.chunks()
        try:
            async for chunk in chunks:
                try:
                    # write() waits while the socket buffer is full: a receiver that stops reading
                    # would otherwise hold the upload forever (aiohttp has no write timeout).
                    await asyncio.wait_for(writer.write(chunk), self._stall_timeout_s)
                except asyncio.TimeoutError as exc:
                    raise StallError(
                        f"stalled: the server took no data for the stall timeout ({redact_url(self._url)})",
                        url=self._url,
                    ) from exc
                self._on_chunk(len(chunk))
        except (aiohttp.ClientError, OSError):
            raise  # the connection broke: aiohttp reports that itself
        except Exception as exc:
            # Ours (a read error, a stall) or a bug: either way not a connection problem.
            self.error = exc
            raise
        finally:
            await chunks.aclose()


def _upload_data(body: UploadBody, payload: _StreamedBody) -> aiohttp.Payload:
    if body.form_field is None:
        return payload
    writer = aiohttp.MultipartWriter("form-data")
    for name, value in body.fields:
        part = writer.append(value)
        part.set_content_disposition("form-data", name=name)
    writer.append_payload(payload)
    payload.set_content_disposition("form-data", name=body.form_field, filename=body.filename)
    return writer


async def _answer_snippet(response: aiohttp.ClientResponse) -> str:
    """The start of an error answer, on one line, at most ANSWER_SNIPPET_CHARS characters."""
    data = bytearray()
    try:
        while len(data) < _ANSWER_READ_BYTES:
            piece = await response.content.read(_ANSWER_READ_BYTES - len(data))
            if not piece:
                break
            data += piece
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
        pass  # the status says enough; the answer text is a courtesy
    text = " ".join(bytes(data).decode("utf-8", "replace").split())
    if len(text) > ANSWER_SNIPPET_CHARS:
        text = text[: ANSWER_SNIPPET_CHARS - 1] + "…"
    return text


async def _finish_success(response: aiohttp.ClientResponse) -> None:
    """Read a short 2xx answer to its end so the connection can serve the next upload."""
    received = 0
    try:
        while received <= _SUCCESS_DRAIN_BYTES:
            piece = await response.content.read(64 * 1024)
            if not piece:
                # Waits for the body writer to end before the connection goes back to the pool.
                await response.wait_for_close()
                return
            received += len(piece)
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
        pass  # the upload got its 2xx; only the connection is lost
    response.close()


def upload_status_error(
    status: int, reason: str | None, headers: Mapping[str, str], url: str, answer: str
) -> DownloadError | UploadError:
    """RetryableStatus (with Retry-After) or UploadError for a non-2xx answer, with its text."""
    base = status_error(status, reason, headers, url)
    text = f"{base}: {answer}" if answer else str(base)
    if isinstance(base, RetryableStatus):
        return RetryableStatus(text, status=status, retry_after=base.retry_after, url=url)
    return UploadError(text, status=status, url=url)


async def send_upload(
    session: aiohttp.ClientSession,
    url: str,
    body: UploadBody,
    *,
    method: str = "PUT",
    headers: Iterable[tuple[str, str]] = (),
    stall_timeout_s: float | None = None,
    on_send: Callable[[], None] = lambda: None,
    on_chunk: Callable[[int], None] = lambda n: None,
) -> UploadAnswer:
    """Send ``body`` to ``url`` with ``method``, following redirects; the final 2xx answer.

    ``on_send()`` is called each time the body starts from its beginning (a redirect re-sends it),
    ``on_chunk(n)`` after each chunk handed to the connection. Redirects go as in browsers and
    aiohttp: 307/308 repeat the method and re-send the body from the start; 303, and 301/302 after
    a POST, continue with a GET without body; 301/302 after another method repeat it with the body.
    User headers and URL credentials go only to the origin of ``url``.

    Raises RetryableStatus (408/429/5xx, with Retry-After) and other TransientErrors for what is
    worth another attempt; UploadError for other non-2xx answers (status and the start of the
    answer in the message); RedirectError; StorageError when the content cannot be read.
    """
    request_url, auth = _strip_credentials(url)
    first_url = request_url
    user_headers = [(n, v) for n, v in headers if n.lower() not in _FRAMING_HEADERS]
    if body.form_field is not None:
        # The multipart Content-Type carries the boundary: a user's Content-Type would break it.
        user_headers = [(n, v) for n, v in user_headers if n.lower() != "content-type"]
    content_type = "application/octet-stream"
    if body.form_field is not None:
        content_type = mimetypes.guess_type(body.filename)[0] or content_type
    seen = {request_url}
    send_body = True
    for _hop in range(MAX_REDIRECTS + 1):
        send = request_headers(request_url, first_url, auth, user_headers)
        # An error answer is read as text: ask for it uncompressed.
        send["Accept-Encoding"] = "identity"
        payload: _StreamedBody | None = None
        data: aiohttp.Payload | None = None
        if send_body:
            payload = _StreamedBody(
                body,
                content_type=content_type,
                on_chunk=on_chunk,
                stall_timeout_s=stall_timeout_s,
                url=url,
            )
            data = _upload_data(body, payload)
            on_send()
        try:
            response = await session.request(
                method,
                request_url,
                data=data,
                headers=send,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            if payload is not None and payload.error is not None:
                raise payload.error from exc
            raise translate(exc, url) from exc
        try:
            status = response.status
            if status in REDIRECT_STATUSES and "Location" in response.headers:
                location = urljoin(request_url, response.headers["Location"])
                scheme = urlsplit(location).scheme.lower()
                if scheme not in SCHEMES:
                    raise RedirectError(f"redirect to a {scheme or 'relative'}: URL is not followed", url=url)
                location, _ = _strip_credentials(location)
                if location in seen:
                    raise RedirectError(f"redirect loop at {redact_url(location)}", url=url)
                seen.add(location)
                if status == 303 or (status in (301, 302) and method == "POST"):
                    method, send_body = "GET", False
                if send_body and not body.replayable:
                    raise UploadError(
                        f"HTTP {status} redirect to {redact_url(location)}: standard input cannot be "
                        "sent a second time",
                        status=status,
                        url=url,
                    )
                request_url = location
                continue
            if 200 <= status < 300:
                answer = UploadAnswer(status=status, reason=response.reason or "", url=request_url)
                await _finish_success(response)
                return answer
            raise upload_status_error(
                status, response.reason, response.headers, url, await _answer_snippet(response)
            )
        finally:
            # A redirect or an error may come before the whole body is sent: closing drops the
            # connection (and stops the body writer) rather than reusing a connection mid-request.
            if not response.closed:
                response.close()
    raise RedirectError(f"more than {MAX_REDIRECTS} redirects", url=url)
