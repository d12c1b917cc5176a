"""Running the real command, ``python -m asyncdl``, in a subprocess (no standard input)."""

from __future__ import annotations

import asyncio
import sys


async def start_cli(*args: str, stdin: bool = False) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asyncdl",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(
    proc: asyncio.subprocess.Process, timeout: float = 60, stdin: bytes | None = None
) -> tuple[int, str]:
    """The exit status and standard error of ``proc``, once it has ended (``stdin`` written first)."""
    _, err = await asyncio.wait_for(proc.communicate(stdin), timeout=timeout)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def run_cli(*args: str, stdin: bytes | None = None) -> tuple[int, str]:
    """Run ``asyncdl ARGS...`` (with ``stdin`` as its standard input); its exit status and stderr."""
    return await finish(await start_cli(*args, stdin=stdin is not None), stdin=stdin)
