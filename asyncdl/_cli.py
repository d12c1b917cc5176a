"""The command line: argv -> options -> sources -> Downloader -> display, report, exit code.

With _cli_upload, _cli_demo and _cli_common, the only modules that print or exit; they never import aiohttp or
aiofiles.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

from ._api import DEFAULT_JOBS, DEFAULT_RETRIES, DEFAULT_TIMEOUT_S, Downloader
from ._cli_common import (
    EXIT_FAILED,
    EXIT_USAGE,
    OptionGroup,
    Parser,
    add_attempt_options,
    add_header_option,
    add_output_options,
    make_renderer,
    output_dir,
    positive_int,
    present,
    rate,
    run_main,
    size,
    statuses,
)
from ._exceptions import AsyncdlError, UsageError
from ._models import BadEntry, Request, Result
from ._progress import Progress, Renderer
from ._session import Session
from ._urllist import parse_lines
from ._version import __version__

T = TypeVar("T")


def download_parser() -> argparse.ArgumentParser:
    """``asyncdl [OPTIONS] SOURCE...``: its options in the groups of the README's tables."""
    parser = Parser(
        prog="asyncdl",
        usage="asyncdl [OPTIONS] SOURCE...",
        description="Download many URLs at once. "
        "SOURCE is a URL list file, '-' for standard input, or a URL.",
        epilog="Also: 'asyncdl demo [-d DIR]' (a run against a built-in local server, no network needed), "
        "'asyncdl upload [OPTIONS] FILE URL' (see 'asyncdl upload --help') and 'asyncdl daemon -d DIR' "
        "(a download manager driven over aria2's JSON-RPC and a web page; see 'asyncdl daemon --help').",
    )
    parser.add_argument("sources", nargs="*", metavar="SOURCE", help=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"asyncdl {__version__}")
    _downloading_options(parser.add_argument_group("downloading"))
    _network_options(parser.add_argument_group("network"))
    _output_options(parser.add_argument_group("output"))
    # A group is shown once it has an option.
    _many_hosts_options(parser.add_argument_group("many hosts"))
    _scale_out_options(parser.add_argument_group("scale-out"))
    return parser


def _downloading_options(group: OptionGroup) -> None:
    group.add_argument(
        "-i",
        "--input-file",
        dest="input_files",
        action="append",
        default=[],
        metavar="FILE",
        help="a URL list file, as a SOURCE (aria2c, wget); repeatable",
    )
    group.add_argument(
        "-d",
        "--dir",
        default=".",
        help="output directory (default: the current directory); created if missing",
    )
    group.add_argument(
        "-j", "--jobs", type=positive_int, default=DEFAULT_JOBS, metavar="N", help="downloads running at once"
    )
    group.add_argument(
        "-x",
        "--connections",
        type=positive_int,
        default=1,
        metavar="N",
        help="connections for one large file (segmented download with Range requests)",
    )
    add_attempt_options(group, retries=DEFAULT_RETRIES, timeout_s=DEFAULT_TIMEOUT_S)
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="download again and replace targets that already exist (atomically)",
    )
    group.add_argument(
        "-c", "--continue", action="store_true", help="accepted for the habit; resuming is always on"
    )


def _network_options(group: OptionGroup) -> None:
    group.add_argument(
        "--limit-rate",
        type=rate,
        default=None,
        metavar="RATE",
        help="cap on the overall byte rate: 500K, 10M, 1G (powers of 1024); default: no cap",
    )
    add_header_option(group)
    group.add_argument(
        "-U",
        "--user-agent",
        default=f"asyncdl/{__version__}",
        metavar="UA",
        help="the User-Agent header (default: asyncdl/VERSION)",
    )
    group.add_argument("--referer", metavar="URL", help="the Referer header; default: none")
    group.add_argument(
        "--load-cookies",
        metavar="FILE",
        help="cookies from a Netscape / Mozilla cookies.txt, each sent only where its domain, path, "
        "secure flag and expiry allow; default: none",
    )
    group.add_argument(
        "--ca-certificate",
        metavar="FILE",
        help="verify servers against the CA certificates in FILE (PEM); default: the system's",
    )
    group.add_argument(
        "--no-check-certificate",
        action="store_true",
        help="do not verify TLS certificates (one warning on stderr per run)",
    )


def _output_options(group: OptionGroup) -> None:
    add_output_options(group, what="a download")
    group.add_argument(
        "--save-session",
        metavar="FILE",
        help="at the end (also after Ctrl-C or SIGTERM), FILE lists the downloads that did not finish, "
        "in the list format with their options; default: none",
    )


