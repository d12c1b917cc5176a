"""Unit-level HTTP decisions of _http.open_body, with aioresponses standing in for the network."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from yarl import URL

from asyncdl import HTTPStatusError, RedirectError, RetryableStatus
from asyncdl._http import Validator, make_session, open_body

BASE = "http://files.test"
_NEEDS_STREAM_WRITER = "stream_writer" in inspect.signature(aiohttp.ClientResponse.__init__).parameters


class _Sent:
    output_size = 0


class MockedResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.x builds responses without aiohttp 3.14's new ``stream_writer`` argument
    (pnuckowski/aioresponses#289); supply a stand-in for the already-sent request."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        if _NEEDS_STREAM_WRITER:
            kwargs.setdefault("stream_writer", _Sent())
        super().__init__(method, url, **kwargs)


def mock_get(mocked: aioresponses, url: str, **kwargs: Any) -> None:
    mocked.get(url, response_class=MockedResponse, **kwargs)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    s = make_session(connections=4, stall_timeout_s=30)
    try:
        yield s
    finally:
        await s.close()


def sent_headers(mocked: aioresponses, method: str, url: str) -> list[dict[str, str]]:
    return [dict(call.kwargs["headers"]) for call in mocked.requests[(method, URL(url))]]


async def test_session_has_no_total_timeout_but_a_stall_timeout() -> None:
    s = make_session(connections=2, stall_timeout_s=7)
    try:
        assert s.timeout.total is None  # aiohttp's default of 300 s would cut long downloads
        assert s.timeout.sock_read == 7
        assert s.auto_decompress is False
    finally:
        await s.close()


async def test_resume_asks_for_the_rest_with_the_strong_etag(session: aiohttp.ClientSession) -> None:
    with aioresponses() as mocked:
        mock_get(mocked, f"{BASE}/a", status=206, body=b"rest", headers={"Content-Range": "bytes 6-9/10"})
        async with open_body(session, f"{BASE}/a", offset=6, validator=Validator(etag='"v1"')) as body:
            assert (body.status, body.range_start, body.range_total, body.total_size) == (206, 6, 10, 10)
        (headers,) = sent_headers(mocked, "GET", f"{BASE}/a")
    assert headers["Range"] == "bytes=6-"
    assert headers["If-Range"] == '"v1"'
    assert headers["Accept-Encoding"] == "identity"


async def test_a_weak_etag_is_never_an_if_range_but_a_date_is() -> None:
    assert Validator(etag='W/"v1"').if_range is None
    assert Validator(etag='W/"v1"', last_modified="Wed, 21 Oct 2015 07:28:00 GMT").if_range == (
        "Wed, 21 Oct 2015 07:28:00 GMT"
    )


@pytest.mark.parametrize(("status", "retry_after", "expected"), [(429, "7", 7.0), (503, None, None)])
async def test_retryable_statuses_carry_retry_after(
    session: aiohttp.ClientSession, status: int, retry_after: str | None, expected: float | None
) -> None:
    headers = {"Retry-After": retry_after} if retry_after else {}
    with aioresponses() as mocked:
        mock_get(mocked, f"{BASE}/busy", status=status, headers=headers)
        with pytest.raises(RetryableStatus) as caught:
            async with open_body(session, f"{BASE}/busy"):
                pass
    assert caught.value.status == status
    assert caught.value.retry_after == expected


async def test_other_client_errors_are_final(session: aiohttp.ClientSession) -> None:
    with aioresponses() as mocked:
        mock_get(mocked, f"{BASE}/gone", status=410)
        with pytest.raises(HTTPStatusError) as caught:
            async with open_body(session, f"{BASE}/gone"):
                pass
    assert caught.value.status == 410
    assert not isinstance(caught.value, RetryableStatus)


async def test_redirects_to_other_schemes_are_refused(session: aiohttp.ClientSession) -> None:
    with aioresponses() as mocked:
        mock_get(mocked, f"{BASE}/r", status=302, headers={"Location": "file:///etc/passwd"})
        with pytest.raises(RedirectError, match="file"):
            async with open_body(session, f"{BASE}/r"):
                pass


async def test_user_headers_stay_with_their_origin(session: aiohttp.ClientSession) -> None:
    with aioresponses() as mocked:
        mock_get(mocked, f"{BASE}/r", status=301, headers={"Location": "http://elsewhere.test/f"})
        mock_get(mocked, "http://elsewhere.test/f", status=200, body=b"x")
        async with open_body(session, f"{BASE}/r", headers=[("X-Api-Key", "k")]) as body:
            assert body.url == "http://elsewhere.test/f"
        assert sent_headers(mocked, "GET", f"{BASE}/r")[0]["X-Api-Key"] == "k"
        assert "X-Api-Key" not in sent_headers(mocked, "GET", "http://elsewhere.test/f")[0]


async def test_too_many_redirects(session: aiohttp.ClientSession) -> None:
    with aioresponses() as mocked:
        for hop in range(12):
            mock_get(mocked, f"{BASE}/{hop}", status=302, headers={"Location": f"/{hop + 1}"})
        with pytest.raises(RedirectError, match="more than 10"):
            async with open_body(session, f"{BASE}/0"):
                pass
