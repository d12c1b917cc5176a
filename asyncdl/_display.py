"""The live display on a terminal (rich, the only importer): progress bars for the whole run and for
each active download, redrawn on a timer from snapshots of the Progress counters.

Nothing here runs on the hot path: downloads only add to counters (``Progress.advance``); the
renderer reads a snapshot a few times a second, works out the rates and ETAs itself (``RateMeter``,
``run_eta``: plain functions of snapshots and their times) and redraws.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Hashable, Iterable

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ._progress import ActiveDownload, Progress, Renderer, Snapshot, format_bytes, format_duration

_RATE_WINDOW_S = 3.0
_NAME_WIDTH = (12, 30)  # narrowest, widest
_BAR_WIDTH = (8, 40)
_BYTES_WIDTH = 23  # "1023.9 MiB / 1023.9 MiB"
_RATE_WIDTH = 12  # "1023.9 KiB/s"
_ETA_WIDTH = 12  # "ETA 12:34:56"


class RateMeter:
    """Recent byte rates of the active downloads, from their byte counts seen at successive times.

    ``observe`` takes a snapshot's active downloads and its time (``elapsed_s``), forgets downloads
    no longer active, and keeps a few seconds of samples each: memory stays proportional to what is
    active.
    """

    def __init__(self, window_s: float = _RATE_WINDOW_S) -> None:
        self._window_s = window_s
        self._samples: dict[Hashable, deque[tuple[float, int]]] = {}

    def observe(self, active: Iterable[ActiveDownload], now: float) -> dict[Hashable, float]:
        """The rate (bytes/s) of each active download seen before, by :func:`entry_key`."""
        rates: dict[Hashable, float] = {}
        samples: dict[Hashable, deque[tuple[float, int]]] = {}
        for entry in active:
            key = entry_key(entry)
            seen = self._samples.get(key) or deque()
            if seen and entry.done < seen[-1][1]:
                seen.clear()  # an attempt started over from a smaller offset
            seen.append((now, entry.done))
            while len(seen) > 2 and now - seen[1][0] >= self._window_s:
                seen.popleft()
            t0, done0 = seen[0]
            if now > t0:  # from the second sight on
                rates[key] = (entry.done - done0) / (now - t0)
            samples[key] = seen
        self._samples = samples
        return rates


def entry_key(entry: ActiveDownload) -> Hashable:
    # Keys are per process: a Ray run's workers may reuse one another's, their URLs tell them apart.
    return (entry.key, entry.url)


def run_eta(snap: Snapshot) -> float | None:
    """Seconds until the run ends, or None while nothing can be said.

    The larger of two lower bounds: the bytes the active downloads still need (those whose size is
    known) at the recent overall rate, and the downloads left at the pace files have finished so
    far (when the input's count is known).
    """
    estimates: list[float] = []
    remaining = sum(max(0, e.total - e.done) for e in snap.active if e.total is not None)
    if remaining and snap.rate_bps > 0:
        estimates.append(remaining / snap.rate_bps)
    left = snap.left
    if left and snap.finished and snap.elapsed_s > 0:
        estimates.append(left * snap.elapsed_s / snap.finished)
    return max(estimates) if estimates else None


def counts_text(snap: Snapshot) -> str:
    parts = [f"{snap.ok} ok"]
    if snap.skipped:
        parts.append(f"{snap.skipped} skipped")
    parts.append(f"{snap.failed} failed")
    parts.append(f"{snap.left} left" if snap.left is not None else f"{len(snap.active)} active")
    return " · ".join(parts)


def column_widths(width: int) -> tuple[int, int]:
    """The widths of the name and the bar on a terminal ``width`` columns wide: the bytes, the rate and
    the ETA keep theirs; the name and the bar share the rest, within their bounds."""
    rest = width - (_BYTES_WIDTH + _RATE_WIDTH + _ETA_WIDTH + 4) - 1  # 4 gaps; the last column free
    name = max(_NAME_WIDTH[0], min(_NAME_WIDTH[1], rest // 2))
    return name, max(_BAR_WIDTH[0], min(_BAR_WIDTH[1], rest - name))


def _grid(name_width: int, bar_width: int) -> Table:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(width=name_width, no_wrap=True, overflow="ellipsis")
    grid.add_column(width=bar_width, no_wrap=True)
    grid.add_column(width=_BYTES_WIDTH, justify="right", no_wrap=True)
    grid.add_column(width=_RATE_WIDTH, justify="right", no_wrap=True)
    grid.add_column(width=_ETA_WIDTH, no_wrap=True)
    return grid


def _bar(done: float, total: float | None, width: int) -> RenderableType:
    if not total:
        return Text("")  # a size not known: bytes and rate only
    return ProgressBar(total=total, completed=min(done, total), width=width)


def _eta(seconds: float | None) -> str:
    return "" if seconds is None else f"ETA {format_duration(seconds)}"


def render(snap: Snapshot, rates: dict[Hashable, float], *, width: int, max_rows: int = 12) -> RenderableType:
    """The whole run (files and bytes, rate, ETA, counts) and a row per active download."""
    name_width, bar_width = column_widths(width)
    overall = _grid(name_width, bar_width)
    expected = snap.expected_files
    files = f"{snap.finished}/{expected} files" if expected is not None else f"{snap.finished} files"
    if expected:
        done, total = float(snap.finished), float(expected)
    else:  # without the input's count, the bytes of the downloads seen so far
        done, total = float(snap.bytes_done), float(snap.bytes_total or 0)
    size = format_bytes(snap.bytes_done)
    if snap.bytes_total:  # every size seen so far is known
        size += f" / {format_bytes(snap.bytes_total)}"
    overall.add_row(
        Text(f"all: {files}", style="bold"),
        _bar(done, total, bar_width),
        size,
        f"{format_bytes(snap.rate_bps)}/s",
        _eta(run_eta(snap)),
    )
    rows = _grid(name_width, bar_width)
    shown = sorted(snap.active, key=lambda e: e.key)[:max_rows]
    for entry in shown:
        rate = rates.get(entry_key(entry))
        shown_rate = "" if rate is None else f"{format_bytes(rate)}/s"
        if entry.total is not None:
            size = f"{format_bytes(entry.done)} / {format_bytes(entry.total)}"
            left = max(0, entry.total - entry.done)
            eta = _eta(left / rate) if rate else ""
        elif entry.done:
            size, eta = format_bytes(entry.done), ""
        else:  # no answer yet (or waiting for a retry)
            size, shown_rate, eta = "waiting", "", ""
        rows.add_row(Text("  " + entry.name), _bar(entry.done, entry.total, bar_width), size, shown_rate, eta)
    parts: list[RenderableType] = [overall, Text("  " + counts_text(snap))]
    if shown:
        parts.append(rows)
    if len(snap.active) > len(shown):
        parts.append(Text(f"  … and {len(snap.active) - len(shown)} more"))
    return Group(*parts)


class TerminalRenderer(Renderer):
    """A live display: the whole run and each active download, with progress bars."""

    counts_input = True  # "left" needs the input's count: worth reading the list files once more

    def __init__(self, progress: Progress, console: Console, *, refresh_per_second: float = 5.0) -> None:
        self._progress = progress
        self._console = console
        self._interval_s = 1.0 / refresh_per_second
        self._rates = RateMeter()
        self._live = Live(
            self._render(), console=console, auto_refresh=False, transient=False, redirect_stderr=False
        )

    def _render(self) -> RenderableType:
        snap = self._progress.snapshot()
        rates = self._rates.observe(snap.active, snap.elapsed_s)
        return render(snap, rates, width=self._console.width)

    async def run(self) -> None:
        self._live.start(refresh=True)
        while True:
            await asyncio.sleep(self._interval_s)
            self._live.update(self._render(), refresh=True)

    def message(self, text: str) -> None:
        self._live.console.print(Text(text))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._live.update(self._render(), refresh=True)
        self._live.stop()
