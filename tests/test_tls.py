"""TLS certificates are verified: a server with a certificate nobody vouches for is refused."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from asyncdl import Status, download_many


@pytest.fixture
def self_signed(tmp_path: Path) -> ssl.SSLContext:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


@asynccontextmanager
async def tls_server(
    context: ssl.SSLContext, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> AsyncIterator[str]:
    """An aiohttp server on 127.0.0.1 answering every path with ``handler``; yields its origin."""
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        yield f"https://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_an_unverifiable_certificate_fails_the_download(
    self_signed: ssl.SSLContext, tmp_path: Path
) -> None:
    served: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        served.append(request.path)
        return web.Response(body=b"secret")

    async with tls_server(self_signed, handler) as origin:
        (result,) = await download_many([f"{origin}/f"], tmp_path / "out")
    assert result.status is Status.FAILED
    assert "certificate" in (result.error or "").lower()
    assert result.attempts == 1  # refused for good: no retry can help
    assert served == []  # no request reached the server
    assert list((tmp_path / "out").iterdir()) == []
