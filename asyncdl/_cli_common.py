"""What the download and upload command lines share: option types, the display, exit codes, the run loop.

Like the command lines themselves, the only place (with them) that prints or exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn, TextIO

from ._exceptions import UsageError
from ._models import Result, Status
from ._progress import (
    PlainRenderer,
    Progress,
    QuietRenderer,
    Renderer,
    failures_line,
    summary_line,
)
from ._ratelimit import parse_rate, parse_size
from ._report import ReportWriter
from ._retry import parse_statuses
from ._urllist import header_problem

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


class HelpFormatter(argparse.HelpFormatter):
    """``-d, --dir DIR`` as in the README's tables, and every option's default in its help.

    An option whose help does not name its default gets one: ``off`` for a flag, ``none`` for an
    option that is unset unless given, else the value.
    """

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{', '.join(action.option_strings)} {metavar}"

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or not action.option_strings or action.default is argparse.SUPPRESS:
            return text
        if action.nargs == 0 and action.const is not None:  # a flag: store_true and the like
            shown = "on" if action.default else "off"
        elif action.default is None or action.default == []:
            shown = "none"
        else:
            shown = "%(default)s"
        return f"{text} (default: {shown})"


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (no usage dump) and exit 2.

    Help shows each option as ``-d, --dir DIR`` with its default (:class:`HelpFormatter`).
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(**kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _whole_number(text: str, minimum: int, bound: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {bound}, not {value}")
    return value


def positive_int(text: str) -> int:
    return _whole_number(text, 1, "at least 1")


def non_negative_int(text: str) -> int:
    return _whole_number(text, 0, "0 or more")


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, not {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def rate(text: str) -> int:
    try:
        return parse_rate(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def size(text: str) -> int:
    try:
        return parse_size(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def statuses(text: str) -> frozenset[int]:
    try:
        return parse_statuses(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def header(text: str) -> tuple[str, str]:
    # As a list's header= line: the text is not echoed (it may hold a secret), a line break refused.
    problem = header_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    name, _, value = text.partition(":")
    return name.strip(), value.strip()


# Where options go: the parser itself or one of its groups.
OptionGroup = argparse.ArgumentParser | argparse._ArgumentGroup


def add_header_option(options: OptionGroup) -> None:
    options.add_argument(
        "--header",
        type=header,
        action="append",
        default=[],
        metavar="'Name: value'",
        help="extra request header, repeatable",
    )


def add_attempt_options(options: OptionGroup, *, retries: int, timeout_s: float | None) -> None:
    options.add_argument(
        "--retries", type=non_negative_int, default=retries, metavar="N", help="attempts after the first"
    )
    options.add_argument(
        "--timeout",
        type=seconds,
        default=timeout_s,
        metavar="S",
        help="stall timeout: fail the attempt when no byte arrives for S seconds",
    )


def add_output_options(options: OptionGroup, *, what: str) -> None:
    options.add_argument(
        "-q", "--quiet", action="store_true", help="no progress display; errors and the summary still shown"
    )
    options.add_argument("--report", metavar="FILE", help=f"write a JSON Lines report, one object {what}")


def output_dir(name: str) -> Path:
    """The output directory, made now if missing: UsageError when it cannot be made or written to."""
    dest = Path(name)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create output directory {dest}: {exc.strerror or exc}") from exc
    if not os.access(dest, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write to output directory {dest}: permission denied")
    return dest


def make_renderer(quiet: bool, progress: Progress, stderr: TextIO) -> Renderer:
    if quiet:
        return QuietRenderer(stderr)
    if stderr.isatty():
        from rich.console import Console

        from ._display import TerminalRenderer  # rich is imported only for a terminal

        return TerminalRenderer(progress, Console(file=stderr))
    return PlainRenderer(progress, stderr)


async def present(
    results: AsyncIterator[Result],
    renderer: Renderer,
    progress: Progress,
    *,
    report: ReportWriter | None = None,
) -> int:
    """Draw the run while ``results`` arrive: a line per failure, the summary at the end; the exit code."""
    failed = 0
    drawing = asyncio.ensure_future(renderer.run())
    try:
        async with contextlib.aclosing(results) as arriving:  # type: ignore[type-var]
            async for result in arriving:
                if report is not None:
                    report.write(result)
                if result.status is Status.FAILED:
                    failed += 1
                    renderer.message(failure_line(result))
    finally:
        drawing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drawing
        renderer.close()
        if report is not None:
            report.close()
        snap = progress.snapshot()
        grouped = failures_line(snap)
        if grouped is not None:
            renderer.message(grouped)
        renderer.message(summary_line(snap))
    return EXIT_FAILED if failed else EXIT_OK


def failure_line(result: Result) -> str:
    return f"FAILED {result.url}: {result.error}"


def run_main(make: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run the main coroutine; SIGINT / SIGTERM cancel it cleanly and give 130 / 143."""
    loop = asyncio.new_event_loop()
    task = loop.create_task(make())
    received: list[int] = []

    def on_signal(signum: int) -> None:
        if received:
            os._exit(EXIT_SIGNAL.get(signal.Signals(signum), 130))  # a second signal: stop now
        received.append(signum)
        task.cancel()

    for sig in EXIT_SIGNAL:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        return loop.run_until_complete(task)
    except asyncio.CancelledError:
        if received:
            return EXIT_SIGNAL[signal.Signals(received[0])]
        raise
    finally:
        for sig in EXIT_SIGNAL:
            loop.remove_signal_handler(sig)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
