"""The only module that imports aiofiles: temporary files, resume metadata, buffered writes, commit.

Invariants:
- a target name appears only through an atomic rename (or link) of a complete temporary file;
- the temporary file always holds a prefix of the remote content described by its metadata file,
  which is written before the first data byte, so an interrupted run can resume it;
- writes are gathered into WRITE_BUFFER_SIZE blocks, so a thread hop is paid per megabyte, not per
  network chunk; a body that fits in the buffer is written, renamed and tidied in one hop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.os

from . import _batch
from ._exceptions import StorageError

WRITE_BUFFER_SIZE = 1024 * 1024
# Bodies up to this size (when Content-Length says so) are written in one hop at commit.
SMALL_BODY_MAX = 2 * 1024 * 1024
META_SUFFIX = ".meta"
_META_VERSION = 1


@dataclass(frozen=True)
class ResumeMeta:
    """What the next attempt needs to resume a temporary file safely."""

    url: str
    etag: str | None = None
    last_modified: str | None = None
    size: int | None = None  # the whole remote file, when known
    # A segmented download's pieces on disk ({"piece_size": N, "done": [...]}); None: a plain prefix.
    pieces: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps({"version": _META_VERSION, **asdict(self)})

    @classmethod
    def from_json(cls, text: str) -> ResumeMeta | None:
        try:
            data = json.loads(text)
            if data.get("version") != _META_VERSION:
                return None
            size = data.get("size")
            pieces = data.get("pieces")
            return cls(
                url=str(data["url"]),
                etag=data.get("etag"),
                last_modified=data.get("last_modified"),
                size=int(size) if size is not None else None,
                pieces=pieces if isinstance(pieces, dict) else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


@dataclass(frozen=True)
class PartialState:
    """A temporary file found on disk: its size and metadata (None when missing or unreadable)."""

    size: int
    meta: ResumeMeta | None


def storage_error(exc: OSError, what: str, path: Path) -> StorageError:
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        reason = "no space left on device"
    return StorageError(f"cannot {what} {path}: {reason}")


def _inspect(path: Path, meta_path: Path) -> PartialState | None:
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return None
    try:
        meta = ResumeMeta.from_json(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        meta = None
    return PartialState(size=size, meta=meta)


def _write_meta(meta_path: Path, text: str) -> None:
    try:
        meta_path.write_text(text, encoding="utf-8")
    except FileNotFoundError:
        meta_path.parent.mkdir(parents=True, exist_ok=True)
        meta_path.write_text(text, encoding="utf-8")


def _place(temp: Path, target: Path, *, replace: bool, keep_on_conflict: bool = False) -> bool:
    """Move ``temp`` to ``target``; without ``replace``, never clobber: False when target exists.

    On False, ``temp`` is removed unless ``keep_on_conflict`` (the caller then tries another name).
    """
    if replace:
        os.replace(temp, target)
        return True
    try:
        # link() fails when the target exists, so two writers can never replace each other's file.
        os.link(temp, target)
    except FileExistsError:
        if not keep_on_conflict:
            os.unlink(temp)
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
        # File systems without hard links: check, then rename (a small window, as in curl/wget).
        if target.exists():
            if not keep_on_conflict:
                os.unlink(temp)
            return False
        os.replace(temp, target)
        return True
    os.unlink(temp)
    return True


def _write_whole(  # noqa: PLR0917 - called through _batch.run, which passes positional arguments
    temp: Path, data: bytes, target: Path, meta_path: Path | None, replace: bool, keep_on_conflict: bool
) -> bool:
    """Write a complete small body and move it into place: the whole life of a small file in one hop."""
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    except FileNotFoundError:
        temp.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    placed = _place(temp, target, replace=replace, keep_on_conflict=keep_on_conflict)
    if meta_path is not None and (placed or not keep_on_conflict):
        meta_path.unlink(missing_ok=True)
    return placed


def _open_sized(path: Path, size: int, keep: bool) -> int:
    flags = os.O_RDWR | os.O_CREAT | (0 if keep else os.O_TRUNC)
    try:
        fd = os.open(path, flags, 0o666)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, flags, 0o666)
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _discard(temp: Path, meta_path: Path) -> None:
    temp.unlink(missing_ok=True)
    meta_path.unlink(missing_ok=True)


def _hash_prefix(path: Path, length: int, algorithm: str) -> Any:
    hasher = hashlib.new(algorithm)
    remaining = length
    with open(path, "rb") as f:
        while remaining > 0:
            block = f.read(min(remaining, WRITE_BUFFER_SIZE))
            if not block:
                break
            hasher.update(block)
            remaining -= len(block)
    return hasher


_a_inspect = aiofiles.os.wrap(_inspect)
_a_write_meta = aiofiles.os.wrap(_write_meta)
_a_place = aiofiles.os.wrap(_place)
_a_discard = aiofiles.os.wrap(_discard)
_a_open_sized = aiofiles.os.wrap(_open_sized)
_a_pwrite_all = aiofiles.os.wrap(_pwrite_all)
_a_close_fd = aiofiles.os.wrap(os.close)
_a_hash_prefix = aiofiles.os.wrap(_hash_prefix)


# --- final-name records ---
# A name decided on a worker of a shared run (Content-Disposition) cannot be checked against the names
# the other workers decide, so it is written down beside the temporary file's path: a retried shard or
# a re-run reads it and skips a download that is complete under that name, without asking the server.
NAME_RECORD_SUFFIX = ".name"


def _read_name_record(path: Path) -> str | None:
    try:
        name = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name or None


def _write_name_record(path: Path, name: str | None) -> None:
    if name is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(name, encoding="utf-8")


_a_read_name_record = aiofiles.os.wrap(_read_name_record)
_a_write_name_record = aiofiles.os.wrap(_write_name_record)


def name_record_path(temp_path: Path) -> Path:
    """Where the final name of the download whose temporary file is ``temp_path`` is recorded."""
    return temp_path.with_name(temp_path.name + NAME_RECORD_SUFFIX)


async def load_final_name(temp_path: Path) -> str | None:
    """The final name recorded for ``temp_path``'s download (None: none recorded or unreadable)."""
    name: str | None = await _a_read_name_record(name_record_path(temp_path))
    return name


