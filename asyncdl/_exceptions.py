"""Exceptions raised by asyncdl.

::

    AsyncdlError                 base of all that asyncdl raises on purpose
    ├── UsageError               bad option or unreadable list -> exit 2, one line, no traceback
    ├── DownloadError            .url; ends one download as failed
    │   ├── TransientError       retried, resuming from what is on disk
    │   │   ├── ConnectError     connection refused / reset / DNS (.connecting: no connection was made)
    │   │   ├── StallError       no byte for the stall timeout
    │   │   ├── SlowError        below the speed floor (--lowest-speed-limit)
    │   │   ├── IncompleteBody   .received, .expected
    │   │   └── RetryableStatus  .status, .retry_after (seconds | None)
    │   ├── HTTPStatusError      .status; other non-2xx; never retried
    │   ├── RedirectError        loop, too many, or a scheme we do not follow
    │   ├── ChecksumMismatch     .algorithm, .expected, .actual
    │   ├── FileTooLarge         .limit; over --max-filesize, never retried
    │   └── StorageError         disk full, permissions, rename
    └── UploadError              .status (None when no answer arrived)

A failed download is reported as a :class:`asyncdl.Result` with ``status == "failed"``;
these exceptions travel inside the download machinery and end up as ``Result.error``.
"""

from __future__ import annotations


class AsyncdlError(Exception):
    """Base class of every exception asyncdl raises on purpose."""


class UsageError(AsyncdlError):
    """A bad option, argument or unreadable list file."""


class DownloadError(AsyncdlError):
    """Ends one download as failed."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class TransientError(DownloadError):
    """A failure worth another attempt (which resumes from the bytes on disk)."""


class ConnectError(TransientError):
    """The connection could not be made (``connecting``: refused, unreachable, no such name), or broke."""

    def __init__(self, message: str, *, url: str | None = None, connecting: bool = False) -> None:
        super().__init__(message, url=url)
        self.connecting = connecting


class StallError(TransientError):
    """No byte arrived for the stall timeout."""


class SlowError(TransientError):
    """The body arrived more slowly than the speed floor (``--lowest-speed-limit``) for a whole window."""


class IncompleteBody(TransientError):
    """The body ended before Content-Length bytes arrived."""

    def __init__(self, message: str, *, received: int, expected: int, url: str | None = None) -> None:
        super().__init__(message, url=url)
        self.received = received
        self.expected = expected


class RetryableStatus(TransientError):
    """408, 425, 429, 500, 502, 503 or 504."""

    def __init__(
        self, message: str, *, status: int, retry_after: float | None = None, url: str | None = None
    ) -> None:
        super().__init__(message, url=url)
        self.status = status
        self.retry_after = retry_after


class HTTPStatusError(DownloadError):
    """A non-2xx status that is not worth retrying."""

    def __init__(self, message: str, *, status: int, url: str | None = None) -> None:
        super().__init__(message, url=url)
        self.status = status


class RedirectError(DownloadError):
    """A redirect loop, too many redirects, or a redirect to a scheme we do not follow."""


class ChecksumMismatch(DownloadError):
    """The content's digest differs from the expected checksum."""

    def __init__(
        self, message: str, *, algorithm: str, expected: str, actual: str, url: str | None = None
    ) -> None:
        super().__init__(message, url=url)
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual


class FileTooLarge(DownloadError):
    """The file is larger than ``--max-filesize`` (declared, or as received)."""

    def __init__(self, message: str, *, limit: int, url: str | None = None) -> None:
        super().__init__(message, url=url)
        self.limit = limit


class StorageError(DownloadError):
    """Writing, renaming or creating a file failed (disk full, permissions...)."""


class UploadError(AsyncdlError):
    """An upload did not get a 2xx answer."""

    def __init__(self, message: str, *, status: int | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.url = url
