"""`asyncdl demo [-d DIR]`: a real run against a server of its own on 127.0.0.1, no network needed.

The server (``_web.DemoServer``) serves generated files (``_demo.py``): a few hundred small, a few
large, one of unknown size, one whose connection breaks half-way, and an origin that answers 429
at first. They are downloaded into DIR with the normal display and a report; the run ends with the
summary, what was retried and resumed, and where the files and the report are.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TextIO

from ._api import Downloader
from ._cli_common import Parser, make_renderer, output_dir, present
from ._demo import DemoEvents, DemoPlan, demo_plan
from ._models import Result
from ._progress import Progress, format_bytes
from ._web import DemoServer

DEFAULT_DEMO_DIR = "asyncdl-demo"
REPORT_NAME = "report.jsonl"
DEMO_HOST = "127.0.0.1"


def demo_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="asyncdl demo",
        usage="asyncdl demo [-d DIR]",
        description="A run against a built-in HTTP server on 127.0.0.1 (no network needed): a few hundred "
        "small files, a few large ones, one connection that breaks half-way and is resumed, one origin "
        "that answers 429 with Retry-After at first. Takes about 10-20 seconds; files already in DIR "
        "from an earlier demo are downloaded again.",
    )
    parser.add_argument(
        "-d", "--dir", default=DEFAULT_DEMO_DIR, help="where the files and the report go; created if missing"
    )
    return parser


def demo_main(
    argv: Sequence[str], *, run: Callable[[Callable[[], Coroutine[Any, Any, int]]], int], stderr: TextIO
) -> int:
    """``asyncdl demo ...``; returns the exit status (UsageError propagates to ``_cli.main``)."""
    args = demo_parser().parse_args(argv)
    dest = output_dir(args.dir)
    _no_proxy_for(DEMO_HOST)
    return run(lambda: _demo(dest, demo_plan(), stderr, sys.stdout))


async def _demo(dest: Path, plan: DemoPlan, stderr: TextIO, stdout: TextIO) -> int:
    report = dest / REPORT_NAME
    progress = Progress()
    progress.expected_files = len(plan.files)
    retried: list[Result] = []
    failed: list[Result] = []
    async with DemoServer(plan, host=DEMO_HOST) as server:
        # overwrite: every demo downloads everything again, even into the folder of an earlier one.
        downloader = Downloader(dest, overwrite=True, progress=progress, report=report)
        downloader.open_report()

        async def results() -> AsyncIterator[Result]:
            async with downloader as dl:
                async for result in dl.stream(plan.requests(server.url, server.limited_url)):
                    if result.attempts > 1:
                        retried.append(result)
                    if not result.ok:
                        failed.append(result)
                    yield result

        status = await present(results(), make_renderer(False, progress, stderr), progress)
    closing = story(
        plan,
        server.events,
        retried,
        failed=len(failed),
        dest=dest,
        report=report,
        limited_url=server.limited_url,
    )
    for line in closing:
        # Paths and URLs stay whole, to be copied.
        text = textwrap.fill(
            line, width=100, subsequent_indent="    ", break_long_words=False, break_on_hyphens=False
        )
        print(text, file=stdout, flush=True)
    return status


def story(
    plan: DemoPlan,
    events: DemoEvents,
    retried: Sequence[Result],
    *,
    failed: int,
    dest: Path,
    report: Path,
    limited_url: str,
) -> list[str]:
    """The closing words: what was retried, what was resumed, where everything is."""
    lines = ["", "What happened:"]
    if events.too_many_requests:
        lines.append(
            f"  retried: {_count(len(events.limited_paths), 'file')} from {limited_url} answered "
            f"'429 Too Many Requests' with a Retry-After at first "
            f"({_count(events.too_many_requests, 'such answer')}); "
            "each was asked for again when the server said"
        )
    for path, at, size in events.breaks:
        resumed_from = [start for resumed, start in events.resumes if resumed == path]
        how = (
            f"the next attempt asked only for the rest (Range: bytes={resumed_from[0]}-) and appended it"
            if resumed_from
            else "it was downloaded again from the start"
        )
        checked = "; its sha-256 matched" if plan.by_path[path].checksum and not failed else ""
        lines.append(
            f"  resumed: the connection of {path.lstrip('/')} broke at {format_bytes(at)} of "
            f"{format_bytes(size)}; {how}{checked}"
        )
    retries = sum(result.attempts - 1 for result in retried)
    ending = f"{failed} of {len(plan.files)} failed" if failed else f"all {len(plan.files)} arrived"
    lines.append(
        f"  {len(retried)} downloads needed more than one attempt ({retries} retries in all); {ending}"
    )
    lines.append(f"Files:  {dest.resolve()}{os.sep}")
    lines.append(f"Report: {report.resolve()} (one JSON object a download)")
    return lines


def _count(n: int, thing: str, things: str | None = None) -> str:
    return f"{n} {thing if n == 1 else things or thing + 's'}"


def _no_proxy_for(host: str) -> None:
    """The demo's server is on this machine: never go through a proxy from the environment."""
    for name in ("no_proxy", "NO_PROXY"):
        current = os.environ.get(name)
        os.environ[name] = f"{current},{host}" if current else host
