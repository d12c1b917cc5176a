"""`asyncdl daemon`: the command line of the download manager (aria2's JSON-RPC and a web page).

    asyncdl daemon -d DIR [--rpc-listen-port 6800] [--rpc-secret TOKEN] [--rpc-listen-all]
                   [--rpc-allow-origin-all] [--save-session FILE] [-i FILE] [download options]

Without --rpc-secret a random secret is made, written to DIR/.asyncdl-rpc-secret (mode 0600) and
printed once on standard output. The secret is never written to any log line.
"""

from __future__ import annotations

import argparse
import os
import secrets
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TextIO

from ._api import DEFAULT_JOBS, DEFAULT_RETRIES, DEFAULT_TIMEOUT_S, Downloader
from ._cli import _many_hosts_options, _network_options, downloader_options
from ._cli_common import EXIT_OK, Parser, non_negative_int, positive_int, rate, seconds
from ._daemon import DEFAULT_MAX_RESULTS, DaemonConfig, serve
from ._exceptions import UsageError
from ._session import check_writable
from ._version import __version__

DEFAULT_PORT = 6800
SECRET_FILE = ".asyncdl-rpc-secret"  # noqa: S105 - a file name, not a secret


def daemon_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="asyncdl daemon",
        description="A download manager driven over aria2's JSON-RPC (at /jsonrpc, HTTP POST and "
        "WebSocket) and a web page (at /).",
    )
    parser.add_argument("-d", "--dir", required=True, help="the download directory (created if missing)")
    parser.add_argument("--rpc-listen-port", type=non_negative_int, default=DEFAULT_PORT, metavar="PORT")
    parser.add_argument("--rpc-secret", metavar="TOKEN", help="the secret every call must carry")
    parser.add_argument(
        "--rpc-listen-all", action="store_true", help="listen on every interface (default: 127.0.0.1 only)"
    )
    parser.add_argument(
        "--rpc-allow-origin-all",
        action="store_true",
        help="accept calls from web pages of any origin (default: only the daemon's own page)",
    )
    parser.add_argument("--save-session", metavar="FILE", help="keep the queue in FILE (aria2's format)")
    parser.add_argument(
        "-i", "--input-file", metavar="FILE", help="queue the downloads of FILE at start (a saved session)"
    )
    parser.add_argument(
        "-j",
        "--max-concurrent-downloads",
        "--jobs",
        dest="jobs",
        type=positive_int,
        default=DEFAULT_JOBS,
        metavar="N",
        help=f"downloads running at once (default: {DEFAULT_JOBS})",
    )
    parser.add_argument(
        "-x",
        "--connections",
        type=positive_int,
        default=1,
        metavar="N",
        help="connections for one large file",
    )
    parser.add_argument(
        "--max-overall-download-limit", dest="overall_limit", type=rate, metavar="RATE", help="--limit-rate"
    )
    parser.add_argument(
        "--max-download-result",
        type=positive_int,
        default=DEFAULT_MAX_RESULTS,
        metavar="N",
        help=f"stopped downloads kept, the oldest dropped first (default: {DEFAULT_MAX_RESULTS})",
    )
    parser.add_argument(
        "--retries",
        type=non_negative_int,
        default=DEFAULT_RETRIES,
        metavar="N",
        help="attempts after the first",
    )
    parser.add_argument(
        "--timeout", type=seconds, default=DEFAULT_TIMEOUT_S, metavar="S", help="stall timeout in seconds"
    )
    # The download command's own option groups: every run option is a daemon option too.
    _network_options(parser.add_argument_group("network"))
    _many_hosts_options(parser.add_argument_group("many hosts"))
    parser.add_argument("-q", "--quiet", action="store_true", help="no messages but errors")
    parser.add_argument("--version", action="version", version=f"asyncdl {__version__}")
    return parser


def make_secret_file(directory: Path, secret: str) -> Path:
    """Write ``secret`` to a file in ``directory`` that only this user can read."""
    path = directory / SECRET_FILE
    path.unlink(missing_ok=True)  # a file of someone else's mode is replaced, never reused
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(secret + "\n")
    return path


def daemon_main(
    argv: Sequence[str],
    *,
    run: Callable[[Callable[[], Coroutine[Any, Any, int]]], int],
    stdout: TextIO,
    stderr: TextIO,
) -> int:
    args = daemon_parser().parse_args(argv)
    root = Path(args.dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the download directory {root}: {exc.strerror}") from None
    session = Path(args.save_session) if args.save_session else None
    if session is not None:
        check_writable(session)  # told now, not at the first change of the queue
    input_text = None
    if args.input_file is not None:
        try:
            # As URL lists are read: a byte that is not UTF-8 spoils its own entry, not the file.
            input_text = Path(args.input_file).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            # aria2c's habit: -i names the session file of the last run, which may not exist yet.
            input_text = None if args.input_file == args.save_session else _unreadable(args.input_file)
        except OSError as exc:
            raise UsageError(f"cannot read {args.input_file}: {exc.strerror}") from None

    def log(text: str) -> None:
        print(f"asyncdl daemon: {text}", file=stderr, flush=True)

    secret = args.rpc_secret
    if not secret:
        secret = secrets.token_urlsafe(24)
        try:
            path = make_secret_file(root, secret)
        except OSError as exc:
            reason = exc.strerror or exc
            raise UsageError(
                f"cannot write the secret file {root / SECRET_FILE}: {reason} (or give --rpc-secret)"
            ) from None
        # The one place the secret is shown: standard output, once.
        print(f"RPC secret: {secret}  (also in {path}, readable by you only)", file=stdout, flush=True)
    headers = list(args.header)
    host = "0.0.0.0" if args.rpc_listen_all else "127.0.0.1"  # noqa: S104 - only when asked for

    def listening(port: int) -> None:
        shown = "127.0.0.1" if host == "127.0.0.1" else "every interface"
        log(f"listening on {shown}, port {port}: JSON-RPC at http://127.0.0.1:{port}/jsonrpc, page at /")

    async def main() -> int:
        dl = Downloader(
            root,
            limit_rate=args.overall_limit if args.overall_limit is not None else args.limit_rate,
            headers=headers,
            **downloader_options(args),
        )
        async with dl:
            await serve(
                dl,
                DaemonConfig(
                    root=root,
                    secret=secret,
                    session=session,
                    max_results=args.max_download_result,
                ),
                host=host,
                port=args.rpc_listen_port,
                allow_origin_all=args.rpc_allow_origin_all,
                input_text=input_text,
                log=log,
                on_listening=listening,
            )
        return EXIT_OK

    return run(main)


def _unreadable(path: str) -> str:
    raise UsageError(f"cannot read {path}: no such file")
