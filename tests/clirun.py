"""Running the real command, ``python -m asyncdl``, in a subprocess (no standard input)."""

from __future__ import annotations

import asyncio
import sys


async def start_cli(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asyncdl",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(proc: asyncio.subprocess.Process, timeout: float = 60) -> tuple[int, str]:
    """The exit status and standard error of ``proc``, once it has ended."""
    _, err = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def run_cli(*args: str) -> tuple[int, str]:
    """Run ``asyncdl ARGS...``; its exit status and standard error."""
    return await finish(await start_cli(*args))