async def save_final_name(temp_path: Path, name: str | None) -> None:
    """Record ``name`` as the final name of ``temp_path``'s download (None removes the record)."""
    record = name_record_path(temp_path)
    try:
        await _a_write_name_record(record, name)
    except OSError as exc:
        raise storage_error(exc, "write", record) from exc


_a_makedirs = aiofiles.os.wrap(os.makedirs)


class HashFollower:
    """Hashes a file from its start, in a thread of its own, as far as another writer has written it.

    The writer says how far the file is written (``advance``); the hash follows on the other core,
    so a checksum costs no extra pass over the file at the end. ``result(size)`` waits for the hash
    of the first ``size`` bytes; ``abandon()`` ends the thread when the write failed.
    """

    def __init__(self, path: Path, algorithm: str) -> None:
        self._path = path
        self._algorithm = algorithm
        self._written = 0
        self._final: int | None = None
        self._abandoned = False
        self._changed = threading.Condition()
        self._done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        threading.Thread(target=self._run, name="asyncdl-hash", daemon=True).start()

    def advance(self, written: int) -> None:
        with self._changed:
            self._written = max(self._written, written)
            self._changed.notify()

    async def result(self, size: int) -> Any:
        with self._changed:
            self._written = max(self._written, size)
            self._final = size
            self._changed.notify()
        try:
            return await asyncio.wrap_future(self._done)
        except OSError as exc:
            raise storage_error(exc, "read", self._path) from exc

    def abandon(self) -> None:
        with self._changed:
            self._abandoned = True
            self._changed.notify()

    def _run(self) -> None:
        if not self._done.set_running_or_notify_cancel():
            return
        try:
            self._done.set_result(self._follow())
        except BaseException as exc:  # handed to result()
            self._done.set_exception(exc)

    def _follow(self) -> Any:
        hasher = hashlib.new(self._algorithm)
        position = 0
        with open(self._path, "rb", buffering=0) as f:
            while True:
                with self._changed:
                    while position >= self._written and self._final is None and not self._abandoned:
                        self._changed.wait()
                    if self._abandoned:
                        return None
                    limit, final = self._written, self._final
                while position < limit:
                    block = os.pread(f.fileno(), min(limit - position, WRITE_BUFFER_SIZE), position)
                    if not block:
                        raise OSError(errno.EIO, f"file ends at {position} bytes, {limit} expected")
                    hasher.update(block)
                    position += len(block)
                if final is not None and position >= final:
                    return hasher


async def hash_prefix(path: Path, length: int, algorithm: str) -> Any:
    """A hashlib object fed with the first ``length`` bytes of ``path`` (to verify a resumed file)."""
    try:
        return await _a_hash_prefix(path, length, algorithm)
    except OSError as exc:
        raise storage_error(exc, "read", path) from exc


