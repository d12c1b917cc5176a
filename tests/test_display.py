"""The terminal display: what it draws from a Progress, and a real pseudo-terminal as a user sees it."""

from __future__ import annotations

import asyncio
import io
import os
import pty
import re
import sys
from pathlib import Path

from faultserver import FaultServer
from rich.console import Console

from asyncdl import Result, Status
from asyncdl._display import RateMeter, render, run_eta
from asyncdl._progress import ActiveDownload, Progress, Snapshot

BAR = "\u2501"  # the filled part of a rich progress bar


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _text(snap: Snapshot, rates: dict[object, float], width: int = 120) -> list[str]:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(render(snap, rates, width=width))
    output = console.file.getvalue()  # type: ignore[attr-defined]
    return [line.rstrip() for line in output.splitlines()]


def test_a_bar_for_the_run_and_each_download_with_bytes_rate_and_eta() -> None:
    clock = FakeClock()
    progress = Progress(clock=clock)
    progress.expected_files = 10
    sized = progress.start("http://h/big", "big.iso")
    progress.begin(sized, done=0, total=4000)
    unknown = progress.start("http://h/stream", "stream.log")
    progress.begin(unknown, done=0, total=None)
    progress.start("http://h/slow", "slow.txt")  # no answer yet
    done = progress.start("http://h/a", "a.txt")
    progress.finish(done, Result("http://h/a", "a.txt", Status.OK, 10, 1))
    failed = progress.start("http://h/b", "b.txt")
    progress.finish(failed, Result("http://h/b", None, Status.FAILED, error="HTTP 404"))
    meter = RateMeter()
    snap = progress.snapshot()
    meter.observe(snap.active, snap.elapsed_s)
    clock.now += 2
    progress.advance(sized, 1000)  # 500 B/s: 3000 B left, 6 s
    progress.advance(unknown, 3000)
    snap = progress.snapshot()

    lines = _text(snap, meter.observe(snap.active, snap.elapsed_s))

    overall, counts, big, stream, slow = lines
    assert overall.startswith("all: 2/10 files")
    assert BAR * 5 in overall  # 2 of 10 files: a fifth of a 40-wide bar
    assert re.search(r"3\.9 KiB +2\.0 KiB/s ETA 0:08$", overall)  # 8 files left at 1 s a file
    assert counts.strip() == "1 ok \u00b7 1 failed \u00b7 8 left"
    assert big.startswith("  big.iso") and BAR * 8 in big  # a quarter of 40
    assert re.search(r"1000 B / 3\.9 KiB +500 B/s ETA 0:06$", big)
    # A size not known: no bar, no ETA; the bytes and the rate.
    assert BAR not in stream and "ETA" not in stream
    assert re.search(r"stream\.log +2\.9 KiB +1\.5 KiB/s$", stream)
    assert re.search(r"slow\.txt +waiting$", slow)


def test_an_80_column_terminal_gets_every_figure_whole() -> None:
    clock = FakeClock()
    progress = Progress(clock=clock)
    progress.expected_files = 300
    key = progress.start("http://h/a", "a-rather-long-file-name-for-a-terminal.iso")
    progress.begin(key, done=0, total=1023 * 1024 * 1024)
    stream = progress.start("http://h/s", "stream.log")
    progress.begin(stream, done=0, total=None)
    meter = RateMeter()
    meter.observe(progress.snapshot().active, 0.0)
    clock.now += 1
    progress.advance(key, 1000 * 1024 * 1024)
    progress.advance(stream, 1023 * 1024 + 900)
    snap = progress.snapshot()

    lines = _text(snap, meter.observe(snap.active, snap.elapsed_s), width=80)

    assert all(len(line) <= 80 for line in lines)
    assert lines[2].startswith("  a-rather-lo\u2026") and BAR in lines[2]
    assert lines[2].endswith("1000.0 MiB / 1023.0 MiB 1000.0 MiB/s ETA 0:00")
    assert lines[3].endswith("1023.9 KiB 1023.9 KiB/s")


def test_the_run_shows_bytes_of_the_known_total_once_every_size_seen_is_known() -> None:
    progress = Progress(clock=FakeClock())
    progress.expected_files = 3
    a = progress.start("http://h/a", "a")
    progress.begin(a, done=0, total=3 * 1024 * 1024)
    b = progress.start("http://h/b", "b")
    progress.advance(a, 1024 * 1024)
    overall = _text(progress.snapshot(), {})[0]
    assert "1.0 MiB" in overall and " / " not in overall  # b's size is not known yet
    progress.begin(b, done=0, total=1024 * 1024)
    assert re.search(r"files +.*1\.0 MiB / 4\.0 MiB", _text(progress.snapshot(), {})[0])


