"""Streaming uploads: one file or a tree of files, as PUT, POST or multipart/form-data.

The body is read from disk chunk by chunk while it is sent (``_files.read_upload_chunks`` feeding
``_http.send_upload``), so memory stays flat whatever the file size. A plain HTTP upload cannot
resume: every attempt (and every 307/308 redirect) re-sends the file from its first byte. A POST is
not idempotent, so it is retried only when the caller says so (``retry_post``).

Like downloads, an upload ends as a :class:`Result`; exceptions are for usage errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TypeVar
from urllib.parse import quote

from ._exceptions import DownloadError, StorageError, UploadError, UsageError
from ._files import probe_upload, read_upload_chunks
from ._http import Session, UploadBody, make_session, send_upload
from ._models import Result, Status
from ._pool import bounded_map
from ._progress import Progress
from ._retry import RetryPolicy
from ._urls import redact_text, redact_url, usable_url_problem

DEFAULT_UPLOAD_JOBS = 4
DEFAULT_UPLOAD_RETRIES = 5
DEFAULT_UPLOAD_TIMEOUT_S = 30.0
METHODS = ("PUT", "POST")
STDIN_NAME = "stdin"

T = TypeVar("T")

PathLike = str | os.PathLike[str]
HeaderInput = Mapping[str, str] | Iterable[tuple[str, str]] | None


def _pairs(items: HeaderInput) -> tuple[tuple[str, str], ...]:
    if items is None:
        return ()
    pairs = items.items() if isinstance(items, Mapping) else items
    return tuple((str(k), str(v)) for k, v in pairs)


@dataclass(frozen=True)
class UploadSettings:
    """What every upload of a run shares. Build it with :func:`make_settings` (which validates)."""

    method: str = "PUT"
    form_field: str | None = None
    fields: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    retry_post: bool = False
    timeout: float | None = DEFAULT_UPLOAD_TIMEOUT_S


def make_settings(
    *,
    method: str = "PUT",
    form_field: str | None = None,
    fields: HeaderInput = None,
    headers: HeaderInput = None,
    retries: int = DEFAULT_UPLOAD_RETRIES,
    timeout: float | None = DEFAULT_UPLOAD_TIMEOUT_S,
    retry_post: bool = False,
) -> UploadSettings:
    """Validated settings from the options of :func:`upload`; UsageError for a bad one."""
    verb = method.upper()
    if verb not in METHODS:
        raise UsageError(f"upload method must be PUT or POST, not {method!r}")
    if form_field is not None and not form_field:
        raise UsageError("the form field name must not be empty")
    field_pairs = _pairs(fields)
    if field_pairs and form_field is None:
        raise UsageError("form fields need a multipart upload (--form FIELD / form_field=)")
    header_pairs = _pairs(headers)
    if form_field is not None and any(n.lower() == "content-type" for n, _ in header_pairs):
        raise UsageError("a Content-Type header cannot be combined with a multipart upload (--form)")
    if retries < 0:
        raise UsageError("retries must be 0 or more")
    if timeout is not None and not timeout > 0:
        raise UsageError("timeout must be positive")
    return UploadSettings(
        method=verb,
        form_field=form_field,
        fields=field_pairs,
        headers=header_pairs,
        retry=RetryPolicy(retries=retries),
        retry_post=retry_post,
        timeout=timeout,
    )


@dataclass(frozen=True)
class UploadItem:
    """One file to send: ``path`` (None: standard input) to ``url``; ``name`` is shown and used as
    the multipart file name. ``problem`` fails the item without a request (an unreadable directory)."""

    path: Path | None
    url: str
    name: str
    problem: str | None = None

    @property
    def shown_path(self) -> str:
        return "-" if self.path is None else str(self.path)


class Uploader:
    """Runs uploads over one session, with shared settings and progress."""

    def __init__(
        self,
        session: Session,
        settings: UploadSettings,
        *,
        progress: Progress,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.session = session
        self.settings = settings
        self.progress = progress
        self._sleep = sleep
        self._rng = rng

    async def run(self, item: UploadItem) -> Result:
        """Upload ``item`` with retries; its Result (never raises for a failed upload)."""
        if item.problem is not None:
            result = self._result(item, Status.FAILED, 0, 0, item.problem)
            self.progress.finish(None, result)
            return result
        key = self.progress.start(redact_url(item.url), item.name)
        try:
            result = await self._attempts(item, key)
        except BaseException:
            self.progress.drop(key)
            raise
        self.progress.finish(key, result)
        return result

    def _result(
        self, item: UploadItem, status: Status, sent: int, attempts: int, error: str | None
    ) -> Result:
        return Result(
            url=redact_url(item.url),
            path=item.shown_path,
            status=status,
            bytes=sent,
            attempts=attempts,
            error=None if error is None else redact_text(error, item.url),
        )

    async def _attempts(self, item: UploadItem, key: int) -> Result:
        settings = self.settings
        progress = self.progress
        try:
            size = await probe_upload(item.path) if item.path is not None else None
        except StorageError as exc:
            return self._result(item, Status.FAILED, 0, 0, str(exc))
        body = UploadBody(
            chunks=functools.partial(read_upload_chunks, item.path, size=size),
            size=size,
            filename=item.name,
            replayable=item.path is not None,
            form_field=settings.form_field,
            fields=settings.fields,
        )
        # Standard input cannot be read twice; a POST may have been acted on even when it failed.
        may_retry = body.replayable and (settings.method != "POST" or settings.retry_post)
        attempts = 0
        sent = 0

        def on_send() -> None:
            nonlocal sent
            sent = 0
            progress.begin(key, done=0, total=size)

        def on_chunk(n: int) -> None:
            nonlocal sent
            sent += n
            progress.advance(key, n)

        while True:
            attempts += 1
            try:
                await send_upload(
                    self.session,
                    item.url,
                    body,
                    method=settings.method,
                    headers=settings.headers,
                    stall_timeout_s=settings.timeout,
                    on_send=on_send,
                    on_chunk=on_chunk,
                )
            except (DownloadError, UploadError) as exc:
                delay = settings.retry.delay(attempts, exc, random=self._rng) if may_retry else None
                if delay is None:
                    return self._result(item, Status.FAILED, sent, attempts, str(exc))
                await self._sleep(delay)
                continue
            return self._result(item, Status.OK, sent, attempts, None)


# --- planning: which file goes to which URL (no network) -----------------------------------------


def check_url(url: str, *, prefix: bool) -> None:
    """UsageError unless ``url`` is a usable http(s) URL (ending in ``/`` when a ``prefix``)."""
    problem = usable_url_problem(url)
    if problem:
        raise UsageError(f"{problem}: {redact_url(url)}")
    if prefix and not url.endswith("/"):
        raise UsageError(f"several files or a directory need a URL prefix ending in '/': {redact_url(url)}")


def check_sources(sources: Sequence[PathLike]) -> list[Path]:
    """The sources as paths; UsageError for one that does not exist (nothing has started yet)."""
    paths = [Path(source) for source in sources]
    for path in paths:
        if not os.path.lexists(path):
            raise UsageError(f"cannot read {path}: No such file or directory")
    return paths


def _url_for(prefix: str, relative: PurePosixPath) -> str:
    # Encode the file system bytes, so that any name (even one that is not UTF-8) maps to a URL.
    return prefix + quote(os.fsencode(str(relative)), safe="/")


def _walk(directory: Path, relative: PurePosixPath, prefix: str) -> Iterator[UploadItem]:
    """Files under ``directory`` in name order, lazily (one directory listing in memory at a time)."""
    try:
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda e: e.name)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        url = _url_for(prefix, relative) + "/"
        yield UploadItem(
            directory, url, relative.name, problem=f"cannot read directory {directory}: {reason}"
        )
        return
    for entry in entries:
        path = directory / entry.name
        rel = relative / entry.name
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(path, rel, prefix)
        elif entry.is_symlink() and entry.is_dir():
            # Not followed: a link may point back up the tree.
            problem = f"{path} is a symbolic link to a directory: not followed"
            yield UploadItem(path, _url_for(prefix, rel), entry.name, problem=problem)
        elif entry.is_file() or entry.is_symlink():
            yield UploadItem(path, _url_for(prefix, rel), entry.name)  # a dangling link fails when read
        else:
            # Reading a FIFO or a device found in a tree could block or never end.
            problem = f"{path} is not a regular file"
            yield UploadItem(path, _url_for(prefix, rel), entry.name, problem=problem)


def plan_uploads(paths: Sequence[Path], prefix: str) -> Iterator[UploadItem]:
    """Each file of ``paths`` with its URL: ``prefix`` plus its relative path, percent-encoded.

    A file goes to ``prefix + name``; a directory's files to ``prefix + dirname/sub/path`` (as
    ``cp -r dir dest/`` would place them). Directories are walked lazily, in name order; symbolic
    links to directories are not followed.
    """
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            base = path.name or path.resolve().name
            yield from _walk(path, PurePosixPath(base) if base else PurePosixPath(), prefix)
        else:
            name = path.name or str(path)
            yield UploadItem(path, _url_for(prefix, PurePosixPath(name)), name)


def _same(item: T) -> T:
    return item


@contextlib.asynccontextmanager
async def _session(connections: int, timeout: float | None) -> AsyncGenerator[Session, None]:
    session = make_session(connections=connections, stall_timeout_s=timeout)
    try:
        yield session
    finally:
        await session.close()


async def stream_uploads(
    items: Iterable[UploadItem],
    settings: UploadSettings,
    *,
    jobs: int = DEFAULT_UPLOAD_JOBS,
    progress: Progress | None = None,
) -> AsyncGenerator[Result, None]:
    """Upload ``items`` with ``jobs`` at once over one connection pool; results as they finish."""
    if jobs < 1:
        raise UsageError("jobs must be at least 1")
    async with _session(jobs, settings.timeout) as session:
        uploader = Uploader(session, settings, progress=progress or Progress())

        async with contextlib.aclosing(bounded_map(items, _same, uploader.run, workers=jobs)) as results:
            async for result in results:
                yield result


# --- public -----------------------------------------------------------------------------------------


async def upload(
    path: PathLike,
    url: str,
    *,
    method: str = "PUT",
    form_field: str | None = None,
    fields: HeaderInput = None,
    headers: HeaderInput = None,
    retries: int = DEFAULT_UPLOAD_RETRIES,
    timeout: float | None = DEFAULT_UPLOAD_TIMEOUT_S,
    retry_post: bool = False,
    progress: Progress | None = None,
) -> Result:
    """Stream the file at ``path`` to ``url``; a :class:`Result` (``ok`` on a 2xx answer).

    ``method`` is ``"PUT"`` or ``"POST"``; with ``form_field`` the body is multipart/form-data with
    the file under that field and ``fields`` (a mapping or pairs) before it. ``headers`` go to the
    URL's origin only. ``retries`` counts attempts after the first, on connection errors, stalls and
    408/425/429/5xx (honouring Retry-After); each one re-sends the whole file, since HTTP uploads
    cannot resume, and a POST is retried only with ``retry_post=True``. ``timeout`` is the stall
    timeout in seconds. ``progress`` is updated like a download's. A failed upload (an unreadable
    file included) is a Result whose ``error`` holds the status and the start of the server's
    answer; bad options or URLs raise UsageError.
    """
    settings = make_settings(
        method=method,
        form_field=form_field,
        fields=fields,
        headers=headers,
        retries=retries,
        timeout=timeout,
        retry_post=retry_post,
    )
    check_url(url, prefix=False)
    local = Path(path)
    item = UploadItem(local, url, local.name or str(local))
    async with _session(1, settings.timeout) as session:
        return await Uploader(session, settings, progress=progress or Progress()).run(item)


async def upload_many(
    paths: Iterable[PathLike],
    url_prefix: str,
    *,
    jobs: int = DEFAULT_UPLOAD_JOBS,
    method: str = "PUT",
    form_field: str | None = None,
    fields: HeaderInput = None,
    headers: HeaderInput = None,
    retries: int = DEFAULT_UPLOAD_RETRIES,
    timeout: float | None = DEFAULT_UPLOAD_TIMEOUT_S,
    retry_post: bool = False,
    progress: Progress | None = None,
) -> list[Result]:
    """Upload files and directory trees, ``jobs`` at once, each to ``url_prefix`` + its relative path.

    A file goes to ``url_prefix + name``, the files of a directory to ``url_prefix + dir/sub/name``
    (percent-encoded). ``url_prefix`` must end in ``/``. Results come in walk order. The other
    options are those of :func:`upload`. A path that does not exist raises UsageError before any
    upload starts; a file that cannot be read is a failed Result.
    """
    settings = make_settings(
        method=method,
        form_field=form_field,
        fields=fields,
        headers=headers,
        retries=retries,
        timeout=timeout,
        retry_post=retry_post,
    )
    check_url(url_prefix, prefix=True)
    if jobs < 1:
        raise UsageError("jobs must be at least 1")
    sources = check_sources(list(paths))
    async with _session(jobs, settings.timeout) as session:
        uploader = Uploader(session, settings, progress=progress or Progress())

        async def work(numbered: tuple[int, UploadItem]) -> tuple[int, Result]:
            return numbered[0], await uploader.run(numbered[1])

        pool = bounded_map(enumerate(plan_uploads(sources, url_prefix)), _same, work, workers=jobs)
        async with contextlib.aclosing(pool) as results:
            collected = [pair async for pair in results]
    collected.sort(key=lambda pair: pair[0])
    return [result for _, result in collected]
