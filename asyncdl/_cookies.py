"""Cookies from a Netscape / Mozilla ``cookies.txt`` (--load-cookies): the one module that reads them.

The file is parsed by the standard library's ``http.cookiejar.MozillaCookieJar``, and whether a
cookie goes with a request is decided by its ``DefaultCookiePolicy``, made strict about host-only
cookies: a cookie is sent only where its domain, path, secure flag and expiry allow, so

- a host-only cookie (domain without a leading dot, flag FALSE) goes to that exact host alone, a
  domain cookie (``.example.org``, flag TRUE) to that domain and its subdomains; never elsewhere;
- a cookie marked secure never travels over plain http;
- an expired cookie is never sent (expiry is checked when each request is made, not only at load).

As curl and wget write them, an expiry of 0 (or none) is a session cookie: sent, never expired.
A file that cannot be read or parsed is a UsageError that names the file and the line.
"""

from __future__ import annotations

import http.cookiejar
import os
import urllib.request
import warnings
from pathlib import Path

from ._exceptions import UsageError

__all__ = ["Cookies"]

# Mozilla's file format: a cookie on a line of 7 TAB-separated fields.
_FIELDS = 7
_HTTPONLY_PREFIX = "#HttpOnly_"


def _policy() -> http.cookiejar.DefaultCookiePolicy:
    # DomainStrictNonDomain: a cookie set without a domain goes to its own host only (as browsers
    # do); the library's default would send it to subdomains too.
    return http.cookiejar.DefaultCookiePolicy(
        strict_ns_domain=http.cookiejar.DefaultCookiePolicy.DomainStrictNonDomain
    )


class Cookies:
    """The cookies of one ``cookies.txt``; ``cookie_header(url)`` is what may go to ``url``.

    Picklable (the cookies themselves travel, not the path), so a run on worker processes or Ray
    nodes sends the same cookies whatever the node's file system holds.
    """

    def __init__(self, cookies: list[http.cookiejar.Cookie]) -> None:
        self._jar = http.cookiejar.CookieJar(_policy())
        for cookie in cookies:
            self._jar.set_cookie(cookie)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Cookies:
        """Read ``path``; UsageError (naming the line) when it is not a cookies.txt."""
        jar = http.cookiejar.MozillaCookieJar()
        try:
            with warnings.catch_warnings():
                # The library reports a malformed line as a warning with a traceback before it
                # raises LoadError; the LoadError is what we report, in one line.
                warnings.simplefilter("ignore")
                jar.load(os.fspath(path), ignore_discard=True, ignore_expires=True)
        except http.cookiejar.LoadError:
            raise UsageError(_problem(Path(path))) from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise UsageError(f"cannot read cookies file {path}: {reason}") from None
        cookies = list(jar)
        for cookie in cookies:
            if cookie.expires == 0:  # curl's and wget's mark of a session cookie
                cookie.expires = None
                cookie.discard = True
        return cls(cookies)

    def cookie_header(self, url: str) -> str | None:
        """The Cookie header for a request to ``url``, or None when no cookie may go there."""
        request = urllib.request.Request(url)  # noqa: S310 - never opened: only the jar reads it
        self._jar.add_cookie_header(request)
        return request.get_header("Cookie")

    def __len__(self) -> int:
        return len(self._jar)

    def __getstate__(self) -> list[http.cookiejar.Cookie]:
        return list(self._jar)

    def __setstate__(self, state: list[http.cookiejar.Cookie]) -> None:
        self.__init__(state)  # type: ignore[misc]


def _problem(path: Path) -> str:
    """Which line of ``path`` the library refused, and why, in one line."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        return f"cannot read cookies file {path}: {exc.strerror or exc}"
    if not lines or not http.cookiejar.NETSCAPE_MAGIC_RGX.match(lines[0]):  # type: ignore[attr-defined]
        return f"{path}:1: not a Netscape cookies file (its first line must be '# Netscape HTTP Cookie File')"
    for lineno, line in enumerate(lines[1:], start=2):
        problem = _line_problem(line)
        if problem is not None:
            return f"{path}:{lineno}: bad cookie line ({problem})"
    return f"{path}: not a Netscape cookies file"


def _line_problem(line: str) -> str | None:
    """What is wrong with one line, as MozillaCookieJar reads it (None: nothing)."""
    line = line.removeprefix(_HTTPONLY_PREFIX)
    if not line.strip() or line.strip().startswith(("#", "$")):
        return None
    fields = line.split("\t")
    if len(fields) != _FIELDS:
        return f"{len(fields)} TAB-separated fields, not {_FIELDS}"
    domain, domain_specified, _path, _secure, expires = fields[:5]
    if (domain_specified == "TRUE") != domain.startswith("."):
        return "the second field must be TRUE exactly when the domain starts with '.'"
    if expires:
        try:
            int(float(expires))
        except (ValueError, OverflowError):
            return f"expiry {expires!r} is not a number"
    return None
