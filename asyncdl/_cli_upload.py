"""`asyncdl upload`: the command line of streaming uploads.

    asyncdl upload [OPTIONS] FILE URL                   # one file ('-': standard input, sent chunked)
    asyncdl upload [OPTIONS] FILE_OR_DIR... URL_PREFIX/   # many files, each to URL_PREFIX + its path

Exit status: 0 when every upload got a 2xx, 1 otherwise, 2 on a usage error (which includes a
missing or unreadable FILE for a single upload; in a batch an unreadable file is a failed record).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ._cli_common import (
    Parser,
    add_attempt_options,
    add_header_option,
    add_output_options,
    make_renderer,
    positive_int,
    present,
)
from ._exceptions import StorageError, UsageError
from ._files import probe_upload
from ._progress import Progress
from ._report import ReportWriter
from ._upload import (
    DEFAULT_UPLOAD_JOBS,
    DEFAULT_UPLOAD_RETRIES,
    DEFAULT_UPLOAD_TIMEOUT_S,
    STDIN_NAME,
    UploadItem,
    UploadSettings,
    check_sources,
    check_url,
    make_settings,
    plan_uploads,
    stream_uploads,
)
from ._version import __version__


def _field(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"field must look like NAME=VALUE, not {text!r}")
    return name, value


def upload_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="asyncdl upload",
        usage="asyncdl upload [OPTIONS] FILE URL\n       asyncdl upload [OPTIONS] FILE_OR_DIR... URL_PREFIX/",
        description="Stream files to HTTP servers (PUT by default). FILE '-' reads standard input. "
        "With several files or a directory, each file goes to URL_PREFIX plus its relative path. "
        "A failed attempt re-sends the file from the start: HTTP uploads cannot resume.",
    )
    parser.add_argument("items", nargs="+", metavar="FILE_OR_DIR... URL", help=argparse.SUPPRESS)
    parser.add_argument(
        "--method",
        type=str.upper,
        choices=("PUT", "POST"),
        default="PUT",
        help="request method",
    )
    parser.add_argument("--form", metavar="FIELD", help="send multipart/form-data with the file under FIELD")
    parser.add_argument(
        "--field",
        type=_field,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="another form field (with --form), repeatable",
    )
    add_header_option(parser)
    add_attempt_options(parser, retries=DEFAULT_UPLOAD_RETRIES, timeout_s=DEFAULT_UPLOAD_TIMEOUT_S)
    add_output_options(parser, what="an upload")
    parser.add_argument(
        "--retry-post", action="store_true", help="retry a failed POST too (POST is not idempotent)"
    )
    parser.add_argument(
        "-j", "--jobs", type=positive_int, default=DEFAULT_UPLOAD_JOBS, metavar="N", help="uploads at once"
    )
    parser.add_argument("--version", action="version", version=f"asyncdl {__version__}")
    return parser


@dataclass(frozen=True)
class _Plan:
    single: UploadItem | None  # one FILE to a full URL (or to a prefix): usage error when unreadable
    paths: list[Path]
    prefix: str | None


def _plan(paths: Sequence[str], url: str) -> _Plan:
    """Decide between a single upload and a batch; UsageError for what cannot work."""
    batch = url.endswith("/") or len(paths) > 1 or any(Path(p).is_dir() for p in paths if p != "-")
    if "-" in paths:
        if batch:
            raise UsageError("standard input ('-') can only be uploaded alone, to a full URL")
        check_url(url, prefix=False)
        return _Plan(UploadItem(None, url, STDIN_NAME), [], None)
    check_url(url, prefix=batch)
    sources = check_sources(paths)
    if len(sources) == 1 and not sources[0].is_dir():
        # One named file is a single upload even when sent to a prefix.
        item = next(plan_uploads(sources, url)) if batch else UploadItem(sources[0], url, sources[0].name)
        return _Plan(item, sources, url if batch else None)
    return _Plan(None, sources, url)


def upload_main(
    argv: Sequence[str], *, run: Callable[[Callable[[], Coroutine[Any, Any, int]]], int], stderr: TextIO
) -> int:
    """``asyncdl upload ...``; returns the exit status (UsageError propagates to ``_cli.main``)."""
    args = upload_parser().parse_args(argv)
    if len(args.items) < 2:
        raise UsageError("expected FILE URL or FILE_OR_DIR... URL_PREFIX/ (see 'asyncdl upload --help')")
    *paths, url = args.items
    plan = _plan(paths, url)
    settings = make_settings(
        method=args.method,
        form_field=args.form,
        fields=args.field,
        headers=args.header,
        retries=args.retries,
        timeout=args.timeout,
        retry_post=args.retry_post,
    )
    return run(lambda: _upload(args, plan, settings, stderr))


async def _upload(args: argparse.Namespace, plan: _Plan, settings: UploadSettings, stderr: TextIO) -> int:
    if plan.single is not None and plan.single.path is not None:
        try:
            await probe_upload(plan.single.path)
        except StorageError as exc:
            raise UsageError(str(exc)) from exc
    items = [plan.single] if plan.single is not None else plan_uploads(plan.paths, plan.prefix or "")
    report = ReportWriter(args.report) if args.report else None
    progress = Progress()
    if plan.single is not None:
        progress.expected_files = 1
    results = stream_uploads(items, settings, jobs=args.jobs, progress=progress)
    return await present(results, make_renderer(args.quiet, progress, stderr), progress, report=report)
