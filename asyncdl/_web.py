"""asyncdl's HTTP server side: the only importer of ``aiohttp.web``.

:class:`DemoServer` serves the files of `asyncdl demo` (``_demo.py`` decides what to answer) on two
origins of 127.0.0.1 at free ports: the files, and the origin that answers 429 at first. No access
log is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from types import TracebackType

from aiohttp import web

from ._demo import DemoEvents, DemoFile, DemoPlan, OpeningOrigin, answer, content

_CHUNK_SIZE = 64 * 1024


async def _start(app: web.Application, host: str) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host`` at a free port: its runner (to clean up) and the port."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, 0)
        await site.start()
        server = site._server
        assert server is not None
        port: int = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
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
