"""The terminal display: a real pseudo-terminal, as a user sees it."""

from __future__ import annotations

import asyncio
import os
import pty
import sys
from pathlib import Path

from faultserver import FaultServer


async def test_terminal_gets_a_live_display_and_a_summary(fault_server: FaultServer, tmp_path: Path) -> None:
    # A throttled body keeps the download active long enough for the display to draw it.
    fault_server.route("/slow.bin", body=b"x" * 300_000, rate=400_000)
    fault_server.route("/fast.bin", body=b"y" * 1000)
    controller, terminal = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asyncdl",
        fault_server.url("/slow.bin"),
        fault_server.url("/fast.bin"),
        fault_server.url("/missing"),
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
    assert "slow.bin" in text  # a line for the active download
    assert " at " in text and "/s" in text  # the overall line with its rate
    assert " left" in text  # how many downloads of the input are still to come
    assert "FAILED" in text and "missing" in text
    assert "2 ok, 0 skipped, 1 failed;" in text
