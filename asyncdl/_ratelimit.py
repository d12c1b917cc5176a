"""Rates and sizes: the token bucket shared by every download (--limit-rate), the speed floor of one
attempt (--lowest-speed-limit), and parsing ``500K`` / ``10M`` / ``2G``."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable

from ._exceptions import UsageError

_WAIT_SLICE_S = 1.0
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_rate(text: str, *, what: str = "rate") -> int:
    """Bytes per second from ``500K``, ``10M``, ``1G`` (powers of 1024), or a plain number."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?(?:/s)?\s*", text, re.IGNORECASE)
    if not match:
        raise UsageError(f"invalid {what} {text!r}: use a number with an optional K, M or G suffix")
    rate = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if rate <= 0:
        raise UsageError(f"{what} must be positive, not {text!r}")
    return rate


def parse_size(text: str) -> int:
    """Bytes from ``500M``, ``2G`` (powers of 1024), or a plain number."""
    return parse_rate(text, what="size")


class SpeedFloor:
    """Whether one transfer's rate over a window of ``window_s`` seconds stayed below ``min_bps``.

    Windows follow each other from the start of the transfer; each is judged when the first bytes
    after its end arrive (bytes that do not arrive at all are the stall timeout's business).
    """

    __slots__ = ("_bytes", "_clock", "_start", "min_bps", "window_s")

    def __init__(
        self, min_bps: float, window_s: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.min_bps = min_bps
        self.window_s = window_s
        self._clock = clock
        self._start = clock()
        self._bytes = 0

    def too_slow(self, received: int) -> float | None:
        """The rate of a window that ended below the floor, else None (``received``: bytes so far)."""
        now = self._clock()
        elapsed = now - self._start
        if elapsed < self.window_s:
            return None
        rate = (received - self._bytes) / elapsed
        if rate < self.min_bps:
            return rate
        self._start, self._bytes = now, received
        return None


class RateLimiter:
    """Caps the combined byte rate of all callers at ``rate_bps``.

    Virtual scheduling (GCRA): each ``take(n)`` books the next ``n / rate`` seconds of the line and
    waits until its booking ends. Callers take after receiving (the bytes are already here), so
    waiting for the end is what keeps them from reading more early. A burst of up to ``burst_s``
    seconds is allowed after idling.
    Clock and sleep are injected so tests need no real waiting.
    """

    def __init__(
        self,
        rate_bps: float,
        *,
        burst_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate_bps <= 0:
            raise ValueError("rate_bps must be positive")
        self.rate_bps = rate_bps
        self._burst_s = burst_s
        self._clock = clock
        self._sleep = sleep
        self._next_free = clock()
        # Grows by old / new rate at each change: a taker waiting across a change scales what it
        # has left to wait by the factor that accrued meanwhile.
        self._time_scale = 1.0

    def change(self, rate_bps: float | None) -> None:
        """A new cap (None: none) that also holds for the waits already booked, from now on."""
        new = rate_bps if rate_bps else float("inf")
        factor = self.rate_bps / new
        now = self._clock()
        self._next_free = now + max(0.0, self._next_free - now) * factor
        self._time_scale *= factor
        self.rate_bps = new

    def reserve(self, n: int) -> float:
        """Book ``n`` bytes; the seconds to wait before going on."""
        now = self._clock()
        start = max(self._next_free, now - self._burst_s)
        self._next_free = start + n / self.rate_bps
        return max(0.0, self._next_free - now)

    async def take(self, n: int) -> None:
        delay = self.reserve(n)
        scale = self._time_scale
        while delay > 0:
            # Long waits (a big chunk at a low cap) are slept in slices, so that a cap changed
            # meanwhile (change()) shortens or stretches what is left.
            step = min(delay, _WAIT_SLICE_S)
            await self._sleep(step)
            delay -= step
            if self._time_scale != scale:
                delay *= self._time_scale / scale
                scale = self._time_scale


class BothLimiters:
    """Two caps at once (a download's own and the overall one): ``take`` waits for both."""

    def __init__(self, first: RateLimiter, second: RateLimiter) -> None:
        self.first = first
        self.second = second

    async def take(self, n: int) -> None:
        await self.first.take(n)
        await self.second.take(n)
