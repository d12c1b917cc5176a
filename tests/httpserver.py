"""A small, well-behaved HTTP file server for tests (aiohttp.web on 127.0.0.1).

Routes are set per path: a body (served with Content-Length, ETag and Range support), or a status,
a redirect, extra headers. Every request is recorded with its headers, so tests can assert what the
client sent, and the number of requests in flight at once is tracked.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class FileRoute:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    ranges: bool = True
    redirect_to: str | None = None
    redirect_status: int = 302
    statuses: list[int] = field(default_factory=list)  # per-attempt statuses before the body

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha1(self.body).hexdigest()[:16] + '"'


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class FileServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.routes: dict[str, FileRoute] = {}
        self.requests: list[Seen] = []
        self.fallback: FileRoute | None = None  # answers paths with no route of their own
        self.in_flight = 0
        self.max_in_flight = 0
        # When set, requests wait until this many are in flight at once (then all go on):
        # a test of concurrency that does not depend on timing.
        self.gate: int | None = None
        self.gate_skip = 0  # the first requests that are not held (e.g. the one that learns the size)
        self._gate_open = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    def add(self, path: str, body: bytes = b"", **options: object) -> FileRoute:
        route = FileRoute(body=body, **options)  # type: ignore[arg-type]
        self.routes[path] = route
        return route

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def requests_for(self, path: str) -> list[Seen]:
        return [r for r in self.requests if r.path == path]

    async def __aenter__(self) -> FileServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(Seen(request.method, request.path_qs, dict(request.headers)))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None and len(self.requests) > self.gate_skip:
                if self.in_flight >= self.gate:
                    self._gate_open.set()
                await asyncio.wait_for(self._gate_open.wait(), timeout=10)
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        route = self.routes.get(request.path_qs) or self.routes.get(request.path) or self.fallback
        if route is None:
            return web.Response(status=404, text="not found")
        if route.statuses:
            status = route.statuses.pop(0)
            if status != 200:
                return web.Response(status=status, text=f"status {status}", headers=route.headers)
        if route.redirect_to is not None:
            return web.Response(status=route.redirect_status, headers={"Location": route.redirect_to})
        if route.status != 200:
            return web.Response(status=route.status, text=f"status {route.status}", headers=route.headers)
        body = route.body
        headers = {"ETag": route.etag, **route.headers}
        if route.ranges:
            headers["Accept-Ranges"] = "bytes"
        range_header = request.headers.get("Range")
        if_range = request.headers.get("If-Range")
        if route.ranges and range_header and (if_range is None or if_range == route.etag):
            first, _, last = range_header.removeprefix("bytes=").partition("-")
            start = int(first)
            if start >= len(body):
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(body)}"})
            end = min(int(last), len(body) - 1) if last else len(body) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(body)}"
            return web.Response(status=206, body=body[start : end + 1], headers=headers)
        return web.Response(body=body, headers=headers)