async def ensure_dir(path: Path) -> None:
    """Create ``path`` and its parents when missing."""
    try:
        await _a_makedirs(path, exist_ok=True)
    except OSError as exc:
        raise storage_error(exc, "create directory", path) from exc


MAX_INDEXED_NAMES = 100_000


def _list_names(directory: Path) -> frozenset[str] | None:
    names: set[str] = set()
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                names.add(entry.name)
                if len(names) > MAX_INDEXED_NAMES:
                    return None
    except FileNotFoundError:
        return frozenset()
    except OSError:
        return None
    return frozenset(names)


def _size_of(path: Path) -> int | None:
    try:
        return os.lstat(path).st_size
    except OSError:
        return None


_a_list_names = aiofiles.os.wrap(_list_names)
_a_size_of = aiofiles.os.wrap(_size_of)


async def size_of(path: Path) -> int | None:
    """The size of ``path``, or None when there is nothing there."""
    size: int | None = await _a_size_of(path)
    return size


class DirectoryIndex:
    """The names each output directory held when the run first looked at it.

    Whether a target or a temporary file exists must be known before each request; asking the disk
    costs a thread hop per download (a stat in the loop would wait on the directory lock while the
    writer threads create files). One listing per directory answers it from memory instead. Names
    the run creates itself are kept distinct by the run's NameRegistry, so the snapshot stays right.
    A directory of more than MAX_INDEXED_NAMES entries is not kept: lookups there ask the disk.
    """

    def __init__(self) -> None:
        self._listings: dict[Path, asyncio.Future[frozenset[str] | None]] = {}

    async def exists(self, directory: Path, name: str) -> bool:
        listing = self._listings.get(directory)
        if listing is None:
            listing = asyncio.ensure_future(_a_list_names(directory))
            self._listings[directory] = listing
        # shield: a cancelled caller must not cancel the listing that others wait for (and, once
        # the listing is there, no await at all: a shield costs a future and two callbacks).
        names = listing.result() if listing.done() else await asyncio.shield(listing)
        if names is not None:
            return name in names
        return await size_of(directory / name) is not None


