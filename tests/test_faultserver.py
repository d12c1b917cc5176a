"""Each behaviour of the fault-injecting test server, proven with plain clients (raw streams and aiohttp)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timezone

import aiohttp
import pytest
from faultserver import FaultServer, RecordedRequest, Route, http_date

BODY = bytes(range(256)) * 40  # 10240 bytes, every offset distinguishable enough


# -- client helpers -------------------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


@contextlib.asynccontextmanager
async def connect(server: FaultServer) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def get(path: str, *headers: str, method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *headers, "", ""]
    return "\r\n".join(lines).encode()


async def read_head(reader: asyncio.StreamReader) -> RawResponse:
    status_line = (await reader.readuntil(b"\r\n")).decode()
    status = int(status_line.split(" ")[1])
    headers = []
    while (line := (await reader.readuntil(b"\r\n")).decode().rstrip("\r\n")) != "":
        name, _, value = line.partition(":")
        headers.append((name, value.strip()))
    return RawResponse(status, headers)


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    data = bytearray()
    while chunk := await reader.read(65536):
        data += chunk
    return bytes(data)


async def raw_get(server: FaultServer, path: str, *headers: str) -> tuple[RawResponse, bytes]:
    """One request on a fresh connection that asks to be closed; the head and every byte until EOF."""
    async with connect(server) as (reader, writer):
        writer.write(get(path, *headers, "Connection: close"))
        head = await read_head(reader)
        return head, await read_to_eof(reader)


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(auto_decompress=False)


# -- plain serving --------------------------------------------------------------------------------------


async def test_serves_body_with_validators_and_extra_headers(fault_server: FaultServer) -> None:
    fault_server.route(
        "/file",
        body=BODY,
        content_disposition='attachment; filename="report.pdf"',
        headers={"X-Extra": "yes"},
    )
    async with session() as s, s.get(fault_server.url("/file")) as resp:
        assert resp.status == 200
        assert await resp.read() == BODY
        assert resp.headers["Content-Length"] == str(len(BODY))
        assert resp.headers["Accept-Ranges"] == "bytes"
        assert resp.headers["ETag"].startswith('"') and resp.headers["ETag"].endswith('"')
        assert resp.headers["Last-Modified"] == "Mon, 01 Jan 2024 00:00:00 GMT"
        assert resp.headers["Content-Disposition"] == 'attachment; filename="report.pdf"'
        assert resp.headers["X-Extra"] == "yes"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"etag": "abc"}, '"abc"'),
        ({"etag": '"abc"'}, '"abc"'),
        ({"etag": "abc", "weak_etag": True}, 'W/"abc"'),
        ({"etag": 'W/"abc"'}, 'W/"abc"'),
        ({"etag": False}, None),
    ],
)
async def test_etag_is_configurable(
    fault_server: FaultServer, options: dict[str, object], expected: str
) -> None:
    fault_server.route("/e", body=b"x", **options)
    head, _ = await raw_get(fault_server, "/e")
    assert head.header("ETag") == expected


async def test_last_modified_and_accept_ranges_can_be_left_out(fault_server: FaultServer) -> None:
    fault_server.route("/n", body=b"x", last_modified=False, accept_ranges=False, etag=False)
    head, body = await raw_get(fault_server, "/n")
    assert (head.header("Last-Modified"), head.header("Accept-Ranges"), body) == (None, None, b"x")
    moment = datetime(2023, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    fault_server.route("/d", body=b"x", last_modified=moment)
    head, _ = await raw_get(fault_server, "/d")
    assert head.header("Last-Modified") == "Sat, 06 May 2023 07:08:09 GMT" == http_date(moment)


async def test_head_sends_headers_only(fault_server: FaultServer) -> None:
    fault_server.route("/file", body=BODY)
    async with session() as s, s.head(fault_server.url("/file")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(len(BODY))
        assert await resp.read() == b""


async def test_unknown_path_is_404_and_recorded(fault_server: FaultServer) -> None:
    async with session() as s, s.get(fault_server.url("/nothing?q=1")) as resp:
        assert resp.status == 404
    (request,) = fault_server.requests_for("/nothing")
    assert (request.target, request.query, request.attempt) == ("/nothing?q=1", "q=1", 0)


# -- ranges ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("range_header", "start", "end"),
    [
        ("bytes=1000-", 1000, len(BODY) - 1),
        ("bytes=10-19", 10, 19),
        ("bytes=-100", len(BODY) - 100, len(BODY) - 1),
    ],
)
async def test_range_honoured(fault_server: FaultServer, range_header: str, start: int, end: int) -> None:
    fault_server.route("/file", body=BODY)
    async with session() as s, s.get(fault_server.url("/file"), headers={"Range": range_header}) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes {start}-{end}/{len(BODY)}"
        assert await resp.read() == BODY[start : end + 1]


async def test_range_end_past_size_is_clamped(fault_server: FaultServer) -> None:
    fault_server.route("/file", body=b"0123456789")
    head, body = await raw_get(fault_server, "/file", "Range: bytes=5-500")
    assert (head.status, head.header("Content-Range"), body) == (206, "bytes 5-9/10", b"56789")


async def test_range_ignored(fault_server: FaultServer) -> None:
    fault_server.route("/file", body=BODY, ranges="ignore")
    head, body = await raw_get(fault_server, "/file", "Range: bytes=1000-")
    assert (head.status, head.header("Content-Range"), body) == (200, None, BODY)


async def test_range_answered_from_another_offset(fault_server: FaultServer) -> None:
    fault_server.route("/file", body=BODY, ranges="offset", range_offset=500)
    head, body = await raw_get(fault_server, "/file", "Range: bytes=1000-")
    assert head.status == 206
    assert head.header("Content-Range") == f"bytes 500-{len(BODY) - 1}/{len(BODY)}"
    assert body == BODY[500:]


async def test_range_past_the_end_is_416(fault_server: FaultServer) -> None:
    fault_server.route("/file", body=BODY)
    head, body = await raw_get(fault_server, "/file", f"Range: bytes={len(BODY)}-")
    assert (head.status, head.header("Content-Range"), body) == (416, f"bytes */{len(BODY)}", b"")


async def test_multiple_ranges_are_ignored(fault_server: FaultServer) -> None:
    fault_server.route("/file", body=b"0123456789")
    head, body = await raw_get(fault_server, "/file", "Range: bytes=0-1,4-5")
    assert (head.status, body) == (200, b"0123456789")


async def test_if_range_with_current_etag_or_date_gives_206(fault_server: FaultServer) -> None:
    route = fault_server.route("/file", body=BODY)
    etag, date = route.etag_for(0), route.last_modified_for(0)
    for validator in (etag, date):
        head, body = await raw_get(fault_server, "/file", "Range: bytes=100-", f"If-Range: {validator}")
        assert (head.status, body) == (206, BODY[100:])


@pytest.mark.parametrize("validator", ['"stale"', "Sun, 31 Dec 2023 00:00:00 GMT"])
async def test_if_range_mismatch_gives_full_200(fault_server: FaultServer, validator: str) -> None:
    fault_server.route("/file", body=BODY)
    head, body = await raw_get(fault_server, "/file", "Range: bytes=100-", f"If-Range: {validator}")
    assert (head.status, head.header("Content-Range"), body) == (200, None, BODY)


async def test_if_range_never_matches_a_weak_etag(fault_server: FaultServer) -> None:
    route = fault_server.route("/file", body=BODY, weak_etag=True)
    head, body = await raw_get(fault_server, "/file", "Range: bytes=100-", f"If-Range: {route.etag_for(0)}")
    assert (head.status, body) == (200, BODY)


# -- connection faults ----------------------------------------------------------------------------------


async def test_reset_after_n_bytes_on_first_attempts(fault_server: FaultServer) -> None:
    fault_server.route("/file", body=BODY, reset_after=1000, fail_times=2)
    for attempt in (1, 2):
        async with connect(fault_server) as (reader, writer):
            writer.write(get("/file"))
            head = await read_head(reader)
            assert head.header("Content-Length") == str(len(BODY))
            assert await reader.readexactly(1000) == BODY[:1000]
            with pytest.raises(ConnectionResetError):
                await reader.read(1)
        assert fault_server.routes["/file"].attempts == attempt
    head, body = await raw_get(fault_server, "/file")
    assert (head.status, body) == (200, BODY)


async def test_reset_seen_by_aiohttp_as_payload_error(fault_server: FaultServer) -> None:
    fault_server.route("/file", body=BODY, reset_after=1000)
    async with session() as s, s.get(fault_server.url("/file")) as resp:
        received = bytearray()
        with pytest.raises(aiohttp.ClientPayloadError):
            async for chunk in resp.content.iter_chunked(1024):
                received += chunk
        assert received == BODY[: len(received)]


async def test_reset_applies_to_the_ranged_body(fault_server: FaultServer) -> None:
    fault_server.route("/file", body=BODY, reset_after=10)
    async with connect(fault_server) as (reader, writer):
        writer.write(get("/file", "Range: bytes=5000-"))
        head = await read_head(reader)
        assert head.status == 206
        assert await reader.readexactly(10) == BODY[5000:5010]
        with pytest.raises(ConnectionResetError):
            await reader.read(1)


async def test_stall_sends_n_bytes_then_nothing_until_server_closes() -> None:
    server = await FaultServer().start()
    try:
        server.route("/slow", body=BODY, stall_after=300)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(get("/slow"))
        head = await read_head(reader)
        assert head.header("Content-Length") == str(len(BODY))
        assert await reader.readexactly(300) == BODY[:300]
        assert server.active_connections == 1
    finally:
        started = time.monotonic()
        await server.aclose()
    assert time.monotonic() - started < 0.5
    assert await read_to_eof(reader) == b""  # nothing after the 300 bytes, then the close
    writer.close()
    await writer.wait_closed()


async def test_stall_handler_ends_when_client_closes(fault_server: FaultServer) -> None:
    fault_server.route("/slow", body=BODY, stall_after=0)
    async with connect(fault_server) as (reader, writer):
        writer.write(get("/slow"))
        assert (await read_head(reader)).status == 200
        assert fault_server.active_connections == 1
    await fault_server.wait_idle()
    assert fault_server.active_connections == 0


async def test_truncated_body_then_clean_close(fault_server: FaultServer) -> None:
    fault_server.route("/file", body=BODY, truncate_after=4000, fail_times=1)
    head, body = await raw_get(fault_server, "/file")  # EOF, not a reset: read_to_eof would raise
    assert head.header("Content-Length") == str(len(BODY))
    assert body == BODY[:4000]
    _, body = await raw_get(fault_server, "/file")
    assert body == BODY


async def test_truncated_body_seen_by_aiohttp(fault_server: FaultServer) -> None:
    fault_server.route("/file", body=BODY, truncate_after=4000)
    async with session() as s, s.get(fault_server.url("/file")) as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_wrong_content_length_longer_than_body(fault_server: FaultServer) -> None:
    fault_server.route("/file", body=b"short", content_length=100)
    head, body = await raw_get(fault_server, "/file")
    assert (head.header("Content-Length"), body) == ("100", b"short")


async def test_raw_response_bytes(fault_server: FaultServer) -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Broken: \x00\r\n\r\nabcdef"
    fault_server.route("/raw", raw=raw)
    async with connect(fault_server) as (reader, writer):
        writer.write(get("/raw"))
        assert await read_to_eof(reader) == raw


async def test_raw_only_on_failing_attempts(fault_server: FaultServer) -> None:
    fault_server.route("/raw", body=b"good", raw=b"garbage", fail_times=1)
    async with connect(fault_server) as (reader, writer):
        writer.write(get("/raw"))
        assert await read_to_eof(reader) == b"garbage"
    _, body = await raw_get(fault_server, "/raw")
    assert body == b"good"


# -- chunked --------------------------------------------------------------------------------------------


async def test_chunked_body_framing(fault_server: FaultServer) -> None:
    fault_server.route("/c", body=b"abcdefghij", chunked=True, chunk_size=4)
    head, wire = await raw_get(fault_server, "/c")
    assert head.header("Transfer-Encoding") == "chunked"
    assert head.header("Content-Length") is None
    assert wire == b"4\r\nabcd\r\n4\r\nefgh\r\n2\r\nij\r\n0\r\n\r\n"


async def test_chunked_body_read_by_aiohttp(fault_server: FaultServer) -> None:
    fault_server.route("/c", body=BODY, chunked=True, chunk_size=1000)
    async with session() as s, s.get(fault_server.url("/c")) as resp:
        assert await resp.read() == BODY


async def test_chunked_truncated_mid_chunk(fault_server: FaultServer) -> None:
    fault_server.route("/c", body=b"abcdefghij", chunked=True, chunk_size=4, truncate_after=6)
    _, wire = await raw_get(fault_server, "/c")
    assert wire == b"4\r\nabcd\r\n4\r\nef"
    async with session() as s, s.get(fault_server.url("/c")) as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_chunked_with_range(fault_server: FaultServer) -> None:
    fault_server.route("/c", body=b"abcdefghij", chunked=True, chunk_size=4)
    head, wire = await raw_get(fault_server, "/c", "Range: bytes=3-")
    assert (head.status, head.header("Content-Range")) == (206, "bytes 3-9/10")
    assert wire == b"4\r\ndefg\r\n3\r\nhij\r\n0\r\n\r\n"


# -- status scripts and redirects -----------------------------------------------------------------------


async def test_status_script_with_retry_after(fault_server: FaultServer) -> None:
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    fault_server.route("/s", body=b"ok", statuses=[(503, 2), (429, date), 500, 200])
    seen = []
    async with session() as s:
        for _ in range(5):
            async with s.get(fault_server.url("/s")) as resp:
                seen.append((resp.status, resp.headers.get("Retry-After"), await resp.read()))
    assert seen == [
        (503, "2", b"503 /s\n"),
        (429, date, b"429 /s\n"),
        (500, None, b"500 /s\n"),
        (200, None, b"ok"),
        (200, None, b"ok"),  # the last status repeats
    ]
    assert [r.attempt for r in fault_server.requests_for("/s")] == [1, 2, 3, 4, 5]


async def test_status_script_default_retry_after_and_datetime(fault_server: FaultServer) -> None:
    moment = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    fault_server.route("/s", statuses=[404], retry_after=moment)
    head, _ = await raw_get(fault_server, "/s")
    assert (head.status, head.header("Retry-After")) == (404, "Wed, 02 Jan 2030 03:04:05 GMT")


async def test_scripted_2xx_serves_the_body(fault_server: FaultServer) -> None:
    fault_server.route("/up", body=b"created", statuses=[201])
    head, body = await raw_get(fault_server, "/up")
    assert (head.status, body) == (201, b"created")


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
async def test_redirect_codes(fault_server: FaultServer, code: int) -> None:
    fault_server.route("/old", redirect_to="/new", redirect_code=code)
    fault_server.route("/new", body=b"moved here")
    async with session() as s:
        async with s.get(fault_server.url("/old"), allow_redirects=False) as resp:
            assert (resp.status, resp.headers["Location"]) == (code, "/new")
        async with s.get(fault_server.url("/old")) as resp:
            assert (resp.status, await resp.read()) == (200, b"moved here")


async def test_redirect_loop(fault_server: FaultServer) -> None:
    fault_server.route("/a", redirect_to="/b")
    fault_server.route("/b", redirect_to="/a")
    async with session() as s:
        with pytest.raises(aiohttp.TooManyRedirects):
            await s.get(fault_server.url("/a"), max_redirects=5)
    paths = [r.path for r in fault_server.requests]
    assert len(paths) >= 5
    assert paths == ["/a", "/b"] * (len(paths) // 2) + ["/a"] * (len(paths) % 2)


async def test_redirect_to_another_server(fault_server: FaultServer) -> None:
    async with FaultServer() as other:
        other.route("/there", body=b"elsewhere")
        fault_server.route("/here", redirect_to=other.url("/there"))
        async with session() as s, s.get(fault_server.url("/here")) as resp:
            assert await resp.read() == b"elsewhere"
        assert other.port != fault_server.port
        assert [r.path for r in other.requests] == ["/there"]


async def test_redirect_to_non_http_scheme(fault_server: FaultServer) -> None:
    fault_server.route("/ftp", redirect_to="ftp://example.org/file.bin", redirect_code=301)
    head, _ = await raw_get(fault_server, "/ftp")
    assert (head.status, head.header("Location")) == (301, "ftp://example.org/file.bin")


async def test_redirect_only_after_scripted_failures(fault_server: FaultServer) -> None:
    fault_server.route("/r", redirect_to="/t", statuses=[503, 307])
    statuses = [(await raw_get(fault_server, "/r"))[0] for _ in range(2)]
    assert [(h.status, h.header("Location")) for h in statuses] == [(503, None), (307, "/t")]


# -- changing content -----------------------------------------------------------------------------------


async def test_versions_by_attempt(fault_server: FaultServer) -> None:
    route = fault_server.route("/v", bodies=[b"version one", b"version two"])
    first_head, first = await raw_get(fault_server, "/v")
    second_head, second = await raw_get(fault_server, "/v")
    _, third = await raw_get(fault_server, "/v")
    assert (first, second, third) == (b"version one", b"version two", b"version two")
    assert first_head.header("ETag") == route.etag_for(0) != second_head.header("ETag") == route.etag_for(1)
    assert first_head.header("Last-Modified") != second_head.header("Last-Modified")


async def test_version_switched_by_test_and_if_range_sees_it(fault_server: FaultServer) -> None:
    route = fault_server.route("/v", bodies=[b"0123456789", b"abcdefghij"], etags=["one", "two"], version=0)
    head, body = await raw_get(fault_server, "/v")
    assert (head.header("ETag"), body) == ('"one"', b"0123456789")
    route.version = 1
    head, body = await raw_get(fault_server, "/v", "Range: bytes=5-", 'If-Range: "one"')
    assert (head.status, head.header("ETag"), body) == (200, '"two"', b"abcdefghij")
    head, body = await raw_get(fault_server, "/v", "Range: bytes=5-", 'If-Range: "two"')
    assert (head.status, body) == (206, b"fghij")


# -- pacing and encoding --------------------------------------------------------------------------------


async def test_throttled_body_is_paced(fault_server: FaultServer) -> None:
    body = b"t" * 5000
    fault_server.route("/slow", body=body, rate=25_000)  # 0.2 s for the whole body
    async with connect(fault_server) as (reader, writer):
        writer.write(get("/slow", "Connection: close"))
        await read_head(reader)
        started = time.monotonic()
        received = bytearray()
        arrivals = []
        while chunk := await reader.read(65536):
            received += chunk
            arrivals.append(time.monotonic() - started)
    assert received == body
    # Never ahead of schedule (5000 bytes at 25000 B/s), and in pieces, not one burst after a sleep.
    assert 0.19 <= arrivals[-1] < 1.0
    assert len(arrivals) >= 4
    assert arrivals[0] >= 0.04


async def test_gzip_only_when_accepted(fault_server: FaultServer) -> None:
    route = fault_server.route("/z", body=b"compress me " * 100, gzip=True)
    head, wire = await raw_get(fault_server, "/z", "Accept-Encoding: gzip, deflate")
    assert head.header("Content-Encoding") == "gzip"
    assert head.header("Content-Length") == str(len(wire))
    assert gzip.decompress(wire) == route.body
    assert head.header("ETag") != route.etag_for(0)
    head, wire = await raw_get(fault_server, "/z", "Accept-Encoding: identity")
    assert (head.header("Content-Encoding"), wire) == (None, route.body)
    head, wire = await raw_get(fault_server, "/z", "Accept-Encoding: gzip;q=0")
    assert (head.header("Content-Encoding"), wire) == (None, route.body)


async def test_gzip_seen_by_aiohttp_without_decompression(fault_server: FaultServer) -> None:
    fault_server.route("/z", body=b"compress me " * 100, gzip=True)
    async with session() as s, s.get(fault_server.url("/z"), headers={"Accept-Encoding": "gzip"}) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(await resp.read()) == b"compress me " * 100


# -- connections and records ----------------------------------------------------------------------------


async def test_keep_alive_serves_several_requests_on_one_connection(fault_server: FaultServer) -> None:
    fault_server.route("/a", body=b"A")
    fault_server.route("/b", body=b"B", statuses=[503])
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as s:
        for path in ("/a", "/b", "/a", "/nothing"):
            async with s.get(fault_server.url(path)) as resp:
                await resp.read()
    assert fault_server.connection_count == 1
    assert {r.connection_id for r in fault_server.requests} == {1}
    assert len(fault_server.requests) == 4


async def test_pipelined_requests_on_raw_connection(fault_server: FaultServer) -> None:
    fault_server.route("/a", body=b"AAA")
    async with connect(fault_server) as (reader, writer):
        writer.write(get("/a") + get("/a", "Connection: close"))
        data = await read_to_eof(reader)
    assert data.count(b"HTTP/1.1 200 OK") == 2
    assert data.endswith(b"AAA")


async def test_connection_close_route_and_faults_need_new_connections(fault_server: FaultServer) -> None:
    fault_server.route("/c", body=b"C", close=True)
    fault_server.route("/t", body=b"TTTT", truncate_after=2)
    async with session() as s:
        for path in ("/c", "/c"):
            async with s.get(fault_server.url(path)) as resp:
                assert resp.headers["Connection"] == "close"
                await resp.read()
        with pytest.raises(aiohttp.ClientPayloadError):
            async with s.get(fault_server.url("/t")) as resp:
                await resp.read()
    assert fault_server.connection_count == 3
    assert [r.connection_id for r in fault_server.requests] == [1, 2, 3]


async def test_records_method_target_headers_and_body(fault_server: FaultServer) -> None:
    fault_server.route("/up", statuses=[201])
    before = time.monotonic()
    async with (
        session() as s,
        s.put(fault_server.url("/up?name=x"), data=b"payload", headers={"X-Token": "t1"}) as resp,
    ):
        assert resp.status == 201
    (request,) = fault_server.requests_for("/up")
    assert isinstance(request, RecordedRequest)
    assert (request.method, request.target, request.path, request.query) == (
        "PUT",
        "/up?name=x",
        "/up",
        "name=x",
    )
    assert request.body == b"payload"
    assert request.header("x-token") == request.header("X-TOKEN") == "t1"
    assert request.header("Content-Length") == "7"
    assert request.header("missing", "dflt") == "dflt"
    assert ("X-Token", "t1") in request.headers
    assert request.http_version == "HTTP/1.1"
    assert request.connection_id == 1
    assert before <= request.timestamp <= time.monotonic()
    assert fault_server.requests_for("/up?name=x") == [request]
    assert fault_server.requests_for("/up?name=y") == []


async def test_records_chunked_request_body(fault_server: FaultServer) -> None:
    fault_server.route("/up", statuses=[204])
    async with connect(fault_server) as (reader, writer):
        writer.write(
            b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n"
        )
        head = await read_head(reader)
    assert head.status == 204
    (request,) = fault_server.requests
    assert (request.body, request.chunked) == (b"hello world", True)


async def test_streamed_upload_from_aiohttp(fault_server: FaultServer) -> None:
    fault_server.route("/up", statuses=[200])

    async def parts() -> AsyncIterator[bytes]:
        for i in range(3):
            yield b"part%d;" % i

    async with session() as s, s.post(fault_server.url("/up"), data=parts()) as resp:
        assert resp.status == 200
    assert fault_server.requests[0].body == b"part0;part1;part2;"


async def test_expect_100_continue(fault_server: FaultServer) -> None:
    fault_server.route("/up")
    async with connect(fault_server) as (reader, writer):
        writer.write(b"PUT /up HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        assert (await read_head(reader)).status == 100
        writer.write(b"abc")
        assert (await read_head(reader)).status == 200
    assert fault_server.requests[0].body == b"abc"


async def test_malformed_request_gets_400(fault_server: FaultServer) -> None:
    async with connect(fault_server) as (reader, writer):
        writer.write(b"this is not http\r\n\r\n")
        assert (await read_head(reader)).status == 400
        assert (await read_to_eof(reader)).startswith(b"bad request")
    assert fault_server.requests == []


async def test_wait_for_requests(fault_server: FaultServer) -> None:
    fault_server.route("/w", body=b"w")
    waiter = asyncio.ensure_future(fault_server.wait_for_requests(2, path="/w"))
    await raw_get(fault_server, "/w")
    assert not waiter.done()
    await raw_get(fault_server, "/w")
    assert [r.path for r in await waiter] == ["/w", "/w"]


async def test_route_replaced_and_attempts_resettable(fault_server: FaultServer) -> None:
    route = fault_server.route("/r", body=b"one", statuses=[500, 200])
    assert (await raw_get(fault_server, "/r"))[0].status == 500
    route.attempts = 0
    assert (await raw_get(fault_server, "/r"))[0].status == 500
    fault_server.add_route(Route(path="/r", body=b"two"))
    assert (await raw_get(fault_server, "/r"))[1] == b"two"


def test_route_validation() -> None:
    with pytest.raises(ValueError, match="start with"):
        Route(path="nope")
    with pytest.raises(ValueError, match="3xx"):
        Route(path="/x", redirect_code=200)
    with pytest.raises(ValueError, match="per version"):
        Route(path="/x", bodies=[b"a", b"b"], etags=["a"])
    with pytest.raises(ValueError, match="ranges"):
        Route(path="/x", ranges="maybe")  # type: ignore[arg-type]


# -- lifecycle ------------------------------------------------------------------------------------------


async def test_client_disconnect_mid_response_is_quiet(fault_server: FaultServer) -> None:
    fault_server.route("/big", body=b"b" * (8 * 1024 * 1024))
    async with connect(fault_server) as (reader, writer):
        writer.write(get("/big"))
        await read_head(reader)
        await reader.readexactly(1000)
    await fault_server.wait_idle()
    assert fault_server.errors == []


async def test_close_is_prompt_and_leaks_no_tasks() -> None:
    tasks_before = asyncio.all_tasks()
    server = FaultServer()
    async with server:
        assert server.url("/x") == f"http://127.0.0.1:{server.port}/x"
        assert server.port != 0
        server.route("/stall", body=BODY, stall_after=10)
        server.route("/slow", body=BODY, rate=100)
        server.route("/k", body=b"k")
        connections = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(4)]
        for (reader, writer), path in zip(connections, ["/stall", "/slow", "/k", None], strict=True):
            if path is not None:
                writer.write(get(path))
                await read_head(reader)
        await server.wait_for_requests(3)
        assert server.active_connections == 4  # stalled, throttled, idle keep-alive, silent
        started = time.monotonic()
    assert time.monotonic() - started < 0.5
    assert server.active_connections == 0
    assert asyncio.all_tasks() == tasks_before
    for reader, writer in connections:
        await read_to_eof(reader)
        writer.close()
        await writer.wait_closed()
    await server.aclose()  # idempotent


async def test_fixture_serves(fault_server: FaultServer) -> None:
    fault_server.route("/", body=b"root")
    _, body = await raw_get(fault_server, "/")
    assert body == b"root"


async def test_a_handler_bug_surfaces_on_close() -> None:
    server = await FaultServer().start()
    server.route("/bug", raw="not bytes")  # writer.write() raises TypeError inside the handler
    async with connect(server) as (reader, writer):
        writer.write(get("/bug"))
        assert await read_to_eof(reader) == b""
    with pytest.raises(RuntimeError, match="handler failed") as caught:
        await server.aclose()
    assert isinstance(caught.value.__cause__, TypeError)
