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
- A line that begins with white space holds one ``key=value`` option for the download above it. Key and
  value are stripped. Known keys: ``out=NAME``, ``dir=DIR``, ``checksum=ALGO=HEX`` (``sha-256``,
  ``sha-1``, ``sha-512``, ``md5`` ...) and ``header=Name: value`` (repeatable, kept in order). ``out``,
  ``dir`` and ``checksum`` may appear once per download. Keys are case-sensitive, like aria2c's.
- A UTF-8 byte order mark at the start of the first line is skipped.

Problems never raise: they come out as :class:`~asyncdl._models.BadEntry` values, in list order, and
the rest of the list still parses. A URL line that is not a usable http(s) URL is one BadEntry (its
option lines are skipped). A bad option (no ``=``, unknown key, repeated key, bad checksum, bad header)
turns its whole download into one BadEntry whose message names the option's line; later problems in
the same download are not reported. An option line before the first download is a BadEntry of its own.
Messages never show a URL's password.

Laziness: a download is yielded when the next line that is neither blank, a comment nor an option has
been read (or the input has ended), so the parser reads exactly one such line ahead and holds at most
one download.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator
from urllib.parse import urlsplit

from ._exceptions import UsageError
from ._models import BadEntry, Checksum, Request, plain_request
from ._urls import PLAIN_URL, redact_url, usable_url_problem

__all__ = ["parse_lines"]

_BOM = "\ufeff"
_KNOWN_KEYS = ("checksum", "dir", "header", "out")
# RFC 9110 token characters: what a header name may be made of.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Control characters would corrupt a request line or a file name; HTAB is legal inside a header value.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HEADER_VALUE_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# The password of a "user:password@" that starts the text, a white-space-separated word or a path
# segment: it finds userinfo in text that urlsplit misreads or refuses (no scheme, "http:/", "[::1").
_USERINFO_PASSWORD = re.compile(r"(?<![^/\s])[^/?#@:\s]*:([^/?#\s]*)@")


def parse_lines(lines: Iterable[str], *, source: str) -> Iterator[Request | BadEntry]:
    """Yield a Request or a BadEntry for each download in ``lines``, in order.

    ``lines`` may carry their line endings or not, and is consumed lazily. ``source`` names the input
    in messages ("urls.txt", "<stdin>"); every item gets ``source="<source>:<line of its URL>"``.
    """
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
            pending = _Download(plain, source=source, lineno=plain_lineno)
            plain = None
        if line[0].isspace():
            if pending is None:
                yield _orphan_option(stripped, source=source, lineno=lineno)
            else:
                pending.add_option(stripped, lineno=lineno)
            continue
        if pending is not None:
            yield pending.finish()
        pending = _Download(line.rstrip(), source=source, lineno=lineno)
    if plain is not None:
        yield plain_request(plain, prefix + str(plain_lineno))
    elif pending is not None:
        yield pending.finish()


class _OptionError(Exception):
    """What is wrong with one option line (internal; becomes a BadEntry message)."""


class _Download:
    """One download being collected: its URL line and the options read so far."""

    __slots__ = (
        "bad_url",
        "checksum",
        "dir",
        "error",
        "headers",
        "out",
        "source",
        "source_name",
        "text",
        "urls",
    )

    def __init__(self, text: str, *, source: str, lineno: int) -> None:
        self.text = text
        self.source_name = source
        self.source = f"{source}:{lineno}"
        self.urls = [field.strip() for field in text.split("\t") if field.strip()]
        self.out: str | None = None
        self.dir: str | None = None
        self.checksum: Checksum | None = None
        self.headers: list[tuple[str, str]] = []
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
            self._apply(text)
        except _OptionError as exc:
            self.error = f"{self.source_name}:{lineno}: {exc}"

    def _apply(self, text: str) -> None:
        key, sep, value = text.partition("=")
        key, value = key.strip(), value.strip()
        if key not in _KNOWN_KEYS and usable_url_problem(text) is None:
            raise _OptionError(
                f"indented URL {_redact(text)!r}: a URL must start at column 0, "
                "indented lines hold key=value options"
            )
        if not sep:
            raise _OptionError(f"option line without '=': {_redact(text)!r}")
        if key not in _KNOWN_KEYS:
            # The value is not echoed: it may be a secret (aria2c has http-passwd=...).
            raise _OptionError(f"unknown option {_redact(key)!r} (known: {', '.join(_KNOWN_KEYS)})")
        if key == "header":
            self.headers.append(_parse_header(value))
        elif key == "checksum":
            if self.checksum is not None:
                raise _OptionError("checksum= given twice for one download")
            try:
                self.checksum = Checksum.parse(value)
            except UsageError as exc:
                raise _OptionError(f"bad checksum: {exc}") from None
        else:
            if getattr(self, key) is not None:
                raise _OptionError(f"{key}= given twice for one download")
            if not value:
                raise _OptionError(f"{key}= needs a value")
            if _CONTROL.search(value):
                raise _OptionError(f"{key}= contains a control character: {value!r}")
            setattr(self, key, value)

    def finish(self) -> Request | BadEntry:
        """The Request, or the BadEntry for the first problem found."""
        if self.error is not None:
            # A bad URL line is kept as written; a bad option fails the download's (first) URL.
            url = self.text if self.bad_url else self.urls[0]
            return BadEntry(url=url, message=self.error, source=self.source)
        return Request(
            self.urls[0],
            mirrors=tuple(self.urls[1:]),
            out=self.out,
            dir=self.dir,
            checksum=self.checksum,
            headers=tuple(self.headers),
            source=self.source,
        )


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


def _orphan_option(text: str, *, source: str, lineno: int) -> BadEntry:
    return BadEntry(
        url=text,
        message=f"{source}:{lineno}: option line with no download above it: {_redact(text)!r}",
        source=f"{source}:{lineno}",
    )


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
