"""aria2's JSON-RPC wire shapes, as pure functions on plain values (no I/O, no event loop).

What aria2's clients rely on, learnt from aria2's RPC code and its clients:

- a download is named by a GID: 16 lower-case hex digits, never all zeros;
- every number goes over the wire as a decimal string (``"1048576"``), except the position that
  ``changePosition`` returns, which is a JSON integer;
- a status is one of ``active``, ``waiting``, ``paused``, ``error``, ``complete``, ``removed``;
- the tell methods take an optional ``keys`` list: only those keys are sent (all when empty);
- ``tellWaiting`` and ``tellStopped`` take ``offset, num``; a negative offset counts from the end and
  the answer is then in reverse order;
- a failed call is the JSON-RPC error object ``{"code": 1, "message": ...}`` with aria2's wording;
  malformed requests get the JSON-RPC codes (-32700, -32600, -32602).
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from ._models import BadEntry, Request
from ._urllist import parse_lines
from ._urls import redact_url

GID_DIGITS = 16
PIECE_LENGTH = 1024 * 1024  # aria2's default --piece-length
OK = "OK"
STATUSES = ("active", "waiting", "paused", "error", "complete", "removed")

# aria2's error codes (its "EXIT STATUS" table) that a stopped download can carry.
ERROR_FINISHED = "0"
ERROR_UNKNOWN = "1"
ERROR_TIMEOUT = "2"
ERROR_NOT_FOUND = "3"
ERROR_NETWORK = "6"
ERROR_FILE_EXISTS = "13"
ERROR_RESOLVE = "19"
ERROR_HTTP = "22"
ERROR_AUTH = "24"
ERROR_REMOVED = "31"
ERROR_CHECKSUM = "32"

# The global options asyncdl acts on (changeGlobalOption); others are accepted and ignored.
GLOBAL_OPTIONS = ("max-concurrent-downloads", "max-overall-download-limit", "max-download-result")

METHODS = (
    "aria2.addUri",
    "aria2.remove",
    "aria2.forceRemove",
    "aria2.pause",
    "aria2.pauseAll",
    "aria2.forcePause",
    "aria2.forcePauseAll",
    "aria2.unpause",
    "aria2.unpauseAll",
    "aria2.tellStatus",
    "aria2.getUris",
    "aria2.getFiles",
    "aria2.tellActive",
    "aria2.tellWaiting",
    "aria2.tellStopped",
    "aria2.getOption",
    "aria2.changePosition",
    "aria2.changeOption",
    "aria2.getGlobalOption",
    "aria2.changeGlobalOption",
    "aria2.purgeDownloadResult",
    "aria2.removeDownloadResult",
    "aria2.getVersion",
    "aria2.getSessionInfo",
    "aria2.shutdown",
    "aria2.forceShutdown",
    "aria2.getGlobalStat",
    "aria2.saveSession",
    "system.multicall",
    "system.listMethods",
    "system.listNotifications",
)
NOTIFICATIONS = (
    "aria2.onDownloadStart",
    "aria2.onDownloadPause",
    "aria2.onDownloadStop",
    "aria2.onDownloadComplete",
    "aria2.onDownloadError",
    "aria2.onBtDownloadComplete",
)
# Methods that need no secret (as in aria2: they say nothing about the downloads).
OPEN_METHODS = ("system.listMethods", "system.listNotifications")


class RpcError(Exception):
    """A call that fails: aria2 answers ``{"code": 1, "message": str(exc)}``."""

    code = 1


class ProtocolError(Exception):
    """A request that is not JSON-RPC: answered with a JSON-RPC error code, not aria2's 1."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


PARSE_ERROR = ProtocolError(-32700, "Parse error.")
INVALID_REQUEST = ProtocolError(-32600, "Invalid Request.")
INVALID_PARAMS = ProtocolError(-32602, "Invalid params.")


# --- GIDs -------------------------------------------------------------------------------------------


