"""What `asyncdl demo` serves and asks for: the files, their contents, and the server's decisions.

Pure: no I/O and no clock of its own. The server in ``_web.py`` asks it what to answer; the command
line in ``_cli_demo.py`` asks it what to download and how to tell the story afterwards.

The run is meant to show in 10-20 seconds what a real one meets: many small files, a few large ones
paced like a remote server, one of unknown size, one connection that breaks half-way (resumed with
a Range request), and one origin that answers ``429`` with ``Retry-After`` at first.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from ._models import Checksum, Request

MiB = 1024 * 1024
_BLOCK_SIZE = 64 * 1024  # a file's content repeats this block, made once from its name


@dataclass(frozen=True)
class DemoFile:
    """One file the demo server has.

    ``path`` is its URL path (also its place under the output directory); ``rate_bps`` paces each
    answer as a remote server would; ``delay_s`` is the wait before the answer (latency);
    ``breaks_at`` makes the first answer that crosses that byte end there, connection closed;
    ``chunked`` sends it without a Content-Length; ``limited`` puts it on the origin that answers
    429 at first.
    """

    path: str
    size: int
    rate_bps: int | None = None
    delay_s: float = 0.0
    breaks_at: int | None = None
    chunked: bool = False
    limited: bool = False
    checksum: bool = False  # the download is asked to verify a sha-256

    @property
    def etag(self) -> str:
        return f'"{hashlib.sha256(self.path.encode()).hexdigest()[:16]}-{self.size}"'

    @property
    def content_type(self) -> str:
        if self.path.endswith(".json"):
            return "application/json"
        return "text/plain; charset=utf-8" if self.path.endswith(".txt") else "application/octet-stream"


@dataclass(frozen=True)
class DemoPlan:
    """Everything the demo serves; ``limited_for_s`` is how long its second origin answers 429 after
    its first request, with ``Retry-After: retry_after_s``."""

    files: tuple[DemoFile, ...]
    limited_for_s: float = 3.0
    retry_after_s: int = 2
    by_path: dict[str, DemoFile] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_path", {f.path: f for f in self.files})

    def requests(self, base_url: str, limited_base_url: str) -> list[Request]:
        """The downloads, in the order they are handed to the downloader: large ones first (they
        take longest), the 429 origin's mixed in among the small ones."""
        requests: list[Request] = []
        for demo_file in self.files:
            base = limited_base_url if demo_file.limited else base_url
            folder, _, name = demo_file.path.lstrip("/").rpartition("/")
            checksum = Checksum("sha256", digest(demo_file)) if demo_file.checksum else None
            requests.append(Request(base + demo_file.path, out=name, dir=folder or None, checksum=checksum))
        return requests


def demo_plan(*, small: int = 300, seed: int = 2024) -> DemoPlan:
    """The demo's files: ``small`` small ones, three large, one of unknown size, one that breaks."""
    rng = random.Random(seed)
    files = [
        *(DemoFile(f"/large/disk-{n}.img", 24 * MiB, rate_bps=3 * MiB) for n in (1, 2, 3)),
        DemoFile("/large/video.mp4", 16 * MiB, rate_bps=2 * MiB, breaks_at=8 * MiB, checksum=True),
        DemoFile("/stream/events.log", 6 * MiB, rate_bps=768 * 1024, chunked=True),
    ]
    limited = iter(range(1, 13))
    for n in range(1, small + 1):
        size = int(rng.lognormvariate(9.5, 1.0)) + 1  # a few hundred bytes to a few hundred KiB
        files.append(
            DemoFile(f"/small/notes-{n:03d}.txt", min(size, 512 * 1024), delay_s=rng.uniform(0.1, 0.4))
        )
        if n % 25 == 0 and (k := next(limited, None)) is not None:
            files.append(DemoFile(f"/api/item-{k:02d}.json", 2048 + 97 * k, delay_s=0.05, limited=True))
    return DemoPlan(tuple(files))


# --- contents ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _block(path: str) -> bytes:
    """The 64 KiB that ``path``'s content repeats: text lines for text files, else random bytes."""
    seed = int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "big")
    if path.endswith((".txt", ".log", ".json")):
        name = path.rpartition("/")[2]
        lines = (
            f"{name} line {i:05d}: {random.Random(seed + i).getrandbits(64):016x}\n" for i in range(2000)
        )
        text = "".join(lines).encode()
        return (text * (_BLOCK_SIZE // len(text) + 1))[:_BLOCK_SIZE]
    return random.Random(seed).randbytes(_BLOCK_SIZE)


def content(demo_file: DemoFile, start: int, end: int, *, chunk_size: int = _BLOCK_SIZE) -> Iterator[bytes]:
    """The bytes ``start`` to ``end`` (exclusive) of ``demo_file``, in chunks of at most ``chunk_size``."""
    block = _block(demo_file.path)
    position = start
    while position < end:
        offset = position % _BLOCK_SIZE
        piece = block[offset : offset + min(chunk_size, end - position)]
        yield piece
        position += len(piece)


def digest(demo_file: DemoFile) -> str:
    """The sha-256 of the whole file."""
    hasher = hashlib.sha256()
    for piece in content(demo_file, 0, demo_file.size):
        hasher.update(piece)
    return hasher.hexdigest()


# --- the server's decisions ---------------------------------------------------------------------------

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


@dataclass(frozen=True)
class Answer:
    """What to send for a GET: ``status`` and, for a body, the bytes ``start`` to ``end``."""

    status: int
    start: int = 0
    end: int = 0
    retry_after_s: int | None = None


def answer(
    demo_file: DemoFile, *, range_header: str | None, if_range: str | None, closed_for_s: float | None
) -> Answer:
    """The answer to a GET of ``demo_file``: 429 while its origin is closed (``closed_for_s`` more
    seconds), 206 for a satisfiable ``Range`` (unless ``If-Range`` names another version), 416
    past the end, else 200."""
    if closed_for_s is not None and closed_for_s > 0:
        return Answer(429, retry_after_s=max(1, math.ceil(closed_for_s)))
    size = demo_file.size
    match = _RANGE.fullmatch(range_header.strip()) if range_header else None
    if match is None or demo_file.chunked or (if_range is not None and if_range != demo_file.etag):
        return Answer(200, 0, size)
    start = int(match.group(1))
    end = min(size, int(match.group(2)) + 1) if match.group(2) else size
    if start >= size or start >= end:
        return Answer(416)
    return Answer(206, start, end)


class OpeningOrigin:
    """An origin that answers 429 for ``closed_for_s`` seconds after its first request (clock given)."""

    def __init__(self, closed_for_s: float) -> None:
        self._closed_for_s = closed_for_s
        self._opens_at: float | None = None

    def closed_for(self, now: float) -> float | None:
        """Seconds it stays closed, seen at ``now``; None once open."""
        if self._opens_at is None:
            self._opens_at = now + self._closed_for_s
        left = self._opens_at - now
        return left if left > 0 else None


@dataclass
class DemoEvents:
    """What the demo server did, for the story at the end."""

    too_many_requests: int = 0  # 429 answers sent
    limited_paths: set[str] = field(default_factory=set)  # files that got a 429
    breaks: list[tuple[str, int, int]] = field(default_factory=list)  # (path, at byte, of size)
    resumes: list[tuple[str, int]] = field(default_factory=list)  # (path, from byte): 206 answers
