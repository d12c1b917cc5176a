"""One progress aggregator shared by every download, and the plain renderers that draw it.

The aggregator is plain synchronous counters, updated on the hot path without awaiting anything;
renderers read snapshots of it on their own schedule. Library callers read ``Progress.snapshot()``.
The live display of a terminal is in ``_display.py``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from ._models import Result, Status
from ._urls import origin_key

_RATE_WINDOW_S = 5.0
# Looked up once: an attribute of the Status class costs more than the counting it decides.
_OK = Status.OK
_SKIPPED = Status.SKIPPED


@dataclass
class ActiveDownload:
    """A download under way: what it is and how far it got (``total`` None while unknown)."""

    key: int
    url: str
    name: str
    done: int = 0
    total: int | None = None


@dataclass(frozen=True)
class Snapshot:
    """The state of a run at one moment."""

    elapsed_s: float
    bytes_done: int  # bytes received this run (resumed bytes not included)
    bytes_total: int | None  # bytes expected for the downloads seen so far, when all are known
    rate_bps: float  # recent rate
    ok: int
    skipped: int
    failed: int
    active: tuple[ActiveDownload, ...] = field(default_factory=tuple)
    expected_files: int | None = None  # how many downloads the input holds, when known
    # The failures by (reason, origin), most first: see failure_reason().
    failures: tuple[tuple[str, str, int], ...] = ()

    @property
    def finished(self) -> int:
        return self.ok + self.skipped + self.failed

    @property
    def left(self) -> int | None:
        if self.expected_files is None:
            return None
        return max(0, self.expected_files - self.finished)

    @property
    def average_rate_bps(self) -> float:
        return self.bytes_done / self.elapsed_s if self.elapsed_s > 0 else 0.0


class Progress:
    """Counters for a run: totals and each active download. Safe to read from any coroutine."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.started = clock()
        self.active: dict[int, ActiveDownload] = {}
        self.bytes_done = 0
        self._known_total = 0
        self._unknown_totals = 0
        self.ok = 0
        self.skipped = 0
        self.failed = 0
        self.expected_files: int | None = None
        self._next_key = 0
        self._samples: list[tuple[float, int]] = [(self.started, 0)]
        self._listeners: list[Callable[[Result], None]] = []
        # Work done in other processes (the workers of a Ray run), mirrored by mirror().
        self._remote_bytes: dict[Hashable, int] = {}
        self._remote_active: dict[Hashable, tuple[ActiveDownload, ...]] = {}
        self._failures: dict[tuple[str, str], int] = {}

    # --- updates (hot path: no awaits, no allocation beyond the entry) ---
    def start(self, url: str, name: str) -> int:
        key = self._next_key
        self._next_key += 1
        self.active[key] = ActiveDownload(key, url, name)
        self._unknown_totals += 1
        return key

    def rename(self, key: int, name: str) -> None:
        entry = self.active.get(key)
        if entry is not None:
            entry.name = name

    def begin(self, key: int, *, done: int, total: int | None) -> None:
        """An attempt starts with ``done`` bytes already on disk, of ``total`` (None: unknown)."""
        entry = self.active[key]
        self._forget_total(entry)
        entry.done = done
        entry.total = total
        if total is None:
            self._unknown_totals += 1
        else:
            self._known_total += total

    def advance(self, key: int, n: int) -> None:
        self.active[key].done += n
        self.bytes_done += n

    def finish(self, key: int | None, result: Result) -> None:
        status = result.status
        if key is not None:
            entry = self.active.pop(key, None)
            if entry is not None:
                self._forget_total(entry)
                if status is _OK:
                    self._known_total += entry.done
        if status is _OK:
            self.ok += 1
        elif status is _SKIPPED:
            self.skipped += 1
        else:
            self.failed += 1
            group = (failure_reason(result.error or ""), origin_key(result.url))
            self._failures[group] = self._failures.get(group, 0) + 1
        for listener in self._listeners:
            listener(result)

    def drop(self, key: int) -> None:
        """Forget an active download without counting it (the run was interrupted)."""
        entry = self.active.pop(key, None)
        if entry is not None:
            self._forget_total(entry)

    def add_listener(self, listener: Callable[[Result], None]) -> None:
        """Call ``listener(result)`` as each download ends."""
        self._listeners.append(listener)

    def mirror(
        self, source: Hashable, *, bytes_done: int, active: Sequence[ActiveDownload] | None = None
    ) -> None:
        """Take in the counters of a downloader in another process (a Ray worker).

        ``source`` names one process: ``bytes_done`` is its running total (a restarted worker is a
        new source, so nothing is counted twice); ``active`` replaces its active downloads (None:
        unchanged). Finished downloads are counted by :meth:`finish` as usual.
        """
        previous = self._remote_bytes.get(source, 0)
        if bytes_done > previous:
            self.bytes_done += bytes_done - previous
            self._remote_bytes[source] = bytes_done
        if active is not None:
            self._remote_active[source] = tuple(active)

    def _forget_total(self, entry: ActiveDownload) -> None:
        if entry.total is None:
            self._unknown_totals -= 1
        else:
            self._known_total -= entry.total

    # --- reading ---
    def snapshot(self) -> Snapshot:
        now = self._clock()
        self._samples.append((now, self.bytes_done))
        while len(self._samples) > 2 and now - self._samples[1][0] > _RATE_WINDOW_S:
            self._samples.pop(0)
        t0, b0 = self._samples[0]
        rate = (self.bytes_done - b0) / (now - t0) if now > t0 else 0.0
        return Snapshot(
            elapsed_s=now - self.started,
            bytes_done=self.bytes_done,
            bytes_total=None if self._unknown_totals else self._known_total,
            rate_bps=rate,
            ok=self.ok,
            skipped=self.skipped,
            failed=self.failed,
            active=(
                *(ActiveDownload(e.key, e.url, e.name, e.done, e.total) for e in self.active.values()),
                *(e for entries in self._remote_active.values() for e in entries),
            ),
            expected_files=self.expected_files,
            failures=tuple(
                (reason, where, n)
                for (reason, where), n in sorted(self._failures.items(), key=lambda item: -item[1])
            ),
        )