class TempFile:
    """The temporary file of one download, beside its target, with its resume metadata.

    Use: ``inspect()`` what an earlier attempt left, ``begin(offset, meta)``, ``write()`` chunks, then
    ``commit(target)`` — or ``close()`` to keep the bytes for a later resume, or ``discard()``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.meta_path = path.with_name(path.name + META_SUFFIX)
        self._file: Any = None  # aiofiles handle, opened at the first flush
        self._fd: int | None = None  # a segmented download's file descriptor (pwrite at offsets)
        self._writing: asyncio.Future[None] | None = None  # the write in flight, if any
        self._flush_at = WRITE_BUFFER_SIZE
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._offset = 0  # where the buffer starts in the file
        self._meta: ResumeMeta | None = None
        self._meta_on_disk = False  # a metadata file may exist and must be removed at commit
        self._seek_first = False  # bytes went in through raw_fd(): the handle must move past them

    @property
    def position(self) -> int:
        """Bytes of the file so far: on disk plus buffered."""
        return self._offset + self._buffered

    async def inspect(self) -> PartialState | None:
        """What an earlier attempt or run left behind (None: nothing)."""
        try:
            state: PartialState | None = await _a_inspect(self.path, self.meta_path)
        except OSError as exc:
            raise storage_error(exc, "read", self.path) from exc
        if state is not None:
            self._meta_on_disk = True
        return state

    async def begin(self, offset: int, meta: ResumeMeta) -> None:
        """Start writing at ``offset`` (0 truncates) content described by ``meta``."""
        await self._close_handle()
        self._buffer.clear()
        self._buffered = 0
        self._offset = offset
        self._meta = meta
        # A whole body of known, small size is kept in memory and written, renamed and tidied in one
        # thread hop at commit (a 1 MiB file would otherwise cost six: open, metadata, write, close,
        # rename, tidy). A failed attempt still flushes it (close()), so no received byte is lost.
        size = meta.size
        small = offset == 0 and size is not None and size <= SMALL_BODY_MAX
        self._flush_at = SMALL_BODY_MAX + 1 if small else WRITE_BUFFER_SIZE
        if offset > 0:
            # The bytes before offset stay; record the (possibly newer) metadata now.
            await self._save_meta()

    async def write(self, data: bytes) -> None:
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered >= self._flush_at:
            await self.flush()

    async def flush(self) -> None:
        """Hand the buffer to the writer thread (opening the file and saving metadata first, if needed).

        The write runs while the next buffer fills: receiving (this thread) and writing (the
        executor's) overlap on two cores. At most one write is in flight, so writes stay in order
        and memory stays at two buffers; ``close()`` waits for it.
        """
        if not self._buffer:
            return
        chunks, size = self._buffer, self._buffered
        self._buffer, self._buffered = [], 0
        await self._wait_for_write()
        try:
            if self._file is None:
                await self._open()
            elif self._seek_first:
                await self._file.seek(self._offset)
            self._seek_first = False
        except OSError as exc:
            raise storage_error(exc, "write", self.path) from exc
        # writelines: each chunk goes to the kernel as it is, without joining them into a new buffer.
        self._writing = asyncio.ensure_future(self._file.writelines(chunks))
        self._offset += size

    async def raw_fd(self) -> int:
        """The open file's descriptor, for writes at offsets from ``position`` on (see ``wrote``)."""
        await self.flush()
        await self._wait_for_write()
        try:
            if self._file is None:
                await self._open()
            await self._file.flush()
        except OSError as exc:
            raise storage_error(exc, "write", self.path) from exc
        fd: int = self._file.fileno()
        return fd

    def wrote(self, n: int) -> None:
        """``n`` more bytes are in the file at ``position``, written through ``raw_fd()``."""
        self._offset += n
        self._seek_first = True

    async def _wait_for_write(self) -> None:
        if self._writing is not None:
            writing, self._writing = self._writing, None
            try:
                await writing
            except OSError as exc:
                raise storage_error(exc, "write", self.path) from exc

    async def _save_meta(self) -> None:
        if self._meta is None:
            return
        try:
            await _a_write_meta(self.meta_path, self._meta.to_json())
        except OSError as exc:
            raise storage_error(exc, "write", self.meta_path) from exc
        self._meta_on_disk = True

    async def _open(self) -> None:
        if self._offset == 0:
            # Truncate first, then describe: a crash between the two leaves an empty file (never
            # resumed), not the bytes of an earlier version under the metadata of this one.
            try:
                self._file = await aiofiles.open(self.path, "wb")
            except FileNotFoundError:  # the first file of a dir= that is not there yet
                await _a_makedirs(self.path.parent, exist_ok=True)
                self._file = await aiofiles.open(self.path, "wb")
            await self._save_meta()
        else:
            self._file = await aiofiles.open(self.path, "r+b")
            await self._file.seek(self._offset)
            await self._file.truncate()

    # --- segmented downloads: pieces written at their offsets into a pre-sized file ---
    async def begin_sparse(self, size: int, meta: ResumeMeta, *, keep: bool) -> None:
        """Prepare a file of ``size`` bytes for ``write_at`` (its bytes kept when ``keep``)."""
        await self._close_handle()
        self._buffer.clear()
        self._buffered = 0
        self._meta = meta
        await self._save_meta()
        try:
            self._fd = await _a_open_sized(self.path, size, keep)
        except OSError as exc:
            raise storage_error(exc, "create", self.path) from exc
        self._offset = size  # the file is complete once every piece is written

    @property
    def sparse_fd(self) -> int:
        """The descriptor of the file ``begin_sparse`` prepared (for writes at offsets)."""
        assert self._fd is not None
        return self._fd

    async def write_at(self, offset: int, data: bytes) -> None:
        try:
            await _a_pwrite_all(self._fd, data, offset)
        except OSError as exc:
            raise storage_error(exc, "write", self.path) from exc

    async def save_meta(self, meta: ResumeMeta) -> None:
        """Record new metadata (a segmented download's finished pieces)."""
        self._meta = meta
        await self._save_meta()

    async def _close_handle(self) -> None:
        try:
            await self._wait_for_write()
        except BaseException:
            if self._file is not None:
                handle, self._file = self._file, None
                await asyncio.shield(handle.close())
            raise
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                await _a_close_fd(fd)
            except OSError as exc:
                raise storage_error(exc, "write", self.path) from exc
        if self._file is not None:
            handle, self._file = self._file, None
            try:
                await handle.close()
            except OSError as exc:
                raise storage_error(exc, "write", self.path) from exc

    async def close(self) -> None:
        """Flush and close, keeping the file for a later resume."""
        try:
            await self.flush()
        finally:
            await self._close_handle()

    async def commit(self, target: Path, *, replace: bool, keep_on_conflict: bool = False) -> bool:
        """Move the complete file to ``target`` atomically.

        Returns False when ``target`` exists and not ``replace``; the temporary file is then removed,
        or, with ``keep_on_conflict``, kept complete so that ``commit`` can be called with another name.
        """
        meta_path = self.meta_path if self._meta_on_disk else None
        try:
            if self._file is None and self._offset == 0:
                data = b"".join(self._buffer)
                self._buffer.clear()
                self._buffered = 0
                # One call in the batch thread (see _batch): the loop's cheapest way to a thread.
                placed = bool(
                    await _batch.run(
                        _write_whole, self.path, data, target, meta_path, replace, keep_on_conflict
                    )
                )
                if not placed and keep_on_conflict:
                    self._offset = len(data)  # on disk now: a second commit moves the file as it is
                return placed
            await self.close()
            placed = bool(
                await _a_place(self.path, target, replace=replace, keep_on_conflict=keep_on_conflict)
            )
            if meta_path is not None and (placed or not keep_on_conflict):
                await _a_discard(self.path, meta_path)
            return placed
        except OSError as exc:
            raise storage_error(exc, "save", target) from exc

    async def discard(self) -> None:
        """Remove the temporary file and its metadata (the next attempt starts from zero)."""
        self._buffer.clear()
        self._buffered = 0
        self._offset = 0
        try:
            await self._close_handle()
        finally:
            try:
                await _a_discard(self.path, self.meta_path)
            except OSError as exc:
                raise storage_error(exc, "remove", self.path) from exc
            self._meta_on_disk = False


# --- uploads ---
# (imports kept here, with the code that needs them, so this section stays self-contained)
import stat  # noqa: E402
from collections.abc import AsyncGenerator  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import aiofiles.threadpool  # noqa: E402

UPLOAD_CHUNK_SIZE = 1024 * 1024


def _probe_upload(path: Path) -> int | None:
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer. Opening (rather than
    # os.access) is what proves readability, whatever the user, ACLs or file system say.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
    finally:
        os.close(fd)
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    # Pipes, sockets and character devices have no size: they are sent chunked.
    return info.st_size if stat.S_ISREG(info.st_mode) else None


_a_probe_upload = aiofiles.os.wrap(_probe_upload)


async def probe_upload(path: Path) -> int | None:
    """The size of ``path`` (None when it is not a regular file), after proving it can be read.

    Raises StorageError for a missing, unreadable or directory path.
    """
    try:
        size: int | None = await _a_probe_upload(path)
    except OSError as exc:
        raise storage_error(exc, "read", path) from exc
    return size


def _open_for_upload(path: Path | None, opened: list[Any]) -> Any:
    handle = open(0, "rb", buffering=0, closefd=False) if path is None else open(path, "rb", buffering=0)  # noqa: SIM115
    opened.append(handle)  # before returning: a cancelled caller never sees the handle
    return handle


_a_open_for_upload = aiofiles.os.wrap(_open_for_upload)


def _close_all(opened: list[Any]) -> None:
    for handle in opened:
        handle.close()


async def read_upload_chunks(
    path: Path | None, *, size: int | None = None, chunk_size: int = UPLOAD_CHUNK_SIZE
) -> AsyncGenerator[bytes, None]:
    """``path`` (None: standard input) in chunks of at most ``chunk_size`` bytes, never more in memory.

    With ``size`` (the length announced as Content-Length), exactly that many bytes are yielded: a
    file that shrank meanwhile raises StorageError (the request would otherwise hang, short of its
    announced length); bytes added meanwhile are not sent. Read errors raise StorageError.
    """
    shown = path if path is not None else Path("<stdin>")
    remaining = size
    # One thread per upload, so its jobs run in order: the close always comes after the last read
    # and after the open, even when the upload is cancelled in the middle of either (aiohttp cancels
    # the body writer as soon as the answer is in). A cancelled aiofiles.open() would leak its file.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asyncdl-upload")
    opened: list[Any] = []
    try:
        raw = await _a_open_for_upload(path, opened, executor=executor)
        # buffering=0: each read goes straight to the OS, without a second copy in a BufferedReader.
        handle = aiofiles.threadpool.wrap(raw, executor=executor)
        while remaining is None or remaining > 0:
            want = chunk_size if remaining is None else min(chunk_size, remaining)
            chunk: bytes = await handle.read(want)
            if not chunk:
                break
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk
    except OSError as exc:
        raise storage_error(exc, "read", shown) from exc
    finally:
        executor.submit(_close_all, opened)
        executor.shutdown(wait=False)  # the close still runs; nothing waits for it here
    if remaining:
        raise StorageError(f"{shown} shrank during the upload: {remaining} of {size} bytes missing")
