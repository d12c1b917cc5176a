"""Proxies and .netrc from the environment, decided without a thread hop per request."""

from __future__ import annotations

from pathlib import Path

import pytest
from httpserver import FileServer

from asyncdl import Status, download_many, upload
from asyncdl._http import Environment


def test_proxy_variables_and_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://user:pw@proxy.test:3128")
    monkeypatch.setenv("HTTPS_PROXY", "http://secure-proxy.test:3128")
    monkeypatch.setenv("NO_PROXY", "internal.test,127.0.0.1")
    env = Environment.from_os()
    assert env.proxy_arguments("http://example.test/a") == {
        "proxy": "http://proxy.test:3128",
        "proxy_headers": {"Proxy-Authorization": "Basic dXNlcjpwdw=="},
    }
    assert env.proxy_for("https://example.test/a") == "http://secure-proxy.test:3128"
    assert env.proxy_for("http://internal.test/a") is None
    assert env.proxy_for("http://127.0.0.1:8080/a") is None


def test_no_proxy_variables_means_direct(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert Environment.from_os().proxy_arguments("http://example.test/") == {}


async def test_netrc_credentials_go_to_their_host_only(
    file_server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine 127.0.0.1 login alice password wonderland\n")
    netrc_file.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc_file))
    file_server.add("/a", b"a")
    async with FileServer() as other:
        other.add("/b", b"b")
        other_url = other.url("/b").replace("127.0.0.1", "localhost")
        results = await download_many([file_server.url("/a"), other_url], tmp_path / "out")
    assert [r.status for r in results] == [Status.OK, Status.OK]
    assert file_server.requests[0].headers["Authorization"] == "Basic YWxpY2U6d29uZGVybGFuZA=="
    assert "Authorization" not in other.requests[0].headers


async def test_http_proxy_from_the_environment_is_used(
    file_server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The test server plays the proxy: a request for another host arrives there in absolute form.
    monkeypatch.setenv("HTTP_PROXY", file_server.url(""))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    file_server.add("/via-proxy.txt", b"proxied")
    (result,) = await download_many(["http://files.example.invalid/via-proxy.txt"], tmp_path)
    assert result.status is Status.OK, result.error
    assert (tmp_path / "via-proxy.txt").read_bytes() == b"proxied"
    assert file_server.requests[0].headers["Host"] == "files.example.invalid"


async def test_netrc_credentials_are_sent_with_uploads_too(
    file_server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine 127.0.0.1 login bob password builder\n")
    netrc_file.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc_file))
    source = tmp_path / "payload.bin"
    source.write_bytes(b"data")
    file_server.add("/up/payload.bin", b"")
    result = await upload(source, file_server.url("/up/payload.bin"))
    assert result.status is Status.OK, result.error
    (seen,) = file_server.requests
    assert seen.method == "PUT"
    assert seen.headers["Authorization"] == "Basic Ym9iOmJ1aWxkZXI="