def test_at_most_twelve_downloads_are_listed_and_the_rest_counted() -> None:
    progress = Progress(clock=FakeClock())
    for n in range(15):
        progress.start(f"http://h/{n}", f"f{n}")
    lines = _text(progress.snapshot(), {}, width=100)
    assert sum(line.startswith("  f") for line in lines) == 12
    assert lines[-1].strip() == "\u2026 and 3 more"
    assert lines[0].startswith("all: 0 files")  # the input's count is not known
    assert lines[1].strip() == "0 ok \u00b7 0 failed \u00b7 15 active"


def test_rates_follow_each_download_over_a_window_and_forget_finished_ones() -> None:
    meter = RateMeter(window_s=3.0)
    entry = ActiveDownload(1, "u", "n")
    assert meter.observe([entry], 0.0) == {}  # one sight: no rate yet
    entry.done = 1000
    assert meter.observe([entry], 1.0) == {(1, "u"): 1000.0}
    entry.done = 1500
    assert meter.observe([entry], 2.0) == {(1, "u"): 750.0}
    entry.done = 1600
    assert meter.observe([entry], 4.0) == {(1, "u"): 200.0}  # over the last 3 s: (1600 - 1000) / 3
    entry.done = 0  # the attempt started over
    assert meter.observe([entry], 5.0) == {}
    assert meter.observe([], 6.0) == {}
    assert meter.observe([entry], 7.0) == {}  # forgotten while it was not active


def test_the_run_eta_is_the_larger_of_bytes_left_and_files_left() -> None:
    def snap(active: tuple[ActiveDownload, ...], **fields: float) -> Snapshot:
        values: dict[str, float | None] = dict(
            elapsed_s=10.0, bytes_done=0, bytes_total=None, rate_bps=100.0, ok=0, skipped=0, failed=0
        )
        values.update(fields)
        return Snapshot(**values, active=active)  # type: ignore[arg-type]

    big = ActiveDownload(1, "u", "big", done=0, total=1000)
    assert run_eta(snap((big,))) == 10.0  # 1000 B at 100 B/s
    assert run_eta(snap((big,), ok=5, expected_files=20)) == 30.0  # 15 left at 2 s a file
    assert run_eta(snap((big,), ok=5, expected_files=6)) == 10.0
    assert run_eta(snap((ActiveDownload(2, "v", "unknown", done=50),))) is None
    assert run_eta(snap((big,), rate_bps=0.0)) is None


async def test_terminal_gets_a_live_display_and_a_summary(fault_server: FaultServer, tmp_path: Path) -> None:
    # Two seconds each: several redraws (five a second) see them under way.
    fault_server.route("/slow.bin", body=b"x" * 600_000, rate=300_000)
    fault_server.route("/unsized.bin", body=b"y" * 200_000, chunked=True, rate=100_000)
    controller, terminal = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asyncdl",
        fault_server.url("/slow.bin"),
        fault_server.url("/unsized.bin"),
        fault_server.url("/missing"),
        fault_server.url("/gone"),
        "-d",
        str(tmp_path),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
        env={**os.environ, "COLUMNS": "120", "LINES": "30", "TERM": "xterm-256color"},
    )
    os.close(terminal)
    output = bytearray()
    loop = asyncio.get_running_loop()

    def read_some() -> bytes:
        try:
            return os.read(controller, 65536)
        except OSError:  # EIO: the child closed the terminal
            return b""

    while chunk := await loop.run_in_executor(None, read_some):
        output.extend(chunk)
    os.close(controller)
    assert await asyncio.wait_for(proc.wait(), timeout=30) == 1
    text = output.decode("utf-8", "replace")
    assert "\x1b[" in text  # redrawn with terminal control sequences
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)  # what is drawn, without the control sequences
    # The whole run, with a bar, and a row for each active download: a bar for a known size and its
    # bytes, rate and ETA; a size not known shows its bytes and rate.
    assert re.search(r"all: \d/4 files +" + BAR, screen)
    assert re.search(
        r"slow\.bin +" + BAR + r"[━╸╺]* +[\d.]+ KiB / 585\.9 KiB +[\d.]+ KiB/s ETA 0:0\d", screen
    )
    assert re.search(r"unsized\.bin +[\d.]+ KiB +[\d.]+ KiB/s", screen)
    assert not re.search(r"unsized\.bin +" + BAR, screen)
    assert re.search(r"\d ok \u00b7 \d failed \u00b7 \d left", screen)
    assert "FAILED" in text and "missing" in text
    # The summary, with the failures grouped by reason and origin.
    origin = fault_server.url("/").rstrip("/")
    assert f"2 failed: 2 \u00d7 HTTP 404 from {origin}\r\n" in screen
    assert "2 ok, 0 skipped, 2 failed;" in screen
