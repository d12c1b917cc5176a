"""--save-session: the downloads of a run that did not finish, written as a URL list.

A :class:`Session` sees every request as the run takes it from the input and every result as it
arrives. At the end (also after Ctrl-C or SIGTERM) it writes, in input order, the downloads that
failed or were still under way, then the ones the run never took (the rest of the input), each in
the list format with its options (``_urllist.format_request``), so that ``asyncdl FILE`` retries
exactly those. A run in which everything finished leaves an empty file.

It holds the requests under way (as many as the run has started) and the failed ones, nothing more.
Lines that are not a usable download (a bad URL: a failed result without a request) are not
written: they would only fail again.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

from ._exceptions import UsageError
from ._models import BadEntry, Request, Result, Status
from ._naming import name_from_url
from ._urllist import format_request

__all__ = ["Session", "check_writable"]


class Session:
    """The unfinished downloads of one run, for ``path``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._open: dict[int, tuple[int, Request]] = {}  # id(request) -> (input order, request)
        self._taken = 0
        check_writable(self.path)

    def _take(self, item: Request | BadEntry) -> None:
        if isinstance(item, Request):
            self._open[id(item)] = (self._taken, item)
        self._taken += 1

    def track(self, items: Iterator[Request | BadEntry]) -> Iterator[Request | BadEntry]:
        """``items``, noting each as the run takes it. ``items`` itself is not closed with this
        generator: after an interruption ``write`` reads the rest of it."""
        for item in items:
            self._take(item)
            yield item

    async def track_async(
        self, items: AsyncIterator[Request | BadEntry]
    ) -> AsyncIterator[Request | BadEntry]:
        async for item in items:
            self._take(item)
            yield item

    def finished(self, result: Result) -> None:
        """A result arrived: a download that ended ok or skipped is done with."""
        request = result.request
        if request is None:
            return
        if result.status is not Status.FAILED:
            self._open.pop(id(request), None)
        elif request.out is None and result.path is not None:
            # A name this run gave it beside a namesake (name.1.ext; or the server's name) is
            # kept: a re-run must not take the namesake for this download and skip it. (For
            # name.1.ext the temporary file, named after the planned name, is resumed too.)
            name = os.path.basename(result.path)
            entry = self._open.get(id(request))
            if entry is not None and name != name_from_url(request.url):
                self._open[id(request)] = (entry[0], dataclasses.replace(request, out=name))

    def write(self, rest: Iterable[Request | BadEntry] = ()) -> None:
        """Write the file (atomically, readable by the user alone: it may hold credentials):
        the open downloads in input order, then the Requests of ``rest``."""
        directory = self.path.parent
        fd, temp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                for _order, request in sorted(self._open.values(), key=_first):
                    handle.write(format_request(request))
                for item in rest:
                    if isinstance(item, Request):
                        handle.write(format_request(item))
            os.replace(temp, self.path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise


def check_writable(path: Path) -> None:
    """UsageError, before a run starts, when a session file could not be written at ``path``."""
    directory = path.parent
    if path.is_dir():
        raise UsageError(f"cannot write session file {path}: is a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write session file {path}: {directory} is not writable")


def _first(entry: tuple[int, Request]) -> int:
    return entry[0]
