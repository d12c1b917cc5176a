"""asyncdl: an asyncio download manager. Stream many URLs to disk at once, with retries and resume."""

from ._api import Downloader, download_many
from ._exceptions import (
    AsyncdlError,
    ChecksumMismatch,
    ConnectError,
    DownloadError,
    HTTPStatusError,
    IncompleteBody,
    RedirectError,
    RetryableStatus,
    StallError,
    StorageError,
    TransientError,
    UploadError,
    UsageError,
)
from ._models import Checksum, Request, Result, Status
from ._progress import ActiveDownload, Progress, Snapshot
from ._queue import DownloadHandle, HandleProgress
from ._retry import RetryPolicy
from ._upload import upload, upload_many
from ._version import __version__

__all__ = [
    "ActiveDownload",
    "AsyncdlError",
    "Checksum",
    "ChecksumMismatch",
    "ConnectError",
    "DownloadError",
    "DownloadHandle",
    "Downloader",
    "HTTPStatusError",
    "HandleProgress",
    "IncompleteBody",
    "Progress",
    "RedirectError",
    "Request",
    "Result",
    "RetryPolicy",
    "RetryableStatus",
    "Snapshot",
    "StallError",
    "Status",
    "StorageError",
    "TransientError",
    "UploadError",
    "UsageError",
    "__version__",
    "download_many",
    "upload",
    "upload_many",
]
