"""The public surface is asyncdl/__init__.py alone, and it changes only on purpose."""

from __future__ import annotations

import asyncdl

EXPECTED = [
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


def test_all_is_pinned_and_sorted() -> None:
    assert asyncdl.__all__ == EXPECTED
    assert sorted(asyncdl.__all__, key=str.casefold) == sorted(EXPECTED, key=str.casefold)


def test_every_exported_name_exists_and_belongs_to_asyncdl() -> None:
    for name in asyncdl.__all__:
        member = getattr(asyncdl, name)
        if name != "__version__" and hasattr(member, "__module__"):
            assert member.__module__.startswith("asyncdl"), name


def test_exception_tree() -> None:
    assert issubclass(asyncdl.UsageError, asyncdl.AsyncdlError)
    assert issubclass(asyncdl.TransientError, asyncdl.DownloadError)
    for transient in (
        asyncdl.ConnectError,
        asyncdl.StallError,
        asyncdl.IncompleteBody,
        asyncdl.RetryableStatus,
    ):
        assert issubclass(transient, asyncdl.TransientError)
    for final in (
        asyncdl.HTTPStatusError,
        asyncdl.RedirectError,
        asyncdl.ChecksumMismatch,
        asyncdl.StorageError,
    ):
        assert issubclass(final, asyncdl.DownloadError)
        assert not issubclass(final, asyncdl.TransientError)
    assert issubclass(asyncdl.UploadError, asyncdl.AsyncdlError)
