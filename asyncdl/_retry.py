"""Pure retry policy: which failures get another attempt, and after how long.

No clock and no randomness of its own: the caller passes ``now`` and a ``random`` function, so the
download loop decides with real ones and the tests with fixed ones, without sleeping.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timezone
from email.utils import parsedate_to_datetime

from ._exceptions import HTTPStatusError, RetryableStatus, TransientError, UsageError

RETRYABLE_STATUSES: frozenset[int] = frozenset({408, 425, 429, 500, 502, 503, 504})

# delay-seconds is 1*DIGIT (RFC 9110); a sign and a fraction are tolerated, other float() syntax
# ("1e3", "inf", "1_0") is not a delay.
_SECONDS = re.compile(r"[+-]?[0-9]+(?:\.[0-9]*)?")

# 0.5 s * 2**64 is beyond any sensible cap; stopping the exponent here keeps the float finite for
# any attempt number (2**1100 * 0.5 would raise OverflowError).
_MAX_BACKOFF_EXPONENT = 64


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value, or None when absent or unreadable.

    ``value`` is either delay-seconds (``120``) or an HTTP-date (``Wed, 21 Oct 2015 07:28:00 GMT``),
    which is measured from ``now`` (epoch seconds, as :func:`time.time`). A date in the past or a
    negative number gives 0.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _SECONDS.fullmatch(text):
        return max(0.0, float(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        # "-0000" (and a missing zone) parse as naive; HTTP-dates are always GMT.
        when = when.replace(tzinfo=timezone.utc)
    try:
        return max(0.0, when.timestamp() - now)
    except (OverflowError, OSError, ValueError):
        return None


def parse_statuses(text: str) -> frozenset[int]:
    """HTTP statuses from ``403,520-524`` (``--retry-on``); UsageError when it does not read as that."""
    statuses: set[int] = set()
    for item in text.split(","):
        part = item.strip()
        if not part:
            continue
        low, dash, high = part.partition("-")
        try:
            first = int(low)
            last = int(high) if dash else first
        except ValueError:
            raise UsageError(f"expected HTTP statuses such as 403,520-524, not {text!r}") from None
        if not 100 <= first <= last <= 599:
            raise UsageError(f"HTTP statuses are 100 to 599, in ranges low-high: {part!r}")
        statuses.update(range(first, last + 1))
    if not statuses:
        raise UsageError(f"expected HTTP statuses such as 403,520-524, not {text!r}")
    return frozenset(statuses)


def _check_non_negative(name: str, value: float) -> None:
    # "not value >= 0" also rejects NaN, which would poison every later comparison.
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


@dataclass(frozen=True)
class RetryPolicy:
    """When to try a download again, and how long to wait first.

    ``retries`` is the number of attempts after the first (so at most ``retries + 1`` attempts).
    Only :class:`~asyncdl._exceptions.TransientError` failures are retried. The wait is capped
    exponential backoff with full jitter, ``random() * min(backoff_max_s, backoff_base_s * 2**(n-1))``
    after the n-th failed attempt, so that many downloads failing together do not come back together;
    a server's ``Retry-After`` replaces it, capped at ``retry_after_max_s``. ``retry_on`` adds
    statuses to retry (``--retry-on``) beyond the transient ones (408, 425, 429, 500, 502-504).
    """

    retries: int = 5
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 300.0
    retry_on: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries!r}")
        _check_non_negative("backoff_base_s", self.backoff_base_s)
        _check_non_negative("backoff_max_s", self.backoff_max_s)
        _check_non_negative("retry_after_max_s", self.retry_after_max_s)

    def delay(self, attempt: int, error: BaseException, *, random: Callable[[], float]) -> float | None:
        """Seconds to wait before the next attempt, or None when there is to be no next attempt.

        ``attempt`` is the number of attempts made so far (1 after the first failure); ``error`` is
        why the last one failed; ``random`` returns a float in [0, 1) (``random.random``).
        """
        if attempt < 1:
            raise ValueError(f"attempt counts attempts already made and starts at 1, got {attempt!r}")
        if attempt > self.retries or not self.retries_error(error):
            return None
        if isinstance(error, RetryableStatus) and error.retry_after is not None:
            # The server said when; no jitter, since waiting less would likely earn another 429/503.
            return min(max(0.0, error.retry_after), self.retry_after_max_s)
        exponent = min(attempt - 1, _MAX_BACKOFF_EXPONENT)
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2.0**exponent)
        return random() * ceiling

    def retries_error(self, error: BaseException) -> bool:
        """Whether ``error`` is one to try again (while attempts are left)."""
        if isinstance(error, TransientError):
            return True
        return isinstance(error, HTTPStatusError) and error.status in self.retry_on
