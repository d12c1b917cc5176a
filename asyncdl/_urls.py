"""Pure URL helpers: validation, origins, and hiding passwords."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

SCHEMES = ("http", "https")
_WHITESPACE = re.compile(r"\s")


# The common case, checked in one regex match: scheme, a plain host, an optional port, no spaces.
# (Case spelled out rather than re.IGNORECASE: faster, and no Unicode case folding, where U+017F is "s").
# The start of a plain URL: scheme, host and a port of one to five digits below 65536.
PLAIN_URL_START = (
    r"[hH][tT][tT][pP][sS]?://[A-Za-z0-9.-]+"
    r"(?::(?:[0-5]?[0-9]{1,4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?"
)
PLAIN_URL = re.compile(PLAIN_URL_START + r"(?:[/?#]\S*)?\Z")  # is_plain_url: one match


def is_plain_url(url: str) -> bool:
    """True for the common case of a usable URL: http(s), a plain host, a valid port, no white space.

    False says nothing: ask :func:`usable_url_problem`.
    """
    return PLAIN_URL.match(url) is not None


def usable_url_problem(url: str) -> str | None:
    """None when ``url`` is an absolute http(s) URL with a host; else why it is not."""
    if PLAIN_URL.match(url) is not None:
        return None
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme.lower() not in SCHEMES:
        return "not an http:// or https:// URL"
    if not parts.hostname:
        return "URL has no host"
    if _WHITESPACE.search(url):
        return "URL contains white space"
    return None


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the default port filled in."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, safe to print or write to a report."""
    if "@" not in url:
        return url  # no userinfo, so no password (the common case, without parsing)
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def redact_text(text: str, url: str) -> str:
    """``text`` with the password of ``url`` (if any) replaced by ``***``."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return text
    if password:
        text = text.replace(url, redact_url(url)).replace(password, "***")
    return text


_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def origin_key(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: lower-case, without credentials or a default port ("" if none).

    The key the scheduler keeps per-origin state under, and how the summary names an origin.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return ""
    end = len(rest)
    for mark in "/?#":
        at = rest.find(mark, 0, end)
        if at != -1:
            end = at
    netloc = rest[:end].rpartition("@")[2].lower()
    scheme = scheme.lower()
    default = _DEFAULT_PORTS.get(scheme)
    if default is not None and netloc.endswith(default):
        netloc = netloc[: -len(default)]
    return f"{scheme}://{netloc}"