def new_gid(taken: Callable[[str], bool], token_hex: Callable[[int], str] = secrets.token_hex) -> str:
    """A fresh GID that ``taken`` says is free (aria2's are random 64-bit numbers too)."""
    while True:
        gid = token_hex(GID_DIGITS // 2)
        if int(gid, 16) != 0 and not taken(gid):
            return gid


def check_gid(value: object) -> str:
    """The GID in ``value``, lower-cased; RpcError in aria2's words when it is not one."""
    if not isinstance(value, str):
        raise RpcError("The parameter at 0 has wrong type.")
    text = value.lower()
    if not text or len(text) > GID_DIGITS or any(c not in "0123456789abcdef" for c in text):
        raise RpcError(f"Invalid GID {value}")
    if len(text) < GID_DIGITS:
        # aria2 takes a unique prefix; asyncdl takes whole GIDs only.
        raise RpcError(f"GID {value} is not found")
    return text


# --- parameters -------------------------------------------------------------------------------------


def split_token(params: list[Any]) -> tuple[str | None, list[Any]]:
    """aria2's rule: a first parameter that is a string starting with ``token:`` is the secret."""
    if params and isinstance(params[0], str) and params[0].startswith("token:"):
        return params[0][len("token:") :], params[1:]
    return None, params


def param(params: Sequence[Any], index: int, kind: type | tuple[type, ...], *, required: bool = True) -> Any:
    """Parameter ``index`` of ``kind``; aria2's messages when it is missing or of another type."""
    if index >= len(params):
        if required:
            raise RpcError(f"The parameter at {index} is required but missing.")
        return None
    value = params[index]
    # JSON true/false are not numbers here, whatever Python thinks of bool.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise RpcError(f"The parameter at {index} has wrong type.")
    if not isinstance(value, kind):
        raise RpcError(f"The parameter at {index} has wrong type.")
    return value


def keys_param(params: Sequence[Any], index: int) -> frozenset[str] | None:
    """The ``keys`` filter at ``index``: None (all keys) when absent or empty."""
    keys = param(params, index, list, required=False)
    if not keys:
        return None
    return frozenset(k for k in keys if isinstance(k, str))


def paginate(items: Sequence[Any], offset: int, num: int) -> list[Any]:
    """aria2's ``offset, num`` window over ``items`` (tellWaiting, tellStopped).

    A negative offset counts from the end (-1 is the last item) and walks backwards: the answer is
    then in reverse order.
    """
    if num <= 0:
        return []
    size = len(items)
    if offset < 0:
        last = offset + size  # index of the first item to send, walking backwards
        if last < 0:
            return []
        first = max(0, last - (num - 1))
        return list(reversed(items[first : last + 1]))
    return list(items[offset : offset + num])


def move_position(size: int, current: int, pos: int, how: str) -> int:
    """Where ``changePosition(gid, pos, how)`` puts the item now at ``current`` of ``size``."""
    if how == "POS_CUR":
        dest = current + pos
    elif how == "POS_END":
        dest = size - 1 + min(pos, 0)
    elif how == "POS_SET":
        dest = pos
    else:
        raise RpcError("Illegal argument.")
    return max(0, min(dest, size - 1))


# --- downloads as aria2 shows them --------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """What aria2's tell methods report of one download, before the ``keys`` filter."""

    gid: str
    status: str
    dir: str
    path: str  # "" until the name is known
    uris: tuple[str, ...]
    total: int = 0
    completed: int = 0
    speed: int = 0
    connections: int = 0
    error_code: str | None = None  # stopped downloads only
    error_message: str | None = None
    spent_uris: int = 1  # how many of ``uris`` were tried ("used"); the rest are "waiting"


def uri_entries(view: View) -> list[dict[str, str]]:
    """getUris: each URI with ``used`` (tried) or ``waiting``."""
    spent = view.spent_uris
    return [{"uri": uri, "status": "used" if i < spent else "waiting"} for i, uri in enumerate(view.uris)]


def file_entries(view: View) -> list[dict[str, Any]]:
    """getFiles: one file per download (HTTP downloads have one)."""
    return [
        {
            "index": "1",
            "path": view.path,
            "length": str(view.total),
            "completedLength": str(view.completed),
            "selected": "true",
            "uris": uri_entries(view),
        }
    ]


def status_dict(view: View, keys: frozenset[str] | None = None) -> dict[str, Any]:
    """tellStatus and the lists: the keys aria2 sends for an HTTP download, filtered by ``keys``."""
    fields: dict[str, Any] = {
        "gid": view.gid,
        "status": view.status,
        "totalLength": str(view.total),
        "completedLength": str(view.completed),
        "uploadLength": "0",
        "downloadSpeed": str(view.speed),
        "uploadSpeed": "0",
        "connections": str(view.connections),
        # aria2's default piece length; its pieces count what is done from the start of the file.
        "pieceLength": str(PIECE_LENGTH),
        "numPieces": str(-(-view.total // PIECE_LENGTH)),
        "dir": view.dir,
    }
    if view.total > 0:
        fields["bitfield"] = bitfield(view.total, view.completed)
    if view.error_code is not None:
        fields["errorCode"] = view.error_code
        fields["errorMessage"] = view.error_message or ""
    if keys is None or "files" in keys:
        fields["files"] = file_entries(view)
    if keys is None:
        return fields
    return {k: v for k, v in fields.items() if k in keys}


def bitfield(total: int, completed: int) -> str:
    """aria2's ``bitfield``: one bit per piece, set for the pieces done, as hex (a byte at a time).

    asyncdl writes a file from its start, so the pieces done are the first ``completed // piece``
    (all of them once complete).
    """
    pieces = -(-total // PIECE_LENGTH)
    done = pieces if completed >= total else completed // PIECE_LENGTH
    bits = "1" * done + "0" * (pieces - done)
    bits += "0" * (-len(bits) % 8)
    return "".join(f"{int(bits[i : i + 8], 2):02x}" for i in range(0, len(bits), 8))


def global_stat(*, speed: int, active: int, waiting: int, stopped: int, stopped_total: int) -> dict[str, str]:
    return {
        "downloadSpeed": str(speed),
        "uploadSpeed": "0",
        "numActive": str(active),
        "numWaiting": str(waiting),
        "numStopped": str(stopped),
        "numStoppedTotal": str(stopped_total),
    }


def error_code_of(error: str | None) -> str:
    """aria2's error code for an asyncdl failure message (1, "unknown", when nothing closer fits)."""
    if not error:
        return ERROR_UNKNOWN
    text = error.lower()
    table = (
        ("http 404", ERROR_NOT_FOUND),
        ("http 401", ERROR_AUTH),
        ("http 403", ERROR_AUTH),
        ("http ", ERROR_HTTP),
        ("checksum", ERROR_CHECKSUM),
        ("stall", ERROR_TIMEOUT),
        ("timeout", ERROR_TIMEOUT),
        ("timed out", ERROR_TIMEOUT),
        ("resolve", ERROR_RESOLVE),
        ("name or service", ERROR_RESOLVE),
        ("refused", ERROR_NETWORK),
        ("connect", ERROR_NETWORK),
    )
    return next((code for needle, code in table if needle in text), ERROR_UNKNOWN)


# --- options ----------------------------------------------------------------------------------------


def option_strings(options: Mapping[Any, Any]) -> dict[str, str | list[str]]:
    """Options as aria2 keeps them: strings (a repeated option, ``header``, as a list of strings)."""
    out: dict[str, str | list[str]] = {}
    for key, value in options.items():
        if not isinstance(key, str):
            continue
        if isinstance(value, list):
            out[key] = [str(v) for v in value if isinstance(v, str | int | float)]
        elif isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            out[key] = str(value)
    return out


# Shown as ``HIDDEN`` by getOption (the session file keeps them; answers never show them).
_SECRET_HEADERS = ("authorization", "proxy-authorization", "cookie")
HIDDEN = "***"


def _shown_header(line: str) -> str:
    name, sep, _ = line.partition(":")
    return f"{name}: {HIDDEN}" if sep and name.strip().lower() in _SECRET_HEADERS else line


def shown_options(options: Mapping[str, str | list[str]]) -> dict[str, str | list[str]]:
    """``options`` as getOption answers them: passwords (of URLs too) and credential headers hidden."""
    shown: dict[str, str | list[str]] = {}
    for key, value in options.items():
        if key.endswith("-passwd") or key == "rpc-secret":
            shown[key] = HIDDEN
        elif key == "header":
            shown[key] = _shown_header(value) if isinstance(value, str) else [_shown_header(v) for v in value]
        else:  # a URL's password too (referer, all-proxy)
            shown[key] = redact_url(value) if isinstance(value, str) else [redact_url(v) for v in value]
    return shown


def unhidden_options(
    given: Mapping[str, str | list[str]], current: Mapping[str, str | list[str]]
) -> dict[str, str | list[str]]:
    """changeOption's ``given`` with each value sent back as getOption showed it kept as it is."""
    shown = shown_options(current)
    return {k: current[k] if k in current and v == shown[k] != current[k] else v for k, v in given.items()}


def relative_dir(root: str, value: str) -> str | None:
    """The ``dir`` option as a path below ``root`` (None: ``root`` itself); RpcError if it leaves.

    aria2's front ends send absolute directories (often the daemon's own ``dir``): one inside
    ``root`` is taken, any other is refused. A relative one is taken below ``root``.
    """
    root_path = PurePosixPath(posixpath.normpath(root))
    if "\x00" in value:
        raise RpcError("dir contains a NUL character")
    given = PurePosixPath(value)
    if given.is_absolute():
        normal = PurePosixPath(posixpath.normpath(value))
        if normal != root_path and root_path not in normal.parents:
            raise RpcError(f"dir {value!r} is outside the download directory")
        rel = normal.relative_to(root_path)
    else:
        rel = PurePosixPath(posixpath.normpath(value))
        if rel.parts and rel.parts[0] == "..":
            raise RpcError(f"dir {value!r} is outside the download directory")
    text = str(rel)
    return None if text in ("", ".") else text


def _one(options: Mapping[str, str | list[str]], key: str) -> str | None:
    value = options.get(key)
    if isinstance(value, list):
        return value[-1] if value else None
    return value


def request_from(uris: Iterable[str], options: Mapping[str, str | list[str]], root: str) -> Request:
    """The Request for ``addUri(uris, options)`` in a daemon rooted at ``root``.

    The options are those of the URL list format (aria2's input-file keys), read by the same
    parser: ``out`` (a name, sanitised later), ``dir`` (below ``root``, never outside), ``checksum``,
    ``header``, ``split``, ``referer``, ``user-agent``, ``max-download-limit``... Other aria2 options
    are ignored; a bad value is aria2's error answer.
    """
    urls = [u for u in uris if isinstance(u, str) and u]
    if not urls:
        raise RpcError("URI is not provided.")
    lines = ["\t".join(urls)]
    for key, value in options.items():
        if key in ("gid", "pause") or not key or not key.replace("-", "").isalnum():
            continue
        values = [value] if isinstance(value, str) else value
        if key == "dir":
            rel = relative_dir(root, _one(options, key) or "")
            values = [rel] if rel is not None else []
        for one in values:
            if "\n" in one or "\r" in one:
                raise RpcError(f"{key} contains a line break")
            lines.append(f" {key}={one}")
    if any("\t" in u or "\n" in u or "\r" in u or u != u.strip() for u in urls):
        raise RpcError("a URI contains white space")
    (item,) = parse_lines(lines, source="addUri")
    if isinstance(item, BadEntry):
        raise RpcError(re.sub(r"^addUri:\d+: ", "", item.message))
    return dataclasses.replace(item, source=None) if item.source else item


def positive_int_option(options: Mapping[str, str | list[str]], key: str) -> int | None:
    value = _one(options, key)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise RpcError(f"{key} must be a whole number, not {value!r}") from None
    if number < 1:
        raise RpcError(f"{key} must be at least 1, not {value!r}")
    return number


def rate_option(options: Mapping[str, str | list[str]], key: str) -> int | None:
    """A rate in aria2's syntax (``0`` = no cap, ``500K``, ``10M``); None when not given."""
    value = _one(options, key)
    if value is None:
        return None
    text = value.strip().upper()
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    scale = units.get(text[-1:], 1)
    digits = text[:-1] if text[-1:] in units else text
    try:
        number = int(float(digits) * scale)
    except (ValueError, OverflowError):  # OverflowError: "1e400", "inf"
        raise RpcError(f"{key} must be a rate such as 500K or 10M, not {value!r}") from None
    if number < 0:
        raise RpcError(f"{key} must not be negative")
    return number


# --- the session file (aria2's input-file format) -----------------------------------------------------


@dataclass
class SessionEntry:
    """A download as the session file keeps it: its URIs and its options (``gid``, ``pause``...)."""

    uris: list[str]
    options: dict[str, str | list[str]] = field(default_factory=dict)


def format_session(entries: Iterable[SessionEntry]) -> str:
    """The session file: as ``aria2c --save-session`` writes it, so aria2c can read it too."""
    lines: list[str] = []
    for entry in entries:
        lines.append("\t".join(entry.uris))
        for key, value in entry.options.items():
            for one in value if isinstance(value, list) else [value]:
                if "\n" not in one and "\r" not in one:
                    lines.append(f" {key}={one}")
    return "".join(line + "\n" for line in lines)


def parse_session(text: str) -> list[SessionEntry]:
    """The downloads of a session file (or any aria2 input file); unknown options are kept."""
    entries: list[SessionEntry] = []
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace():
            if not entries:
                continue  # an option before the first download: ignored, as aria2c does
            key, sep, value = line.strip().partition("=")
            if not sep:
                continue
            current = entries[-1].options.get(key)
            if key == "header":
                entries[-1].options[key] = [*(current if isinstance(current, list) else []), value]
            else:
                entries[-1].options[key] = value
            continue
        uris = [u.strip() for u in line.split("\t") if u.strip()]
        entries.append(SessionEntry(uris))
    return entries
