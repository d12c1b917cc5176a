"""Parse a URL list into Requests: a pure, lazy parser (no I/O, no event loop).

The format is a superset of "one URL a line" and reads the input files of ``aria2c -i``::

    # a comment; blank lines are ignored too
    https://example.org/a.iso
    https://example.org/b.iso<TAB>https://mirror.example.net/b.iso
        out=b-latest.iso
        dir=images
        checksum=sha-256=9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
        header=Authorization: Bearer abc
        header=X-Trace: 1

- A download starts with a URL at column 0. Several URLs on one line, separated by TAB, are mirrors of
  the same file: the first is ``Request.url``, the others ``Request.mirrors``. Empty TAB fields are
  dropped and each field is stripped; trailing white space (and CR) on a URL line is ignored.
- Blank lines, and lines whose first non-blank character is ``#``, are ignored everywhere, also between
  a download and its options. There are no end-of-line comments.
- A line that begins with white space is always an option line (as in aria2c: an indented URL is
  not a download) holding one ``key=value`` option for the download above it. Key and value are
  stripped. Keys are case-sensitive, like aria2c's. Known keys: ``out=NAME``, ``dir=DIR``,
  ``checksum=ALGO=HEX`` (``sha-256``, ``sha-1``, ``sha-512``, ``md5`` ...), ``header=Name: value``
  (repeatable, kept in order), and aria2c's ``split=N`` and ``max-connection-per-server=N``
  (connections for this download: the smaller when both), ``referer``, ``user-agent``,
  ``http-user`` + ``http-passwd`` (Basic authentication), ``max-download-limit=RATE`` (0: none),
  ``allow-overwrite=true|false``, ``max-tries=N`` (0: no limit) and ``lowest-speed-limit=RATE``
  (0: off). A known key may appear once per download (``header`` excepted).
- Option lines before the first download are ignored, as aria2c does.
- A UTF-8 byte order mark at the start of the first line is skipped.

Problems never raise. An option asyncdl does not know (any other aria2c option, such as
``pause=true``) is ignored, and reported through ``warn`` once per key and source, with the line it
was first seen on; so is an indented URL. A URL line that is not a usable http(s) URL comes out as a
:class:`~asyncdl._models.BadEntry` (its option lines are skipped), in list order, and the rest of the
list still parses. A bad value of a known option (a bad checksum, ``split=x``, a repeated ``out``)
turns its whole download into one BadEntry whose message names the option's line; later problems in
the same download are not reported. Messages never show a URL's password or an option's value that
may be a secret.

Laziness: a download is yielded when the next line that is neither blank, a comment nor an option has
been read (or the input has ended), so the parser reads exactly one such line ahead and holds at most
one download.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator
from urllib.parse import urlsplit

from ._exceptions import UsageError
from ._models import CHECKSUM_ALGORITHMS, BadEntry, Checksum, Request, plain_request
from ._ratelimit import parse_rate
from ._urls import PLAIN_URL, redact_url, usable_url_problem

__all__ = ["format_request", "header_problem", "parse_lines"]

_BOM = "\ufeff"
# Keys whose value is text kept as given (once per download), by their attribute in _Download.
_TEXT_KEYS = {
    "out": "out",
    "dir": "dir",
    "referer": "referer",
    "user-agent": "user_agent",
    "http-user": "http_user",
    "http-passwd": "http_passwd",
}
# Keys whose value is a number or a rate.
_COUNT_KEYS = {"split": "split", "max-connection-per-server": "max_per_server", "max-tries": "max_tries"}
_RATE_KEYS = {"max-download-limit": "limit_rate", "lowest-speed-limit": "lowest_speed_limit"}
_KNOWN_KEYS = frozenset({"checksum", "header", "allow-overwrite", *_TEXT_KEYS, *_COUNT_KEYS, *_RATE_KEYS})
# An option's value is echoed in a message only for these (others may be secrets: http-passwd).
_ECHOED_KEYS = frozenset({"out", "dir", "split", "max-connection-per-server", "max-tries"})
_TRUE_FALSE = {"true": True, "false": False}

Warn = Callable[[str], None]
# RFC 9110 token characters: what a header name may be made of.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Control characters would corrupt a request line or a file name; HTAB is legal inside a header value.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HEADER_VALUE_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# The password of a "user:password@" that starts the text, a white-space-separated word or a path
# segment: it finds userinfo in text that urlsplit misreads or refuses (no scheme, "http:/", "[::1").
_USERINFO_PASSWORD = re.compile(r"(?<![^/\s])[^/?#@:\s]*:([^/?#\s]*)@")


def parse_lines(
    lines: Iterable[str], *, source: str, warn: Warn | None = None
) -> Iterator[Request | BadEntry]:
    """Yield a Request or a BadEntry for each download in ``lines``, in order.

    ``lines`` may carry their line endings or not, and is consumed lazily. ``source`` names the input
    in messages ("urls.txt", "<stdin>"); every item gets ``source="<source>:<line of its URL>"``.
    ``warn`` gets a message for each option that is ignored (once per key: see the module's text).
    """
    notes = _Notes(source, warn)
    pending: _Download | None = None
    # A plain URL line (the common case: no TAB, no white space, a usable URL) waits here as text,
    # and becomes a _Download only if option lines follow it.
    plain: str | None = None
    plain_lineno = 0
    prefix = f"{source}:"
    plain_match = PLAIN_URL.match  # is_plain_url, without the call (it runs for every line)
    for lineno, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if lineno == 1 and line.startswith(_BOM):
            line = line[len(_BOM) :]
        if plain_match(line) is not None:
            if plain is not None:
                yield plain_request(plain, prefix + str(plain_lineno))
            elif pending is not None:
                yield pending.finish()
                pending = None
            plain, plain_lineno = line, lineno
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if plain is not None:
            pending = _Download(plain, source=source, lineno=plain_lineno, notes=notes)
            plain = None
        if line[0].isspace():
            if pending is None:
                # Ignored, as aria2c does; only an indented URL is worth a word.
                notes.check_indented_url(stripped, lineno)
            else:
                pending.add_option(stripped, lineno=lineno)
            continue
        if pending is not None:
            yield pending.finish()
        pending = _Download(line.rstrip(), source=source, lineno=lineno, notes=notes)
    if plain is not None:
        yield plain_request(plain, prefix + str(plain_lineno))
    elif pending is not None:
        yield pending.finish()


class _OptionError(Exception):
    """What is wrong with one option line (internal; becomes a BadEntry message)."""


class _Notes:
    """What a parse reports through ``warn``: each ignored key once, with the line it was first on."""

    __slots__ = ("reported", "source", "warn")

    def __init__(self, source: str, warn: Warn | None) -> None:
        self.source = source
        self.warn = warn
        self.reported: set[str] = set()

    def once(self, key: str, lineno: int, message: str) -> None:
        if self.warn is not None and key not in self.reported:
            self.reported.add(key)
            self.warn(f"{self.source}:{lineno}: {message}")

    def check_indented_url(self, text: str, lineno: int) -> bool:
        """Report an indented URL (once per source); whether ``text`` is one."""
        if usable_url_problem(text) is not None:
            return False
        self.once(
            "\0indented-url",
            lineno,
            f"indented URL {_redact(text)!r} ignored: a download's URL starts at column 0, "
            "indented lines hold key=value options (reported once)",
        )
        return True


class _Download:
    """One download being collected: its URL line and the options read so far."""

    __slots__ = (
        "allow_overwrite",
        "bad_url",
        "checksum",
        "dir",
        "error",
        "headers",
        "http_passwd",
        "http_user",
        "limit_rate",
        "lowest_speed_limit",
        "max_per_server",
        "max_tries",
        "notes",
        "out",
        "referer",
        "seen",
        "source",
        "source_name",
        "split",
        "text",
        "urls",
        "user_agent",
    )

    def __init__(self, text: str, *, source: str, lineno: int, notes: _Notes) -> None:
        self.text = text
        self.source_name = source
        self.source = f"{source}:{lineno}"
        self.notes = notes
        self.urls = [field.strip() for field in text.split("\t") if field.strip()]
        self.out: str | None = None
        self.dir: str | None = None
        self.checksum: Checksum | None = None
        self.headers: list[tuple[str, str]] = []
        self.referer: str | None = None
        self.user_agent: str | None = None
        self.http_user: str | None = None
        self.http_passwd: str | None = None
        self.split: int | None = None
        self.max_per_server: int | None = None
        self.max_tries: int | None = None
        self.limit_rate: int | None = None
        self.lowest_speed_limit: int | None = None
        self.allow_overwrite: bool | None = None
        self.seen: set[str] = set()  # the single-valued keys given so far
        # A BadEntry message, once something is wrong; later option lines are then only consumed.
        self.error: str | None = None
        self.bad_url = False
        for url in self.urls:
            problem = usable_url_problem(url)
            if problem is not None:
                self.error = f"{self.source}: {problem}: {_redact(text)!r}"
                self.bad_url = True
                break

    def add_option(self, text: str, *, lineno: int) -> None:
        """Apply the stripped option line ``text`` (line ``lineno``), or remember what is wrong."""
        if self.error is not None:
            return
        try:
            self._apply(text, lineno)
        except _OptionError as exc:
            self.error = f"{self.source_name}:{lineno}: {exc}"

    def _apply(self, text: str, lineno: int) -> None:
        key, sep, value = text.partition("=")
        key, value = key.strip(), value.strip()
        if key not in _KNOWN_KEYS:
            if not self.notes.check_indented_url(text, lineno):
                # The value is not echoed: it may be a secret.
                shown = _redact(key) if sep else "(a line without '=')"
                self.notes.once(key if sep else "\0no-equals", lineno, f"unknown option {shown!r} ignored")
            return
        if not sep:
            raise _OptionError(f"option line without '=': {_redact(text)!r}")
        if key == "header":
            self.headers.append(_parse_header(value))
            return
        if key in self.seen:
            raise _OptionError(f"{key}= given twice for one download")
        self.seen.add(key)
        if key == "checksum":
            try:
                self.checksum = Checksum.parse(value)
            except UsageError as exc:
                raise _OptionError(f"bad checksum: {exc}") from None
            return
        shown = f": {value!r}" if key in _ECHOED_KEYS else ""
        if _CONTROL.search(value):
            raise _OptionError(f"{key}= contains a control character{shown}")
        if key in _TEXT_KEYS:
            if not value and key != "http-passwd":
                raise _OptionError(f"{key}= needs a value")
            setattr(self, _TEXT_KEYS[key], value)
        elif key in _COUNT_KEYS:
            minimum = 0 if key == "max-tries" else 1
            if not value.isdigit() or int(value) < minimum:
                raise _OptionError(f"{key}= must be a whole number of at least {minimum}{shown}")
            setattr(self, _COUNT_KEYS[key], int(value))
        elif key in _RATE_KEYS:
            setattr(self, _RATE_KEYS[key], _option_rate(key, value))
        else:  # allow-overwrite
            if value not in _TRUE_FALSE:
                raise _OptionError(f"{key}= must be true or false, not {value!r}")
            self.allow_overwrite = _TRUE_FALSE[value]

    def finish(self) -> Request | BadEntry:
        """The Request, or the BadEntry for the first problem found."""
        if self.error is None and self.http_passwd is not None and self.http_user is None:
            self.error = f"{self.source}: http-passwd= needs http-user="
        if self.error is not None:
            # A bad URL line is kept as written; a bad option fails the download's (first) URL.
            url = self.text if self.bad_url else self.urls[0]
            return BadEntry(url=url, message=self.error, source=self.source)
        counts = [n for n in (self.split, self.max_per_server) if n is not None]
        return Request(
            self.urls[0],
            mirrors=tuple(self.urls[1:]),
            out=self.out,
            dir=self.dir,
            checksum=self.checksum,
            headers=tuple(self.headers),
            source=self.source,
            connections=min(counts) if counts else None,
            user_agent=self.user_agent,
            referer=self.referer,
            auth=None if self.http_user is None else (self.http_user, self.http_passwd or ""),
            limit_rate=self.limit_rate,
            overwrite=self.allow_overwrite,
            max_tries=self.max_tries,
            lowest_speed_limit=self.lowest_speed_limit,
        )


def _option_rate(key: str, value: str) -> int | None:
    """A rate option's bytes per second; 0 is aria2c's "no limit" (None)."""
    if value.strip() == "0":
        return None
    try:
        return parse_rate(value)
    except UsageError:
        raise _OptionError(f"{key}= must be a rate such as 500K or 2M, not {value!r}") from None


def format_request(request: Request) -> str:
    """``request`` in the list format: its URL line (mirrors after TABs) and its option lines.

    ``parse_lines`` reads it back as an equal Request. The text holds what the request holds,
    credentials included (the URL's, ``http-passwd``): a file written from it is the user's to guard.
    """
    lines = ["\t".join(_one_line(url) for url in request.urls)]

    def option(key: str, value: object) -> None:
        lines.append(f"  {key}={_one_line(str(value))}")

    if request.out is not None:
        option("out", request.out)
    if request.dir is not None:
        option("dir", request.dir)
    if request.checksum is not None:
        algorithm = request.checksum.algorithm
        name = next((k for k, v in CHECKSUM_ALGORITHMS.items() if v == algorithm), algorithm)
        option("checksum", f"{name}={request.checksum.hexdigest}")
    for name, value in request.headers:
        option("header", f"{name}: {value}")
    if request.connections is not None:
        option("split", request.connections)
    if request.user_agent is not None:
        option("user-agent", request.user_agent)
    if request.referer is not None:
        option("referer", request.referer)
    if request.auth is not None:
        option("http-user", request.auth[0])
        option("http-passwd", request.auth[1])
    if request.limit_rate is not None:
        option("max-download-limit", request.limit_rate)
    if request.overwrite is not None:
        option("allow-overwrite", "true" if request.overwrite else "false")
    if request.max_tries is not None:
        option("max-tries", request.max_tries)
    if request.lowest_speed_limit is not None:
        option("lowest-speed-limit", request.lowest_speed_limit)
    return "\n".join(lines) + "\n"


def _one_line(text: str) -> str:
    """``text`` without the line breaks and TABs that would end or split its line in the format."""
    return _CONTROL.sub(" ", text).strip()


def header_problem(value: str) -> str | None:
    """What is wrong with a ``Name: value`` header (never its value: it may be a secret); None: nothing."""
    try:
        _parse_header(value)
    except _OptionError as exc:
        return str(exc).removeprefix("header= ")
    return None


def _parse_header(value: str) -> tuple[str, str]:
    name, sep, field_value = value.partition(":")
    name, field_value = name.strip(), field_value.strip()
    if not sep:
        # Not echoed: "Bearer xyz" without its name is still a secret.
        raise _OptionError("header= must look like 'Name: value'")
    if not _HEADER_NAME.fullmatch(name):
        raise _OptionError(f"bad header name {name!r}")
    if _HEADER_VALUE_CONTROL.search(field_value):
        raise _OptionError(f"value of header {name!r} contains a control character")
    return name, field_value


def _redact(text: str) -> str:
    """``text`` (URLs, maybe TAB-separated) with every password shown as ``***``.

    Besides what urlsplit finds, this catches userinfo in text that is not a valid URL (a bad port, a
    broken IPv6 literal, a missing scheme, white space), since such text is exactly what gets echoed.
    """
    secrets = [m.group(1) for m in _USERINFO_PASSWORD.finditer(text)]
    for token in text.split():
        with contextlib.suppress(ValueError):  # a broken IPv6 literal; the regexes cover it
            secrets.append(urlsplit(token).password or "")
    redacted = "\t".join(redact_url(field) for field in text.split("\t"))
    # Longest first, so that a password containing another one is hidden whole.
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        redacted = redacted.replace(secret, "***")
    return redacted
