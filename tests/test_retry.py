"""Tests for asyncdl._retry: Retry-After parsing and the backoff policy (no sleeping, no real randomness)."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from email.utils import format_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncdl._exceptions import (
    ChecksumMismatch,
    ConnectError,
    HTTPStatusError,
    IncompleteBody,
    RedirectError,
    RetryableStatus,
    StallError,
    StorageError,
)
from asyncdl._retry import RETRYABLE_STATUSES, RetryPolicy, parse_retry_after

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc).timestamp()


def http_date(offset_s: float) -> str:
    return format_datetime(datetime.fromtimestamp(NOW + offset_s, tz=timezone.utc), usegmt=True)


def one() -> float:
    return 1.0


def half() -> float:
    return 0.5


def test_retryable_statuses() -> None:
    assert frozenset({408, 425, 429, 500, 502, 503, 504}) == RETRYABLE_STATUSES
    assert 404 not in RETRYABLE_STATUSES
    assert 501 not in RETRYABLE_STATUSES


# --- parse_retry_after -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("0", 0.0),
        ("  7 ", 7.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        (None, None),
        ("", None),
        ("   ", None),
        ("soon", None),
        ("1e3", None),
        ("inf", None),
        ("nan", None),
        ("12 seconds", None),
        ("Wed, 99 Foo 2015 07:28:00 GMT", None),
    ],
)
def test_parse_retry_after_seconds_and_garbage(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_parse_retry_after_http_date_in_the_future() -> None:
    assert parse_retry_after(http_date(90), now=NOW) == pytest.approx(90.0)


def test_parse_retry_after_http_date_in_the_past_is_zero() -> None:
    assert parse_retry_after(http_date(-3600), now=NOW) == 0.0


def test_parse_retry_after_http_date_literal() -> None:
    now = datetime(2015, 10, 21, 7, 27, 0, tzinfo=timezone.utc).timestamp()
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == pytest.approx(60.0)
    # RFC 850 and asctime forms are obsolete but still valid HTTP-dates.
    assert parse_retry_after("Wednesday, 21-Oct-15 07:28:00 GMT", now=now) == pytest.approx(60.0)
    assert parse_retry_after("Wed Oct 21 07:28:00 2015", now=now) == pytest.approx(60.0)
    # "-0000" parses as a naive datetime; it is still UTC.
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 -0000", now=now) == pytest.approx(60.0)


@given(value=st.text(max_size=40))
@settings(max_examples=200, deadline=None)
def test_parse_retry_after_never_raises(value: str) -> None:
    result = parse_retry_after(value, now=NOW)
    assert result is None or result >= 0


# --- RetryPolicy -------------------------------------------------------------------------------------------


def test_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.retries, policy.backoff_base_s, policy.backoff_max_s, policy.retry_after_max_s) == (
        5,
        0.5,
        30.0,
        300.0,
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"retries": -1},
        {"backoff_base_s": -0.1},
        {"backoff_max_s": -1.0},
        {"retry_after_max_s": -1.0},
        {"backoff_base_s": math.nan},
    ],
)
def test_invalid_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_policy_is_frozen() -> None:
    policy = RetryPolicy()
    with pytest.raises(AttributeError):
        policy.retries = 3  # type: ignore[misc]


def test_backoff_doubles_up_to_the_cap() -> None:
    policy = RetryPolicy(retries=10, backoff_base_s=0.5, backoff_max_s=30.0)
    error = ConnectError("refused")
    delays = [policy.delay(attempt, error, random=one) for attempt in range(1, 11)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]


def test_full_jitter_scales_the_ceiling() -> None:
    policy = RetryPolicy()
    assert policy.delay(3, StallError("stalled"), random=half) == 1.0
    assert policy.delay(3, StallError("stalled"), random=lambda: 0.0) == 0.0


def test_no_attempt_after_the_last_retry() -> None:
    policy = RetryPolicy(retries=2)
    error = IncompleteBody("short", received=1, expected=2)
    assert policy.delay(1, error, random=one) is not None
    assert policy.delay(2, error, random=one) is not None
    assert policy.delay(3, error, random=one) is None


def test_zero_retries_means_one_attempt() -> None:
    assert RetryPolicy(retries=0).delay(1, ConnectError("x"), random=one) is None


def test_attempt_must_count_from_one() -> None:
    with pytest.raises(ValueError, match="starts at 1"):
        RetryPolicy().delay(0, ConnectError("x"), random=one)


@pytest.mark.parametrize(
    "error",
    [
        HTTPStatusError("not found", status=404),
        RedirectError("loop"),
        ChecksumMismatch("bad", algorithm="sha256", expected="a", actual="b"),
        StorageError("disk full"),
        ValueError("a bug"),
        KeyboardInterrupt(),
    ],
)
def test_non_transient_errors_are_not_retried(error: BaseException) -> None:
    assert RetryPolicy().delay(1, error, random=one) is None


def test_retryable_status_without_retry_after_backs_off() -> None:
    policy = RetryPolicy()
    assert policy.delay(2, RetryableStatus("busy", status=503), random=one) == 1.0


def test_retry_after_replaces_backoff_without_jitter() -> None:
    policy = RetryPolicy()
    error = RetryableStatus("slow down", status=429, retry_after=42.0)
    assert policy.delay(1, error, random=lambda: 0.0) == 42.0
    assert policy.delay(5, error, random=one) == 42.0


def test_retry_after_is_capped() -> None:
    policy = RetryPolicy(retry_after_max_s=60.0)
    error = RetryableStatus("come back tomorrow", status=503, retry_after=86400.0)
    assert policy.delay(1, error, random=one) == 60.0


def test_retry_after_does_not_extend_the_attempt_budget() -> None:
    policy = RetryPolicy(retries=1)
    error = RetryableStatus("slow down", status=429, retry_after=1.0)
    assert policy.delay(2, error, random=one) is None


def test_huge_attempt_numbers_stay_finite() -> None:
    policy = RetryPolicy(retries=10_000)
    assert policy.delay(5_000, ConnectError("x"), random=one) == 30.0


@given(
    attempt=st.integers(min_value=1, max_value=2_000),
    jitter=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    retry_after=st.one_of(st.none(), st.floats(min_value=0.0, max_value=1e6)),
)
@settings(max_examples=200, deadline=None)
def test_delay_is_always_within_bounds(attempt: int, jitter: float, retry_after: float | None) -> None:
    policy = RetryPolicy(retries=1_000)
    error = RetryableStatus("x", status=503, retry_after=retry_after)
    delay = policy.delay(attempt, error, random=lambda: jitter)
    if attempt > policy.retries:
        assert delay is None
        return
    assert delay is not None
    if retry_after is None:
        assert 0.0 <= delay <= policy.backoff_max_s
    else:
        assert delay == min(retry_after, policy.retry_after_max_s)
