"""Values that cross module lines: what to fetch (Request), how it ended (Result)."""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ._exceptions import UsageError
from ._ratelimit import parse_rate

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


# Looked up once: an attribute of the Status class costs more than the test it is used in.
_FAILED = Status.FAILED


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


def header_pairs(headers: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> HeaderPairs:
    """``headers`` as pairs; UsageError for a line break in one (it would end the request's head).

    The message names the header, never its value (it may be a secret)."""
    if headers is None:
        return ()
    items = headers.items() if isinstance(headers, Mapping) else headers
    pairs = tuple((str(k), str(v)) for k, v in items)
    for name, value in pairs:
        text = name + value
        if "\r" in text or "\n" in text or "\x00" in text:
            raise UsageError(f"header {name.strip()!r} contains a line break or NUL character")
    return pairs


@dataclass(frozen=True)
class Request:
    """One download: a URL, its mirrors, and where and how to save it.

    ``out`` names the file (else the server's Content-Disposition, else the URL's last segment);
    ``dir`` is a subdirectory of the downloader's destination. ``headers`` accepts a mapping or
    ``(name, value)`` pairs and is stored as pairs. ``source`` says where the request came from
    (``urls.txt:12``) for messages.

    Options for this download alone (None: the downloader's), as the aria2 keys of the list format:
    ``connections`` (``split`` / ``max-connection-per-server``, as -x), ``user_agent``, ``referer``
    (sent on every hop), ``auth`` (``(user, password)``: Basic authentication, to the URL's origin
    only), ``limit_rate`` (bytes/s or ``"500K"``: a cap for this download, within the overall one),
    ``overwrite``, ``max_tries`` (attempts per URL, the first included; 0: no limit) and
    ``lowest_speed_limit`` (bytes/s or ``"10K"``).
    """

    url: str
    mirrors: tuple[str, ...] = ()
    out: str | None = None
    dir: str | None = None
    checksum: Checksum | None = None
    headers: HeaderPairs = ()
    source: str | None = field(default=None, compare=False)
    connections: int | None = None
    user_agent: str | None = None
    referer: str | None = None
    auth: tuple[str, str] | None = field(default=None, repr=False)
    limit_rate: int | None = None
    overwrite: bool | None = None
    max_tries: int | None = None
    lowest_speed_limit: int | None = None

    # Written out rather than generated (the dataclass keeps it): plain requests (a URL and nothing
    # else) are made by the million, and one store in the instance dict per field costs a quarter of
    # the generated object.__setattr__ calls. Only what needs converting is converted.
    def __init__(  # noqa: PLR0917 - the dataclass's signature, positional as generated
        self,
        url: str,
        mirrors: Iterable[str] = (),
        out: str | None = None,
        dir: str | None = None,
        checksum: Checksum | str | None = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        source: str | None = None,
        connections: int | None = None,
        user_agent: str | None = None,
        referer: str | None = None,
        auth: tuple[str, str] | None = None,
        limit_rate: int | str | None = None,
        overwrite: bool | None = None,
        max_tries: int | None = None,
        lowest_speed_limit: int | str | None = None,
    ) -> None:
        if mirrors.__class__ is not tuple:
            mirrors = tuple(mirrors)
        if headers:
            headers = header_pairs(headers)
        elif headers.__class__ is not tuple:
            headers = ()
        if checksum is not None and isinstance(checksum, str):  # "sha-256=HEX" is accepted too
            checksum = Checksum.parse(checksum)
        values = self.__dict__
        values["url"] = url
        values["mirrors"] = mirrors
        values["out"] = out
        values["dir"] = dir
        values["checksum"] = checksum
        values["headers"] = headers
        values["source"] = source
        # The per-download options are stored only when given: a field not in the instance dict
        # reads as its default, the class attribute the dataclass made (eq, hash, repr, replace and
        # pickle all read attributes), and most requests have none of them.
        if connections is not None:
            values["connections"] = _at_least("connections", connections, 1)
        if user_agent is not None:
            values["user_agent"] = user_agent
        if referer is not None:
            values["referer"] = referer
        if auth is not None:
            user, password = auth
            values["auth"] = (str(user), str(password))
        if limit_rate is not None:
            values["limit_rate"] = _rate("limit_rate", limit_rate)
        if overwrite is not None:
            values["overwrite"] = overwrite
        if max_tries is not None:
            values["max_tries"] = _at_least("max_tries", max_tries, 0)
        if lowest_speed_limit is not None:
            values["lowest_speed_limit"] = _rate("lowest_speed_limit", lowest_speed_limit)

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


def plain_request(url: str, source: str | None) -> Request:
    """``Request(url, source=source)``, made without the checks its arguments do not need."""
    request = _new_object(Request)
    values = request.__dict__
    values["url"] = url
    values["mirrors"] = ()
    values["out"] = None
    values["dir"] = None
    values["checksum"] = None
    values["headers"] = ()
    values["source"] = source
    return request  # the per-download options read as their defaults (see Request.__init__)


# The fields every Request stores (url ... source); the per-download options come after them.
_STORED_ALWAYS = 7


def has_options(request: Request) -> bool:
    """Whether ``request`` has any per-download option (connections ... lowest_speed_limit).

    One length check: the options are stored only when given (see Request.__init__).
    """
    return len(request.__dict__) > _STORED_ALWAYS


def _at_least(name: str, value: int, minimum: int) -> int:
    if value.__class__ is not int or value < minimum:
        raise UsageError(f"{name} must be a whole number of at least {minimum}, not {value!r}")
    return value


def _rate(name: str, value: int | str) -> int:
    """Bytes per second from an int or a text such as ``500K``."""
    if isinstance(value, str):
        return parse_rate(value)
    if value.__class__ is not int or value <= 0:
        raise UsageError(f"{name} must be a positive number of bytes per second, not {value!r}")
    return value


_new_object = object.__new__


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

    # Written out rather than generated, as Request's: a Ray run's driver makes one per download.
    def __init__(  # noqa: PLR0917 - the dataclass's signature, positional as generated
        self,
        url: str,
        path: str | None,
        status: Status,
        bytes: int = 0,
        attempts: int = 0,
        error: str | None = None,
        request: Request | None = None,
        worker: int | None = None,
        shard: int | None = None,
    ) -> None:
        values = self.__dict__
        values["url"] = url
        values["path"] = path
        values["status"] = status
        values["bytes"] = bytes
        values["attempts"] = attempts
        values["error"] = error
        values["request"] = request
        values["worker"] = worker
        values["shard"] = shard

    @property
    def ok(self) -> bool:
        """True for ``ok`` and ``skipped``: the target is there."""
        return self.status is not _FAILED

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