def _many_hosts_options(group: OptionGroup) -> None:
    """Limits and retries per origin: one slow or rate-limiting origin never stalls the others."""
    group.add_argument(
        "--max-per-host",
        type=positive_int,
        metavar="N",
        help="at most N downloads at once to one origin (scheme, host, port); default: no cap but -j",
    )
    group.add_argument(
        "--lowest-speed-limit",
        type=rate,
        metavar="RATE",
        help="cut an attempt slower than RATE (500, 1K, 2M) over the last --timeout seconds and "
        "retry it from the bytes on disk (or the next mirror); default: off",
    )
    group.add_argument(
        "--max-filesize",
        type=size,
        metavar="SIZE",
        help="fail a download larger than SIZE (500M, 2G) at once, declared or received; not retried; "
        "default: no limit",
    )
    group.add_argument(
        "--retry-on",
        type=statuses,
        metavar="CODES",
        help="more HTTP statuses to retry, e.g. 403,520-524; default: none (the usual set stays)",
    )


def _scale_out_options(group: OptionGroup) -> None:
    group.add_argument(
        "--processes",
        type=positive_int,
        metavar="N",
        help="download in N worker processes on this machine, each with its own -j pool "
        "(uses N cores: pays off for many small files); default: none, all in this process",
    )
    group.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run on Ray (pip install 'asyncdl[ray]'): 'auto' (the running cluster), "
        "'ray://HOST:PORT', 'local'; default: none, no Ray",
    )
    group.add_argument(
        "--workers", type=positive_int, metavar="N", help="Ray download workers (default: one per node)"
    )
    group.add_argument(
        "--shard-size",
        type=positive_int,
        metavar="N",
        help="URLs a worker gets at a time (default: 1000 on Ray, 100 with --processes)",
    )


# --- sources ---------------------------------------------------------------------------------------


@dataclass
class _Source:
    name: str
    lines: Iterator[str] | None = None  # a file, read lazily
    url: str | None = None
    stdin: bool = False


def _open_sources(specs: Sequence[str], stdin: TextIO) -> list[_Source]:
    """Open every list file now, so a missing one is a usage error before anything starts."""
    sources: list[_Source] = []
    for spec in specs:
        if spec == "-":
            sources.append(_Source("<stdin>", stdin=True))
        elif "://" in spec and not Path(spec).exists():
            sources.append(_Source("argument", url=spec))
        else:
            try:
                handle = open(spec, encoding="utf-8", errors="replace", newline="")  # noqa: SIM115
            except OSError as exc:
                raise UsageError(f"cannot read list file {spec}: {exc.strerror or exc}") from exc
            if Path(spec).is_dir():
                handle.close()
                raise UsageError(f"cannot read list file {spec}: is a directory")
            sources.append(_Source(spec, lines=_close_after(handle)))
    return sources


def _close_after(handle: TextIO) -> Iterator[str]:
    with handle:
        yield from handle


class _End:
    pass


async def _in_thread(items: Iterator[T], *, max_ahead: int = 1024) -> AsyncIterator[T]:
    """Iterate ``items`` in a thread of its own: a slow pipe never blocks the downloads.

    At most ``max_ahead`` items wait to be taken, so memory stays bounded.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[T | _End | BaseException] = asyncio.Queue()
    slots = threading.Semaphore(max_ahead)
    stop = threading.Event()

    def hand_over(item: T | _End | BaseException) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting any more
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def produce() -> None:
        try:
            for item in items:
                while not slots.acquire(timeout=0.2):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                hand_over(item)
            hand_over(_End())
        except BaseException as exc:  # handed to the consumer
            hand_over(exc)

    threading.Thread(target=produce, name="asyncdl-stdin", daemon=True).start()
    try:
        while True:
            item = await queue.get()
            slots.release()
            if isinstance(item, _End):
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


Warn = Callable[[str], None]


def _requests(
    sources: list[_Source], stdin: TextIO, warn: Warn
) -> Iterator[Request | BadEntry] | AsyncIterator[Request | BadEntry]:
    """The downloads of every source, in order: a plain iterator unless standard input is one."""
    if any(source.stdin for source in sources):
        return _requests_and_stdin(sources, stdin, warn)
    return _requests_from(sources, warn)


def _requests_from(sources: list[_Source], warn: Warn) -> Iterator[Request | BadEntry]:
    for source in sources:
        if source.url is not None:
            yield from parse_lines([source.url], source=source.name, warn=warn)
        else:
            assert source.lines is not None
            yield from parse_lines(source.lines, source=source.name, warn=warn)


async def _requests_and_stdin(
    sources: list[_Source], stdin: TextIO, warn: Warn
) -> AsyncIterator[Request | BadEntry]:
    for source in sources:
        if source.stdin:
            # A slow pipe must not block the downloads: read in a thread.
            async for item in _in_thread(parse_lines(stdin, source=source.name, warn=warn)):
                yield item
        else:
            for item in _requests_from([source], warn):
                yield item


# --- running ---------------------------------------------------------------------------------------


def downloader_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Downloader options that a run and the daemon take from the same command-line options."""
    return {
        "jobs": args.jobs,
        "connections": args.connections,
        "retries": args.retries,
        "timeout": args.timeout,
        "user_agent": args.user_agent,
        "referer": args.referer,
        "cookies": args.load_cookies,
        "ca_certificate": args.ca_certificate,
        "verify": not args.no_check_certificate,
        "max_per_host": args.max_per_host,
        "lowest_speed_limit": args.lowest_speed_limit,
        "max_filesize": args.max_filesize,
        "retry_on": args.retry_on,
    }


