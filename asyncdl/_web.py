"""asyncdl's HTTP server side: the only importer of ``aiohttp.web``.

:class:`DemoServer` serves the files of `asyncdl demo` (``_demo.py`` decides what to answer) on two
origins of 127.0.0.1 at free ports: the files, and the origin that answers 429 at first.

:class:`WebServer` serves `asyncdl daemon`: a JSON-RPC endpoint over HTTP POST and WebSocket, the
static files of a page shipped in the package, and notifications pushed to every open WebSocket.
What the calls mean is not its business: it hands each request body to a handler and sends back its
answer. It enforces what keeps a local server safe from the web pages a user visits:

- it listens on the host it is given (loopback unless told otherwise);
- a request that carries an ``Origin`` header other than the server's own (a script of another web
  page) is refused with 403, on HTTP and on the WebSocket handshake, unless ``allow_origin_all``;
- request bodies and WebSocket messages over ``MAX_BODY_BYTES`` are refused (413 / close).

No access log is written (URLs and bodies may carry secrets).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import weakref
from collections.abc import Awaitable, Callable
from importlib import resources
from types import TracebackType
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from ._demo import DemoEvents, DemoFile, DemoPlan, OpeningOrigin, answer, content

_CHUNK_SIZE = 64 * 1024


async def _start(app: web.Application, host: str, port: int = 0) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (0: a free port): its runner (to clean up) and the port."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    except BaseException:
        await runner.cleanup()
        raise
    return runner, port


class DemoServer:
    """The demo's two origins on ``host``: ``url`` serves the files, ``limited_url`` the files of the
    origin that answers 429 at first. ``events`` records what was done, for the story at the end."""

    def __init__(self, plan: DemoPlan, *, host: str = "127.0.0.1") -> None:
        self._plan = plan
        self._host = host
        self._runners: list[web.AppRunner] = []
        self._gate = OpeningOrigin(plan.limited_for_s)
        self._broken: set[str] = set()  # files whose connection was broken once already
        self.events = DemoEvents()
        self.url = ""
        self.limited_url = ""

    async def __aenter__(self) -> DemoServer:
        try:
            for limited in (False, True):
                app = web.Application()
                app.router.add_get("/{path:.+}", functools.partial(self._get, limited=limited))
                runner, port = await _start(app, self._host)
                self._runners.append(runner)
                url = f"http://{self._host}:{port}"
                if limited:
                    self.limited_url = url
                else:
                    self.url = url
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()

    async def _get(self, request: web.Request, *, limited: bool) -> web.StreamResponse:
        demo_file = self._plan.by_path.get(request.path)
        if demo_file is None or demo_file.limited != limited:
            return web.Response(status=404, text="not found")
        closed_for = self._gate.closed_for(asyncio.get_running_loop().time()) if demo_file.limited else None
        decision = answer(
            demo_file,
            range_header=request.headers.get("Range"),
            if_range=request.headers.get("If-Range"),
            closed_for_s=closed_for,
        )
        if decision.status == 429:
            self.events.too_many_requests += 1
            self.events.limited_paths.add(demo_file.path)
            return web.Response(
                status=429, text="slow down", headers={"Retry-After": str(decision.retry_after_s)}
            )
        await asyncio.sleep(demo_file.delay_s)  # the latency of a server far away
        headers = {"ETag": demo_file.etag, "Accept-Ranges": "bytes", "Content-Type": demo_file.content_type}
        if decision.status == 416:
            return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{demo_file.size}"})
        response = web.StreamResponse(status=decision.status, headers=headers)
        if decision.status == 206:
            self.events.resumes.append((demo_file.path, decision.start))
            response.headers["Content-Range"] = f"bytes {decision.start}-{decision.end - 1}/{demo_file.size}"
        if demo_file.chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = decision.end - decision.start
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):  # the client went away: nothing left to do
            await self._send(request, response, demo_file, decision.start, decision.end)
        return response

    async def _send(
        self, request: web.Request, response: web.StreamResponse, demo_file: DemoFile, start: int, end: int
    ) -> None:
        """Send bytes ``start`` to ``end``, paced at the file's rate; break the connection at its
        ``breaks_at`` the first time an answer gets there."""
        breaks_at = demo_file.breaks_at
        if breaks_at is not None and (demo_file.path in self._broken or not start < breaks_at < end):
            breaks_at = None
        loop = asyncio.get_running_loop()
        began = loop.time()
        sent = 0
        for piece in content(demo_file, start, breaks_at or end, chunk_size=_CHUNK_SIZE):
            await response.write(piece)
            sent += len(piece)
            if demo_file.rate_bps:
                ahead_s = sent / demo_file.rate_bps - (loop.time() - began)
                if ahead_s > 0:
                    await asyncio.sleep(ahead_s)
        if breaks_at is not None:
            self._broken.add(demo_file.path)
            self.events.breaks.append((demo_file.path, breaks_at, demo_file.size))
            assert request.transport is not None
            request.transport.close()  # half-way: the client sees a body shorter than its Content-Length
            return
        await response.write_eof()


# --- asyncdl daemon -------------------------------------------------------------------------------

MAX_BODY_BYTES = 2 * 1024 * 1024
_LOOPBACK_NAMES = ("localhost",)
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The page talks to its own origin only; nothing is loaded from elsewhere.
_PAGE_POLICY = (
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)

# A handler answers one request body: (HTTP status, JSON text); None for no answer.
Handler = Callable[[bytes], Awaitable[tuple[int, str] | None]]


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def origin_allowed(origin: str | None, *, host_header: str | None, port: int, listen_all: bool) -> bool:
    """Whether a request with this ``Origin`` may use the server (pure; see the module docstring).

    No Origin: not a script of a web page (curl, aria2p, other programs): allowed. Otherwise the
    Origin must be this server itself: ``http://`` a loopback name at our port, or — when the server
    listens on every interface — the host the request was addressed to.
    """
    if origin is None:
        return True
    parts = urlsplit(origin)
    try:
        origin_port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    host = parts.hostname or ""
    if parts.scheme != "http" or origin_port != port:
        return False
    if _is_loopback(host):
        return True
    if listen_all and host_header:
        return origin.lower() == f"http://{host_header}".lower()
    return False


class WebServer:
    """JSON-RPC at ``rpc_path`` (POST and WebSocket) and a static page at ``/``."""

    def __init__(
        self,
        handler: Handler,
        *,
        rpc_path: str = "/jsonrpc",
        page_package: str | None = None,  # "package/folder" of the page's files
        allow_origin_all: bool = False,
        listen_all: bool = False,
    ) -> None:
        self._handler = handler
        self._rpc_path = rpc_path
        self._page_package = page_package
        self._allow_origin_all = allow_origin_all
        self._listen_all = listen_all
        self._sockets: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.host = ""

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: a free port); the port."""
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._guard])
        app.router.add_route("POST", self._rpc_path, self._post)
        app.router.add_route("GET", self._rpc_path, self._websocket)
        app.router.add_route("OPTIONS", self._rpc_path, self._preflight)
        if self._page_package is not None:
            app.router.add_route("GET", "/", self._page)
            app.router.add_route("GET", "/{name}", self._page)
        self._runner, self.port = await _start(app, host, port)
        self.host = host
        return self.port

    async def aclose(self) -> None:
        for socket in list(self._sockets):
            with contextlib.suppress(Exception):
                await socket.close()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def broadcast(self, text: str) -> None:
        """Send ``text`` to every open WebSocket (notifications)."""
        for socket in list(self._sockets):
            if not socket.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await socket.send_str(text)

    # --- handlers ---
    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not self._allow_origin_all and not origin_allowed(
            request.headers.get("Origin"),
            host_header=request.headers.get("Host"),
            port=self.port,
            listen_all=self._listen_all,
        ):
            return web.json_response(
                {"jsonrpc": "2.0", "id": None, "error": {"code": 1, "message": "Origin not allowed"}},
                status=403,
            )
        response = await handler(request)
        if self._allow_origin_all and request.path == self._rpc_path:
            response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    async def _preflight(self, request: web.Request) -> web.Response:
        headers = {"Access-Control-Allow-Methods": "POST, GET, OPTIONS", "Access-Control-Max-Age": "1728000"}
        if self._allow_origin_all:
            headers["Access-Control-Allow-Headers"] = "Content-Type"
        return web.Response(status=200, headers=headers)

    async def _post(self, request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return web.Response(status=413, text="request body too large")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return web.Response(status=413, text="request body too large")
        answer = await self._handler(body)
        if answer is None:
            return web.Response(status=204)
        status, text = answer
        return web.Response(status=status, text=text, content_type="application/json-rpc")

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        socket = web.WebSocketResponse(max_msg_size=MAX_BODY_BYTES, heartbeat=None)
        if not socket.can_prepare(request).ok:
            return web.Response(status=400, text="a JSON-RPC request is a POST or a WebSocket")
        await socket.prepare(request)
        self._sockets.add(socket)
        try:
            async for message in socket:
                if message.type != WSMsgType.TEXT:
                    if message.type == WSMsgType.ERROR:
                        break
                    continue
                answer = await self._handler(message.data.encode())
                if answer is not None and not socket.closed:
                    await socket.send_str(answer[1])
        except asyncio.CancelledError:
            raise
        except ConnectionError:
            pass
        finally:
            self._sockets.discard(socket)
        return socket

    async def _page(self, request: web.Request) -> web.Response:
        assert self._page_package is not None
        name = request.match_info.get("name", "") or "index.html"
        suffix = name[name.rfind(".") :] if "." in name else ""
        if "/" in name or name.startswith(".") or suffix not in _CONTENT_TYPES:
            raise web.HTTPNotFound()
        package, _, folder = self._page_package.partition("/")
        resource = resources.files(package).joinpath(folder).joinpath(name)
        if not resource.is_file():
            raise web.HTTPNotFound()
        return web.Response(
            body=resource.read_bytes(),
            headers={
                "Content-Type": _CONTENT_TYPES[suffix],
                "Content-Security-Policy": _PAGE_POLICY,
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "no-cache",
            },
        )
