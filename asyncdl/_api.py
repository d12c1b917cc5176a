"""The composition root: Downloader owns the session, the pool, the limiter and the progress."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Mapping
from pathlib import Path
from types import TracebackType

from ._cookies import Cookies
from ._download import Engine, Job, Settings, host_rules
from ._exceptions import UsageError
from ._files import ensure_dir
from ._hosts import Scheduler
from ._http import make_session, read_ca_certificates, set_connection_limit
from ._models import BadEntry, Checksum, Request, Result, header_pairs
from ._pool import Pool
from ._procs import DEFAULT_SHARD_SIZE as DEFAULT_LOCAL_SHARD_SIZE
from ._procs import ProcessCluster
from ._progress import Progress
from ._queue import DownloadHandle, LiveQueue
from ._ratelimit import RateLimiter, parse_rate, parse_size
from ._ray import RayCluster
from ._report import ReportWriter
from ._retry import RetryPolicy, parse_statuses
from ._shards import DEFAULT_SHARD_SIZE, ShardCluster, WorkerConfig

RequestLike = str | Request
DEFAULT_JOBS = 16
DEFAULT_RETRIES = 5
DEFAULT_TIMEOUT_S = 30.0


class Downloader:
    """Downloads many files at once into ``dest`` through one connection pool.

    ::

        async with asyncdl.Downloader(dest="out", jobs=16) as dl:
            one = await dl.download("https://example.org/a.iso", out="a.iso")
            async for result in dl.stream(urls):  # results as they finish
                ...

    Options (keyword-only) mirror the command line: ``jobs`` (-j), ``connections`` (-x),
    ``retries``, ``timeout`` (stall timeout in seconds, --timeout), ``limit_rate`` (bytes/s or
    ``"10M"``), ``headers`` (sent with every request), ``overwrite``. ``progress`` is the
    :class:`Progress` to update (one is made when not given); read it with ``dl.progress.snapshot()``.
    ``retry_policy`` replaces the default backoff (it then also decides the number of retries).
    ``report`` names a JSON Lines file that gets one object per download (as --report).

    Sent with every request (a Request's own options come first): ``user_agent`` (default
    ``asyncdl/VERSION``), ``referer``, ``cookies`` (the path of a Netscape ``cookies.txt``, as
    --load-cookies: each cookie only where its domain, path, secure flag and expiry allow). TLS:
    ``ca_certificate`` (a PEM file: verify servers against these CAs alone, as --ca-certificate),
    ``verify=False`` (no verification at all, as --no-check-certificate).
    Many hosts: ``max_per_host`` caps the downloads at once to one origin (default: only ``jobs``);
    ``lowest_speed_limit`` (bytes/s or ``"1K"``) cuts an attempt slower than that over ``timeout``
    seconds and retries it from the bytes on disk (or hands it to the next mirror);
    ``max_filesize`` (bytes or ``"500M"``) fails a larger file at once; ``retry_on`` (``"403,520-524"``
    or statuses) adds statuses to retry. A download waiting for its next attempt holds no slot, and
    an origin that rate-limits, refuses or stalls is held back as a whole (see ``_hosts``).
    ``jobs`` and ``limit_rate`` may be changed while downloads run (``dl.jobs = 4``,
    ``dl.limit_rate = "2M"``).

    The live queue: ``handle = dl.add(url_or_request)`` queues one download while others run and
    returns a :class:`DownloadHandle` (``status``, ``progress``, ``pause()``, ``resume()``,
    ``cancel()``, ``await handle``); ``dl.queue`` reorders waiting items (``move``) and tells
    listeners of starts, pauses and ends. Its downloads share the scheduler with ``download()`` and
    ``stream()``.

    Scale-out: ``ray="local"`` (start Ray here), ``"auto"`` (the running cluster) or
    ``"ray://HOST:PORT"`` runs the downloads on ``workers`` Ray actors (default: one per node),
    each a downloader with its own ``jobs`` pool, handed ``shard_size`` requests at a time; the
    ``limit_rate`` cap is shared evenly between them. ``dest`` must be at the same path on every
    node. Needs ``pip install 'asyncdl[ray]'``.

    Several cores of this machine: ``processes=N`` runs the downloads in N worker processes, each a
    downloader with its own ``jobs`` pool, handed ``shard_size`` requests at a time (default 100);
    this process reads the input, decides the names and keeps the progress and the report. It pays
    off for lists of many small files, where one event loop keeps one core busy.
    """

    def __init__(
        self,
        dest: str | Path = ".",
        *,
        jobs: int = DEFAULT_JOBS,
        connections: int = 1,
        retries: int = DEFAULT_RETRIES,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        limit_rate: int | str | None = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        overwrite: bool = False,
        progress: Progress | None = None,
        retry_policy: RetryPolicy | None = None,
        ray: str | None = None,
        workers: int | None = None,
        shard_size: int | None = None,
        processes: int | None = None,
        report: str | Path | None = None,
        user_agent: str | None = None,
        referer: str | None = None,
        cookies: str | os.PathLike[str] | Cookies | None = None,
        ca_certificate: str | os.PathLike[str] | None = None,
        verify: bool = True,
        max_per_host: int | None = None,
        lowest_speed_limit: int | str | None = None,
        max_filesize: int | str | None = None,
        retry_on: str | Iterable[int] | None = None,
    ) -> None:
        if jobs < 1:
            raise UsageError("jobs must be at least 1")
        if connections < 1:
            raise UsageError("connections must be at least 1")
        if retries < 0:
            raise UsageError("retries must be 0 or more")
        if timeout is not None and timeout <= 0:
            raise UsageError("timeout must be positive")
        if max_per_host is not None and max_per_host < 1:
            raise UsageError("max_per_host must be at least 1")
        self.dest = Path(dest)
        self._jobs = jobs
        self.connections = connections
        self.timeout = timeout
        rate = parse_rate(limit_rate) if isinstance(limit_rate, str) else limit_rate
        floor = (
            parse_rate(lowest_speed_limit, what="speed limit")
            if isinstance(lowest_speed_limit, str)
            else lowest_speed_limit
        )
        size_cap = parse_size(max_filesize) if isinstance(max_filesize, str) else max_filesize
        if floor is not None and floor <= 0:
            raise UsageError("lowest_speed_limit must be positive")
        if size_cap is not None and size_cap <= 0:
            raise UsageError("max_filesize must be positive")
        policy = retry_policy or RetryPolicy(retries=retries)
        if retry_on is not None:
            extra = parse_statuses(retry_on) if isinstance(retry_on, str) else frozenset(retry_on)
            policy = dataclasses.replace(policy, retry_on=policy.retry_on | extra)
        self.settings = Settings(
            dest=self.dest,
            retry=policy,
            overwrite=overwrite,
            headers=header_pairs(headers),
            connections=connections,
            user_agent=user_agent,
            referer=referer,
            cookies=cookies if isinstance(cookies, Cookies) or cookies is None else Cookies.load(cookies),
            ca_certificates=None if ca_certificate is None else read_ca_certificates(ca_certificate),
            verify=verify,
            max_per_host=max_per_host,
            lowest_speed_bps=floor,
            speed_window_s=timeout if timeout is not None else DEFAULT_TIMEOUT_S,
            max_filesize=size_cap,
        )
        self.progress = progress or Progress()
        self._limiter = RateLimiter(rate) if rate else None
        self._engine: Engine | None = None
        self._pool: Pool[Result] | None = None
        self._queue: LiveQueue | None = None
        self._report_path = report
        self._report: ReportWriter | None = None
        self._cluster: ShardCluster | None = None
        config = WorkerConfig(
            # Relative paths mean the same on every node: workers start in this directory.
            cwd=os.getcwd(),
            dest=str(self.dest),
            jobs=jobs,
            connections=connections,
            timeout=timeout,
            limit_rate=rate,
            settings=self.settings,
        )
        if ray is not None:
            if processes is not None:
                raise UsageError("processes and ray cannot be used together (--processes, --ray)")
            self._cluster = RayCluster(
                ray,
                workers=workers,
                shard_size=DEFAULT_SHARD_SIZE if shard_size is None else shard_size,
                config=config,
                progress=self.progress,
            )
        elif workers is not None:
            raise UsageError("workers needs ray (--ray)")
        elif processes is not None:
            self._cluster = ProcessCluster(
                processes,
                shard_size=DEFAULT_LOCAL_SHARD_SIZE if shard_size is None else shard_size,
                config=config,
                progress=self.progress,
            )
        elif shard_size is not None:
            raise UsageError("shard_size needs ray or processes (--ray, --processes)")

    @property
    def jobs(self) -> int:
        """Downloads at once (-j); may be changed while downloads run (not on workers)."""
        return self._jobs

    @jobs.setter
    def jobs(self, value: int) -> None:
        if value < 1:
            raise UsageError("jobs must be at least 1")
        self._jobs = value
        if self._engine is not None:
            set_connection_limit(self._engine.session, value * self.connections)
        if self._pool is not None:
            self._pool.jobs = value  # the live queue's downloads and every stream's

    async def __aenter__(self) -> Downloader:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def open_report(self) -> None:
        """Open the report file now (``open()`` does it too); UsageError when it cannot be written."""
        if self._report_path is not None and self._report is None:
            self._report = ReportWriter(self._report_path)

    def _record(self, result: Result) -> Result:
        if self._report is not None:
            self._report.write(result)
        return result

    async def open(self) -> None:
        """Create the destination and the session (``async with`` does this for you)."""
        if self._engine is not None:
            return
        self.open_report()
        await ensure_dir(self.dest)
        if self._cluster is not None:
            await self._cluster.open()  # the workers own the sessions
            return
        session = make_session(
            connections=self.jobs * self.connections,
            stall_timeout_s=self.timeout,
            ca_certificates=self.settings.ca_certificates,
            verify=self.settings.verify,
        )
        self._engine = Engine(session, self.settings, progress=self.progress, limiter=self._limiter)
        self._pool = Pool(Scheduler(jobs=self.jobs, rules=host_rules(self.settings)))
        self._queue = LiveQueue(self._engine, self._pool)

    async def aclose(self) -> None:
        """Stop the live queue's downloads (bytes kept), close the connection pool. Safe to call twice."""
        engine, self._engine = self._engine, None
        pool, self._pool = self._pool, None
        queue, self._queue = self._queue, None
        report, self._report = self._report, None
        try:
            if queue is not None:
                await queue.aclose()  # running downloads stop, their bytes kept
            if pool is not None:
                await pool.aclose()
            if engine is not None:
                await engine.session.close()
        finally:
            if report is not None:
                report.close()
            if self._cluster is not None:
                await self._cluster.aclose()

    @property
    def limit_rate(self) -> int | None:
        """The cap on the overall byte rate (bytes/s; None: no cap). Can be changed while running."""
        return int(self._limiter.rate_bps) if self._limiter is not None else None

    @limit_rate.setter
    def limit_rate(self, value: int | str | None) -> None:
        rate = parse_rate(value) if isinstance(value, str) else value
        if self._limiter is not None:
            self._limiter.change(rate)  # also shortens or stretches the waits under way
        if not rate:
            self._limiter = None
        elif self._limiter is None:
            self._limiter = RateLimiter(rate)
        if self._engine is not None:
            # Bodies already moved by splice(2) are not paced: the cap holds from their next attempt.
            self._engine.limiter = self._limiter

    # --- the live queue ---
    @property
    def queue(self) -> LiveQueue:
        """The live queue of :meth:`add` (waiting, paused and active downloads)."""
        if self._queue is None:
            raise RuntimeError("use 'async with Downloader(...)' (or await open()) before adding")
        return self._queue

    def add(self, url: RequestLike, *, position: int | None = None, paused: bool = False) -> DownloadHandle:
        """Queue one URL or Request while other downloads run; its :class:`DownloadHandle`.

        It goes to the Downloader's scheduler in queue order, beside the downloads of ``download()``
        and ``stream()`` (``position``: its place among the waiting ones, default last; ``paused``: it
        waits until ``handle.resume()``).
        """
        if self._cluster is not None:
            raise UsageError("add() runs downloads in this process: not with ray or processes")
        return self.queue.add(Request.coerce(url), position=position, paused=paused)

    def _require_engine(self) -> tuple[Engine, Pool[Result]]:
        if self._engine is None or self._pool is None:
            raise RuntimeError("use 'async with Downloader(...)' (or await open()) before downloading")
        return self._engine, self._pool

    async def download(
        self,
        url: RequestLike,
        *,
        out: str | None = None,
        dir: str | None = None,  # the list format's name
        checksum: str | Checksum | None = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        mirrors: Iterable[str] = (),
    ) -> Result:
        """Download one URL (or Request); concurrent calls share the ``jobs`` limit."""
        request = Request.coerce(url)
        if out is not None or dir is not None or checksum is not None or headers is not None or mirrors:
            request = dataclasses.replace(
                request,
                mirrors=(*request.mirrors, *mirrors),
                out=out if out is not None else request.out,
                dir=dir if dir is not None else request.dir,
                checksum=Checksum.parse(checksum)
                if isinstance(checksum, str)
                else checksum or request.checksum,
                headers=(*request.headers, *header_pairs(headers)),
            )
        if self._cluster is not None:
            async with contextlib.aclosing(self._cluster.stream([request])) as results:
                async for result in results:
                    return self._record(result)
            raise AssertionError("a run of one request on workers gave no result")
        engine, pool = self._require_engine()
        # Planned now (its name decided in call order), queued behind the downloads waiting already.
        submission = pool.submit(engine.job(engine.plan(request)))
        return self._record(await submission.result())

    async def stream(
        self, requests: Iterable[RequestLike | BadEntry] | AsyncIterable[RequestLike | BadEntry]
    ) -> AsyncGenerator[Result, None]:
        """Download every item with ``jobs`` at once; yield results as they finish.

        The input is read lazily: an item when a slot is free, and further ahead (through a bounded
        window) only when the items already read belong to origins that cannot take more now, so a
        list of millions needs no more memory than a list of ten. Several streams and single
        downloads at once share the ``jobs`` slots. On Ray or worker processes, results come back a
        shard at a time.
        """
        if self._cluster is not None:
            async with contextlib.aclosing(self._cluster.stream(requests)) as cluster_results:
                async for result in cluster_results:
                    yield self._record(result)
            return
        engine, pool = self._require_engine()

        def prepare(item: RequestLike | BadEntry) -> Job:
            return engine.job(engine.plan(item if isinstance(item, BadEntry) else Request.coerce(item)))

        async with contextlib.aclosing(pool.stream(requests, prepare)) as results:
            async for result in results:
                yield self._record(result)


async def download_many(
    urls: Iterable[RequestLike] | AsyncIterable[RequestLike],
    dest: str | Path = ".",
    **options: object,
) -> list[Result]:
    """Download every URL or Request into ``dest``; the results in input order.

    Takes the options of :class:`Downloader`. For huge inputs prefer ``Downloader.stream``, which
    does not keep a result per URL.
    """
    order: dict[int, int] = {}
    results: list[tuple[int, Result]] = []

    def number(item: RequestLike) -> Request:
        # A fresh object per input, so that a Request given twice still maps back to both places.
        request = dataclasses.replace(Request.coerce(item))
        order[id(request)] = len(order) + len(results)
        return request

    async def numbered() -> AsyncIterator[Request | BadEntry]:
        if isinstance(urls, AsyncIterable):
            async for item in urls:
                yield number(item)
        else:
            for item in urls:
                yield number(item)

    async with Downloader(dest, **options) as dl:  # type: ignore[arg-type]
        async for result in dl.stream(numbered()):
            assert result.request is not None
            results.append((order.pop(id(result.request)), result))
    results.sort(key=lambda pair: pair[0])
    return [result for _, result in results]
