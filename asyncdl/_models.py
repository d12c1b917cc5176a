"""Values that cross module lines: what to fetch (Request), how it ended (Result)."""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ._exceptions import UsageError

# The names of the list format (aria2c's) mapped to hashlib's.
CHECKSUM_ALGORITHMS = {
    "sha-256": "sha256",
    "sha-1": "sha1",
    "sha-512": "sha512",
    "sha-224": "sha224",
    "sha-384": "sha384",
    "md5": "md5",
}


class Status(str, enum.Enum):
    """How one download ended."""

    OK = "ok"
    SKIPPED = "skipped"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Checksum:
    """An expected digest: ``algorithm`` is a hashlib name (``sha256``), ``hexdigest`` lower-case hex."""

    algorithm: str
    hexdigest: str

    def __post_init__(self) -> None:
        algorithm = CHECKSUM_ALGORITHMS.get(self.algorithm.lower(), self.algorithm.lower())
        if algorithm not in CHECKSUM_ALGORITHMS.values():
            raise UsageError(f"unsupported checksum algorithm {self.algorithm!r}")
        hexdigest = self.hexdigest.strip().lower()
        size = hashlib.new(algorithm).digest_size
        if len(hexdigest) != 2 * size or any(c not in "0123456789abcdef" for c in hexdigest):
            raise UsageError(f"checksum for {self.algorithm} must be {2 * size} hex digits")
        object.__setattr__(self, "algorithm", algorithm)
        object.__setattr__(self, "hexdigest", hexdigest)

    @classmethod
    def parse(cls, text: str) -> Checksum:
        """Parse ``sha-256=HEX`` (the list format's ``checksum=`` value)."""
        algorithm, sep, hexdigest = text.partition("=")
        if not sep:
            raise UsageError(f"checksum must look like sha-256=HEX, not {text!r}")
        return cls(algorithm.strip(), hexdigest)


HeaderPairs = tuple[tuple[str, str], ...]


def _header_pairs(headers: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> HeaderPairs:
    if headers is None:
        return ()
    items = headers.items() if isinstance(headers, Mapping) else headers
    return tuple((str(k), str(v)) for k, v in items)


@dataclass(frozen=True)
class Request:
    """One download: a URL, its mirrors, and where and how to save it.

    ``out`` names the file (else the server's Content-Disposition, else the URL's last segment);
    ``dir`` is a subdirectory of the downloader's destination. ``headers`` accepts a mapping or
    ``(name, value)`` pairs and is stored as pairs. ``source`` says where the request came from
    (``urls.txt:12``) for messages.
    """

    url: str
    mirrors: tuple[str, ...] = ()
    out: str | None = None
    dir: str | None = None
    checksum: Checksum | None = None
    headers: HeaderPairs = ()
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        # Plain requests (a URL and nothing else) are made by the million: only convert what needs it.
        if self.mirrors.__class__ is not tuple:
            object.__setattr__(self, "mirrors", tuple(self.mirrors))
        if self.headers:
            object.__setattr__(self, "headers", _header_pairs(self.headers))
        elif self.headers.__class__ is not tuple:
            object.__setattr__(self, "headers", ())
        checksum: object = self.checksum  # a "sha-256=HEX" string is accepted too
        if checksum is not None and isinstance(checksum, str):
            object.__setattr__(self, "checksum", Checksum.parse(checksum))

    @property
    def urls(self) -> tuple[str, ...]:
        """The URL followed by its mirrors, in the order they are tried."""
        return (self.url, *self.mirrors)

    @classmethod
    def coerce(cls, item: str | Request) -> Request:
        """A Request from a URL string or a Request."""
        if isinstance(item, Request):
            return item
        if isinstance(item, str):
            return cls(item)
        raise TypeError(f"expected a URL string or asyncdl.Request, got {type(item).__name__}")


@dataclass(frozen=True)
class BadEntry:
    """A list line that is not a usable download; it becomes a failed Result without any request."""

    url: str
    message: str
    source: str | None = None


@dataclass(frozen=True)
class Result:
    """How one download ended. A failed download is a Result, never an exception."""

    url: str
    path: str | None
    status: Status
    bytes: int = 0
    attempts: int = 0
    error: str | None = None
    request: Request | None = field(default=None, repr=False, compare=False)
    # Where a Ray run did the download: the worker's number and the shard's (None in a local run).
    worker: int | None = None
    shard: int | None = None

    @property
    def ok(self) -> bool:
        """True for ``ok`` and ``skipped``: the target is there."""
        return self.status is not Status.FAILED

    def to_record(self) -> dict[str, object]:
        """The report's JSON object (secrets already redacted in ``url`` and ``error``).

        A Ray run's records also say which ``worker`` and ``shard`` did the download.
        """
        record: dict[str, object] = {
            "url": self.url,
            "path": self.path,
            "status": self.status.value,
            "bytes": self.bytes,
            "attempts": self.attempts,
            "error": self.error,
        }
        if self.worker is not None:
            record["worker"] = self.worker
            record["shard"] = self.shard
        return record
