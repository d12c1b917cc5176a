"""Segmented download: one large file fetched as fixed-size pieces over several connections.

Each piece is a ``Range: bytes=START-END`` request (with If-Range, so a file that changed answers 200
and the download restarts instead of mixing versions), written at its offset into one pre-sized
temporary file: no joining pass at the end. Connections take the next pending piece from a shared
queue, so an idle connection always picks up remaining work and the last piece cannot straggle much
longer than one piece's time. Finished pieces are recorded in the resume metadata, so pieces resume
across attempts and runs.

Planning (``plan_pieces``, ``PieceMap``) is pure; ``fetch_pieces`` is the thin async part.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from ._exceptions import ConnectError, SlowError, TransientError

# 4 MiB pieces: few enough requests on a fast link (256 for 1 GiB), short enough (0.5 s at 8 MiB/s)
# that the last piece of a throttled download does not straggle.
PIECE_SIZE = 4 * 1024 * 1024
WRITE_BLOCK = 1024 * 1024


def plan_pieces(total: int, piece_size: int = PIECE_SIZE) -> list[tuple[int, int]]:
    """Half-open byte ranges ``[start, end)`` covering ``total`` bytes in pieces of ``piece_size``."""
    if total < 0 or piece_size <= 0:
        raise ValueError("total must be >= 0 and piece_size > 0")
    return [(start, min(start + piece_size, total)) for start in range(0, total, piece_size)]


class PieceMap:
    """Which pieces of a file are on disk. Serialises to a short list for the resume metadata."""

    def __init__(self, total: int, piece_size: int = PIECE_SIZE, done: Iterable[int] = ()) -> None:
        self.total = total
        self.piece_size = piece_size
        self.ranges = plan_pieces(total, piece_size)
        self.done: set[int] = {i for i in done if 0 <= i < len(self.ranges)}

    def pending(self) -> list[int]:
        return [i for i in range(len(self.ranges)) if i not in self.done]

    def mark_done(self, index: int) -> None:
        self.done.add(index)

    def bytes_done(self) -> int:
        return sum(self.ranges[i][1] - self.ranges[i][0] for i in self.done)

    def prefix_bytes(self) -> int:
        """Bytes from the start of the file up to the first piece not on disk."""
        for index, (start, _end) in enumerate(self.ranges):
            if index not in self.done:
                return start
        return self.total

    def is_complete(self) -> bool:
        return len(self.done) == len(self.ranges)

    def to_json(self) -> dict[str, object]:
        return {"piece_size": self.piece_size, "done": sorted(self.done)}

    @classmethod
    def from_json(cls, total: int, data: object) -> PieceMap | None:
        if not isinstance(data, dict):
            return None
        piece_size = data.get("piece_size")
        done = data.get("done")
        if not isinstance(piece_size, int) or piece_size <= 0 or not isinstance(done, list):
            return None
        return cls(total, piece_size, (i for i in done if isinstance(i, int)))


class PieceBody(Protocol):
    """What fetch_pieces needs of an open ranged response (``_http.Body`` fits)."""

    status: int
    range_start: int | None
    range_total: int | None
    content_length: int | None
    received: int

    def chunks(self) -> AsyncIterator[bytes]: ...

    @property
    def splice_candidate(self) -> bool: ...

    def detach(self) -> tuple[bytes, int | None]: ...

    async def splice_rest(
        self, out: int, *, offset: int, stall_timeout: float | None, on_bytes: Callable[[int], None]
    ) -> None: ...


@dataclass(frozen=True)
class SpliceInto:
    """Where the pieces may be spliced (see _splice): the pre-sized file, the stall timeout, and
    the count of bytes as they land (no rate limit may apply: those pieces go through Python)."""

    fd: int
    stall_timeout: float | None
    on_bytes: Callable[[int], None]


class FileChanged(TransientError):
    """A piece came back as a whole new body (200): the remote file changed; restart from zero."""


OpenPiece = Callable[[int, int], AbstractAsyncContextManager[PieceBody]]


def check_piece_answer(body: PieceBody, start: int, end: int, total: int) -> None:
    """Raise unless ``body`` is the 206 answer for bytes ``[start, end)`` of a ``total``-byte file."""
    if body.status == 200:
        raise FileChanged("the file changed during a segmented download; restarting")
    if body.status != 206 or body.range_start != start or body.range_total != total:
        raise ConnectError(
            f"unexpected answer to a range request for bytes {start}-{end - 1}: "
            f"status {body.status}, start {body.range_start}, total {body.range_total}"
        )


async def write_piece(
    body: PieceBody,
    start: int,
    end: int,
    *,
    write_at: Callable[[int, bytes], Awaitable[None]],
    on_bytes: Callable[[int], Awaitable[None]],
    splice: SpliceInto | None = None,
) -> None:
    """Stream ``body`` (bytes ``[start, end)``) to its offsets, in blocks of WRITE_BLOCK.

    With ``splice``, a piece whose answer has the requested length goes from the socket to the file
    by the kernel instead (what aiohttp had buffered is written first).
    """
    position = start
    if splice is not None and body.content_length == end - start and body.splice_candidate:
        buffered, sock = body.detach()
        if buffered:
            await write_at(position, buffered)
            await on_bytes(len(buffered))
            position += len(buffered)
        if sock is not None:
            await body.splice_rest(
                splice.fd, offset=position, stall_timeout=splice.stall_timeout, on_bytes=splice.on_bytes
            )
            return  # splice_rest raised unless the piece is complete
    block: list[bytes] = []
    block_size = 0
    async for chunk in body.chunks():
        if position + block_size + len(chunk) > end:
            raise ConnectError(f"server sent more than the requested range {start}-{end - 1}")
        block.append(chunk)
        block_size += len(chunk)
        await on_bytes(len(chunk))
        if block_size >= WRITE_BLOCK:
            await write_at(position, block[0] if len(block) == 1 else b"".join(block))
            position += block_size
            block, block_size = [], 0
    if block:
        await write_at(position, b"".join(block))
        position += block_size
    if position != end:
        raise ConnectError(f"piece {start}-{end - 1} cut short at {position}")


async def fetch_pieces(
    pieces: PieceMap,
    *,
    open_piece: OpenPiece,
    write_at: Callable[[int, bytes], Awaitable[None]],
    on_bytes: Callable[[int], Awaitable[None]],
    on_piece_done: Callable[[int], Awaitable[None]],
    connections: int,
    max_failures: int,
    splice: SpliceInto | None = None,
) -> None:
    """Fetch every pending piece with up to ``connections`` requests at once.

    A piece that fails with a transient error goes back in the queue (its partial bytes are simply
    fetched again); after ``max_failures`` failures in all, the last error is raised. A 200 answer
    raises FileChanged. SlowError (raised by ``on_bytes``: the attempt as a whole is below its speed
    floor) and any other error stop every connection and are raised.
    """
    queue = deque(pieces.pending())
    failures = 0

    async def fetch_one(index: int) -> None:
        start, end = pieces.ranges[index]
        async with open_piece(start, end - 1) as body:
            check_piece_answer(body, start, end, pieces.total)
            await write_piece(body, start, end, write_at=write_at, on_bytes=on_bytes, splice=splice)
        pieces.mark_done(index)
        await on_piece_done(index)

    async def connection() -> None:
        nonlocal failures
        while queue:
            index = queue.popleft()
            try:
                await fetch_one(index)
            except SlowError:
                raise  # the whole attempt is below its speed floor: another piece would not help
            except TransientError:
                failures += 1
                if failures > max_failures:
                    raise
                queue.append(index)

    tasks = [asyncio.ensure_future(connection()) for _ in range(max(1, min(connections, len(queue))))]
    try:
        # Finish when all are done; the first error cancels the others.
        done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            error = task.exception()
            if error is not None:
                raise error
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