# --- formatting -----------------------------------------------------------------------------------


def format_bytes(n: float) -> str:
    """1023 B, 1.5 KiB, 12.0 MiB, ..."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds + 0.5))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def overall_line(snap: Snapshot) -> str:
    total = f" / {format_bytes(snap.bytes_total)}" if snap.bytes_total else ""
    eta = ""
    # The ETA covers what is known: the active downloads whose sizes the servers told.
    if snap.rate_bps > 0 and snap.active and all(e.total is not None for e in snap.active):
        remaining = sum((e.total or 0) - e.done for e in snap.active)
        eta = f", ETA {format_duration(max(0, remaining) / snap.rate_bps)}"
    left = f", {snap.left} left" if snap.left is not None else f", {len(snap.active)} active"
    return (
        f"{format_bytes(snap.bytes_done)}{total} at {format_bytes(snap.rate_bps)}/s{eta}"
        f" | {snap.ok} ok, {snap.skipped} skipped, {snap.failed} failed{left}"
    )


def summary_line(snap: Snapshot) -> str:
    """The one line printed at the end of every run (after failures_line when several failed)."""
    return (
        f"{snap.ok} ok, {snap.skipped} skipped, {snap.failed} failed; "
        f"{format_bytes(snap.bytes_done)} in {snap.elapsed_s:.1f} s "
        f"({format_bytes(snap.average_rate_bps)}/s)"
    )


SHOWN_FAILURE_GROUPS = 6


def failures_line(snap: Snapshot) -> str | None:
    """``12 failed: 9 x HTTP 429 from https://a.example, 3 x connection refused by http://b:8080``

    (with a multiplication sign for the x): the failures grouped by reason and origin, most first;
    None unless several downloads failed.
    """
    if snap.failed < 2 or not snap.failures:
        return None
    groups = snap.failures
    parts = [
        f"{n}{_TIMES}{reason}{_PREPOSITION.get(reason, ' from')} {where}" if where else f"{n}{_TIMES}{reason}"
        for reason, where, n in groups[:SHOWN_FAILURE_GROUPS]
    ]
    rest = sum(n for _, _, n in groups[SHOWN_FAILURE_GROUPS:])
    if rest:
        parts.append(f"{rest}{_TIMES}other reasons")
    return f"{snap.failed} failed: " + ", ".join(parts)


# (pattern in the error text, reason): the first that matches names the failure's group.
_REASONS = (
    (re.compile(r"\bHTTP (\d{3})\b"), "HTTP {0}"),
    (re.compile(r"refused|Errno 111\b", re.IGNORECASE), "connection refused"),
    (re.compile(r"not known|resolution|nodename|getaddrinfo|No address", re.IGNORECASE), "name not resolved"),
    (re.compile(r"\bstalled\b"), "stalled"),
    (re.compile(r"\btoo slow\b"), "too slow"),
    (re.compile(r"--max-filesize"), "over --max-filesize"),
    (re.compile(r"mismatch"), "checksum mismatch"),
    (re.compile(r"body cut short"), "body cut short"),
    (re.compile(r"redirect", re.IGNORECASE), "redirect"),
    (re.compile(r"certificate", re.IGNORECASE), "TLS certificate"),
    (re.compile(r"cannot connect|connection", re.IGNORECASE), "connection failed"),
    (re.compile(r"not an http|not a valid URL|has no host|white space"), "not a usable URL"),
)
_PREPOSITION = {"connection refused": " by", "name not resolved": " for"}
_TIMES = " \u00d7 "


def failure_reason(error: str) -> str:
    """A short reason for a failed download's error text, to group failures by (``HTTP 429``)."""
    for pattern, reason in _REASONS:
        match = pattern.search(error)
        if match:
            return reason.format(*match.groups())
    return _shorten(error.splitlines()[0]) if error else "failed"


def _shorten(text: str, limit: int = 60) -> str:
    """``text`` in at most ``limit`` characters, cut between words, with an ellipsis when cut."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:") + "\u2026"


# --- renderers ------------------------------------------------------------------------------------


class Renderer:
    """Draws a Progress; ``message`` prints a line (a failure) without breaking the display.

    The live display on a terminal is ``_display.TerminalRenderer`` (rich).
    """

    counts_input = False  # whether the display shows how many downloads are left (see _cli)

    async def run(self) -> None:
        """Redraw until cancelled."""

    def message(self, text: str) -> None:
        """Print one line."""

    def close(self) -> None:
        """Stop drawing (the final state stays on screen)."""


class QuietRenderer(Renderer):
    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def message(self, text: str) -> None:
        print(text, file=self._stream, flush=True)


class PlainRenderer(QuietRenderer):
    """Not a terminal: no redrawing, a short line now and then."""

    def __init__(self, progress: Progress, stream: TextIO, *, interval_s: float = 10.0) -> None:
        super().__init__(stream)
        self._progress = progress
        self._interval_s = interval_s

    async def run(self) -> None:
        last = None
        while True:
            await asyncio.sleep(self._interval_s)
            snap = self._progress.snapshot()
            state = (snap.bytes_done, snap.finished)
            if state != last:
                self.message(f"asyncdl: {overall_line(snap)}")
                last = state