async def _download(args: argparse.Namespace, stdin: TextIO, stderr: TextIO) -> int:
    specs = [*args.sources, *args.input_files]
    if not specs:
        raise UsageError("no SOURCE given: a URL list file, '-' or a URL (or -i FILE)")
    sources = _open_sources(specs, stdin)
    dest = output_dir(args.dir)
    progress = Progress()
    # Made before the display starts: a usage error (--ray without Ray) is then one line, no summary.
    downloader = Downloader(
        dest,
        limit_rate=args.limit_rate,
        headers=args.header,
        overwrite=args.overwrite,
        progress=progress,
        report=args.report,
        **downloader_options(args),
        **_worker_options(args),
    )
    downloader.open_report()  # an unwritable report is a usage error before anything starts
    session = Session(args.save_session) if args.save_session is not None else None
    renderer = make_renderer(args.quiet, progress, stderr)
    if args.no_check_certificate:
        renderer.message("asyncdl: warning: TLS certificates are not checked (--no-check-certificate)")
    warn = _warner(renderer)
    requests = _requests(sources, stdin, warn)

    async def results() -> AsyncIterator[Result]:
        async with downloader as dl:
            async for result in dl.stream(_tracked(requests, session)):
                if session is not None:
                    session.finished(result)
                yield result

    if renderer.counts_input and not any(source.stdin for source in sources):
        _count_in_background(sources, progress)
    try:
        return await present(results(), renderer, progress)
    finally:
        if session is not None:
            # After an interruption the downloads never started follow; the unread rest of
            # standard input is not waited for.
            session.write(requests if isinstance(requests, Iterator) else ())


def _tracked(
    requests: Iterator[Request | BadEntry] | AsyncIterator[Request | BadEntry], session: Session | None
) -> Iterator[Request | BadEntry] | AsyncIterator[Request | BadEntry]:
    if session is None:
        return requests
    if isinstance(requests, Iterator):
        return session.track(requests)
    return session.track_async(requests)


def _warner(renderer: Renderer) -> Callable[[str], None]:
    """How the list parser's warnings reach the user: a line on the display (from any thread)."""
    loop = asyncio.get_running_loop()
    loop_thread = threading.get_ident()

    def warn(text: str) -> None:
        line = f"asyncdl: warning: {text}"
        if threading.get_ident() == loop_thread:
            renderer.message(line)
        else:  # the thread that reads standard input
            with contextlib.suppress(RuntimeError):  # the loop is gone
                loop.call_soon_threadsafe(renderer.message, line)

    return warn


def _count_in_background(sources: list[_Source], progress: Progress) -> None:
    """Count the downloads of the list files in a thread, for the display's "left" figure.

    Only for the terminal display: the count reads every file once more, which a run that nobody
    watches need not pay for. The downloads do not wait for it.
    """
    paths = [source.name for source in sources if source.lines is not None]
    direct = sum(1 for source in sources if source.url is not None)

    def count() -> None:
        total = direct
        try:
            for path in paths:
                with open(path, encoding="utf-8", errors="replace") as handle:
                    # A download starts at column 0; options are indented; comments start with '#'.
                    total += sum(1 for line in handle if line[:1] not in _NOT_A_DOWNLOAD and line.strip())
        except OSError:
            return
        progress.expected_files = total

    threading.Thread(target=count, name="asyncdl-count", daemon=True).start()


_NOT_A_DOWNLOAD = frozenset(" \t#\r\n")


def _worker_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of a run on workers: Ray actors (--ray) or processes on this machine (--processes)."""
    if args.ray is not None and args.processes is not None:
        raise UsageError("--processes and --ray cannot be used together")
    if args.ray is None:
        if args.workers is not None:
            raise UsageError("--workers needs --ray (on this machine: --processes N)")
        if args.processes is None:
            if args.shard_size is not None:
                raise UsageError("--shard-size needs --ray or --processes")
            return {}
        return {"processes": args.processes, "shard_size": args.shard_size}
    return {"ray": args.ray, "workers": args.workers, "shard_size": args.shard_size}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``asyncdl`` and ``python -m asyncdl``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    stderr = sys.stderr
    try:
        if argv[:1] == ["upload"]:
            from ._cli_upload import upload_main

            status: int = upload_main(argv[1:], run=run_main, stderr=stderr)
            return status
        if argv[:1] == ["demo"]:
            from ._cli_demo import demo_main

            return demo_main(argv[1:], run=run_main, stderr=stderr)
        if argv[:1] == ["daemon"]:
            from ._cli_daemon import daemon_main

            return daemon_main(argv[1:], run=run_main, stdout=sys.stdout, stderr=stderr)
        args = download_parser().parse_args(argv)
        return run_main(lambda: _download(args, sys.stdin, stderr))
    except UsageError as exc:
        print(f"asyncdl: {exc}", file=stderr)
        return EXIT_USAGE
    except AsyncdlError as exc:
        print(f"asyncdl: {exc}", file=stderr)
        return EXIT_FAILED
