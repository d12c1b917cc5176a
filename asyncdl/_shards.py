"""Runs of many processes: one driver hands out shards of planned downloads to long-lived workers.

The driver side of a scale-out run, whatever carries the shards: Ray actors on a cluster
(``_ray``) or worker processes on this machine (``_procs``). The worker side, DownloadWorker, is
one downloader (session, -j pool, rate share) reused shard after shard. How a run goes::

    requests (read lazily) -> plan names here, in input order -> shards of shard_size plans
      -> at most IN_FLIGHT_PER_WORKER shards per worker at once (back-pressure: the input is
         read only as fast as the workers finish shards)
      -> DownloadWorker.run_shard -> one compact record per download
      -> Results here, with ``worker`` and ``shard``; one Progress for the whole run

Names known before the request (``out=``, the URL's last segment) are decided here with the run's
NameRegistry, exactly as a local run decides them, so they are distinct across workers without any
lock on the workers' side. Names decided on a worker (Content-Disposition) use the downloader's
shared-destination mode: a commit that finds the name taken takes the next suffix, and the final
name is recorded beside the temporary file (see ``Settings.shared_dest``).

Faults: a shard whose worker died (process killed, node lost) is handed out again, to the restarted
worker or another one; the plans are the same, so the same temporary files are resumed and complete
targets skipped, and every download is reported exactly once (records come back per shard, and a
failed shard returns none). Ctrl-C on the driver: each worker cancels its shards and returns once
their downloads have ended (the bytes received so far flushed to the temporary files, kept for
resume), then the workers are stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import socket
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._download import Engine, Job, JobWrapper, Plan, Settings, host_rules, plain_name, plan_download
from ._exceptions import AsyncdlError, StorageError, UsageError
from ._files import ensure_dir
from ._hosts import Retry, Scheduler
from ._http import make_session
from ._models import BadEntry, Request, Result, Status
from ._naming import NameRegistry
from ._pool import Pool
from ._progress import ActiveDownload, Progress
from ._ratelimit import RateLimiter
from ._urls import redact_url

# Two shards per worker: while one drains its last slow downloads the next already fills the -j pool,
# so a worker never idles between shards; more would only hold plans in memory.
IN_FLIGHT_PER_WORKER = 2
DEFAULT_SHARD_SIZE = 1000
# A restarted worker takes the shards of its dead predecessor; a shard that killed its worker this
# many times fails instead of taking the run down with it.
WORKER_MAX_RESTARTS = 4
MAX_SHARD_TRIES = 3
ACTIVE_SHOWN_PER_WORKER = 12
# On Ctrl-C, how long the workers get to close their temporary files before they are killed.
CANCEL_GRACE_S = 3.0


class WorkerLost(Exception):
    """A worker died while it had this call (its process ended or its node was lost).

    ``gone``: it will not come back (its restarts are used up); else a restarted worker takes calls.
    """

    def __init__(self, message: str, *, gone: bool) -> None:
        super().__init__(message)
        self.gone = gone


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker needs to build its downloader (shipped once, when the actor starts)."""

    cwd: str  # the driver's working directory: a relative dest means the same on every node
    dest: str
    jobs: int
    connections: int
    timeout: float | None
    limit_rate: int | None  # this worker's share of the run's cap
    settings: Settings


# What crosses the wire, per shard rather than per URL (a list of millions is mostly plain URLs):
#
# driver -> worker, ShardSpec: (urls, names, extras, tries, number). A plain request (only a URL, see
#   plain_name) is its URL and the name planned for it in dest; anything else (out=, dir=,
#   mirrors, checksum, headers, a bad entry) is sent as its whole Plan in ``extras``, by index
#   (its urls/names entries are then ""). ``tries``: how many times the shard was handed out
#   before (a worker died with it); a retried shard asks the disk what its dead worker left.
#   ``number``: the shard's number in the run (with ``tries``, how a worker names what it finished).
# worker -> driver, ShardAnswer: (statuses, sizes, attempts, errors, paths, incarnation,
#   bytes_done): one status letter per download ("o", "s", "f"), its bytes and attempts; the
#   errors by index; the paths that differ from the planned target (a Content-Disposition name,
#   or None), by index; who answered and its cumulative bytes.
ShardSpec = tuple[list[str], list[str], dict[int, Plan], int, int]
ShardAnswer = tuple[str, list[int], list[int], dict[int, str], dict[int, str | None], str, int]
ActiveRecord = tuple[str, str, int, int | None]
# worker -> driver, for the live view and the watchdog: (incarnation, bytes_done, some active
#   downloads, the (number, tries) of the shards it finished last).
WorkerStats = tuple[str, int, list[ActiveRecord], list[tuple[int, int]]]
# Shards a worker remembers having finished (the driver needs the last few only).
FINISHED_REMEMBERED = 64

_LETTER = {Status.OK: "o", Status.SKIPPED: "s", Status.FAILED: "f"}
_STATUS = {letter: status for status, letter in _LETTER.items()}


class DownloadWorker:
    """One downloader (session, -j pool, rate share) reused for every shard it gets.

    Its methods are coroutines: several shards share one event loop and one connection pool. Ray
    makes it an async actor (``ray.remote(DownloadWorker)``); a worker process serves it over pipes.
    """

    def __init__(self, config: WorkerConfig) -> None:
        with contextlib.suppress(OSError):  # a node without that directory: dest must be absolute
            os.chdir(config.cwd)
        self.config = config
        self.dest = Path(config.dest)
        self.progress = Progress()
        # Other workers write into the same directory (see Settings.shared_dest).
        self.settings = dataclasses.replace(config.settings, shared_dest=True)
        self._limiter = RateLimiter(config.limit_rate) if config.limit_rate else None
        self._engine: Engine | None = None
        # The -j downloads and the per-origin rules, shared by every shard this worker runs at once.
        self._pool: Pool[tuple[int, Result]] | None = None
        self.incarnation = f"{os.getpid()}-{id(self)}"
        self._shards: set[asyncio.Task[Any]] = set()  # the shards running now (close stops them)
        self._finished: deque[tuple[int, int]] = deque(maxlen=FINISHED_REMEMBERED)

    async def run_shard(self, spec: ShardSpec) -> ShardAnswer:
        """Download every request of the shard; compact results in shard order (see ShardSpec)."""
        plans = self.plans(spec)
        try:
            engine = await self._open()  # once: the session lives as long as the worker
        except StorageError as exc:
            # This node cannot write the output directory: its downloads fail, saying where.
            error = f"{exc} (on node {socket.gethostname()})"
            n = len(plans)
            return "f" * n, [0] * n, [0] * n, dict.fromkeys(range(n), error), dict.fromkeys(range(n)), "", 0
        results: list[Result | None] = [None] * len(plans)
        task = asyncio.current_task()
        if task is not None:
            self._shards.add(task)
            task.add_done_callback(self._shards.discard)

        # A first try answers "is it there already?" from the directory listing, as a local run
        # does (the names are the driver's, distinct); a retried shard's dead worker may have
        # written its files since the listing was taken.
        recheck = spec[3] > 0

        def prepare(item: tuple[int, Plan]) -> _Numbered:
            index, plan = item
            return _Numbered(engine.job(plan, recheck=recheck), index)

        assert self._pool is not None
        async with contextlib.aclosing(self._pool.stream(enumerate(plans), prepare)) as done:
            async for index, ended in done:
                results[index] = ended
        statuses: list[str] = []
        sizes: list[int] = []
        attempts: list[int] = []
        errors: dict[int, str] = {}
        paths: dict[int, str | None] = {}
        for index, (plan, result) in enumerate(zip(plans, results, strict=True)):
            assert result is not None
            statuses.append(_LETTER[result.status])
            sizes.append(result.bytes)
            attempts.append(result.attempts)
            if result.error is not None:
                errors[index] = result.error
            if result.path != planned_path(plan):
                paths[index] = result.path
        self._finished.append((spec[4], spec[3]))
        return "".join(statuses), sizes, attempts, errors, paths, self.incarnation, self.progress.bytes_done

    async def _open(self) -> Engine:
        if self._engine is None:
            await ensure_dir(self.dest)
        if self._engine is None:  # the shards that arrive together share one engine and one pool
            config = self.config
            session = make_session(
                connections=config.jobs * config.connections,
                stall_timeout_s=config.timeout,
                ca_certificates=self.settings.ca_certificates,
                verify=self.settings.verify,
            )
            self._engine = Engine(session, self.settings, progress=self.progress, limiter=self._limiter)
            self._pool = Pool(Scheduler(jobs=config.jobs, rules=host_rules(self.settings)))
        return self._engine

    def plans(self, spec: ShardSpec) -> list[Plan]:
        """The Plans of a shard, rebuilt from what the driver sent."""
        urls, names, extras, _tries, _number = spec
        dest = self.dest
        plans: list[Plan] = []
        for index, (url, name) in enumerate(zip(urls, names, strict=True)):
            extra = extras.get(index) if extras else None
            if extra is not None:
                plans.append(extra)
            else:
                plans.append(Plan(Request(url), dest, name, False, f"{url}\n{name}"))
        return plans

    async def stats(self) -> WorkerStats:
        """Who am I, bytes received so far, some active downloads, the shards finished last."""
        active = sorted(self.progress.active.values(), key=lambda e: e.key)[:ACTIVE_SHOWN_PER_WORKER]
        return (
            self.incarnation,
            self.progress.bytes_done,
            [(e.url, e.name, e.done, e.total) for e in active],
            list(self._finished),
        )

    async def pid(self) -> int:
        """The worker's process id (tests kill it)."""
        return os.getpid()

    async def close(self) -> tuple[str, int]:
        """Stop the shards under way and close the session; who am I and the bytes received.

        Returns only when every running download has ended, so the bytes received so far are in
        the temporary files (a cancelled download flushes its buffer) before the driver kills us.
        """
        running = [t for t in self._shards if t is not asyncio.current_task()]
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running)
        engine, self._engine = self._engine, None
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.aclose()
        if engine is not None:
            await engine.session.close()
        return self.incarnation, self.progress.bytes_done


class _Numbered(JobWrapper):
    """A download of a shard, whose result comes back with its index in the shard."""

    __slots__ = ("index",)

    def __init__(self, job: Job, index: int) -> None:
        super().__init__(job)
        self.index = index

    async def step(
        self, down: str | None = None, proven: Callable[[], None] | None = None
    ) -> tuple[int, Result] | Retry:
        outcome = await self.job.step(down, proven)
        return outcome if isinstance(outcome, Retry) else (self.index, outcome)

    def abandon(self) -> None:
        self.job.abandon()


@dataclass
class _Shard:
    """A shard as the driver keeps it: what was sent, and the caller's items for the Results."""

    number: int
    items: list[Request | BadEntry]
    spec: ShardSpec
    tries: int = 0

    def planned_path(self, index: int, prefix: str) -> str | None:
        """The target planned for item ``index`` (``prefix``: dest with a separator)."""
        extra = self.spec[2].get(index)
        return prefix + self.spec[1][index] if extra is None else planned_path(extra)


class ShardCluster:
    """The driver side of a run on workers: owns them, hands out the shards, collects the Results.

    Subclasses say how workers start and stop and how a call reaches one (``open``, ``aclose``,
    ``_submit``, ``_stats``); a call to a worker that died fails with WorkerLost.
    """

    # How often the live view asks the workers for their bytes and active downloads.
    poll_interval_s = 1.0

    def __init__(self, *, shard_size: int, config: WorkerConfig, progress: Progress) -> None:
        if shard_size < 1:
            raise UsageError("shard_size must be at least 1")
        self.shard_size = shard_size
        self.config = config
        self.progress = progress
        self.worker_config = config  # what each worker got (its share of the rate cap)
        self._dead: set[int] = set()
        # The shards out on workers (future -> shard, worker, handle), for the watchdog in _poll.
        self._pending: dict[asyncio.Future[Any], tuple[_Shard, int, Any]] = {}
        self._suspects: dict[asyncio.Future[Any], int] = {}

    async def open(self) -> None:
        """Start the workers."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Stop the workers (each keeps its temporary files). Safe to call twice."""
        raise NotImplementedError

    @property
    def size(self) -> int:
        """How many workers the run has (dead ones included)."""
        raise NotImplementedError

    def _submit(self, worker: int, spec: ShardSpec) -> tuple[asyncio.Future[ShardAnswer], Any]:
        """Send a shard to ``worker``: its answer, and a handle for ``_cancel_call``."""
        raise NotImplementedError

    def _cancel_call(self, handle: Any) -> None:
        """Ask the worker to drop a call (best effort: aclose stops the rest)."""

    def _stats(self, worker: int) -> Awaitable[WorkerStats]:
        raise NotImplementedError

    def share(self, workers: int) -> WorkerConfig:
        """The config each of ``workers`` workers gets: the rate cap is for the whole run."""
        config = self.config
        if config.limit_rate is not None:
            config = dataclasses.replace(config, limit_rate=max(1, config.limit_rate // workers))
        self.worker_config = config
        return config

    # --- the driver loop ---------------------------------------------------------------------------

    async def stream(
        self,
        requests: Iterable[str | Request | BadEntry] | AsyncIterable[str | Request | BadEntry],
    ) -> AsyncGenerator[Result, None]:
        """Run every request on the workers; yield results shard by shard as they come back."""
        if not self.size:
            raise RuntimeError("use 'async with Downloader(...)' before downloading")
        dest = Path(self.config.dest)
        prefix = str(dest / "x")[:-1]  # str(dest / name) for a plain name: dest and a separator
        registry = NameRegistry()  # the run's names, decided here in input order
        items = _items(requests)
        exhausted = False
        numbers = iter(range(1 << 62))
        load = [0] * self.size
        pending = self._pending = {}
        again: deque[_Shard] = deque()
        last_death = ""
        poller = asyncio.ensure_future(self._poll())
        try:
            while True:
                while True:
                    worker = self._free_worker(load)
                    if worker is None:
                        break
                    if again:
                        shard = again.popleft()
                    elif not exhausted:
                        shard = await _cut(items, self.shard_size, dest, registry, next(numbers))
                        if not shard.items:
                            exhausted = True
                            continue
                    else:
                        break
                    future, handle = self._submit(worker, shard.spec)
                    pending[future] = (shard, worker, handle)
                    load[worker] += 1
                if not pending:
                    if again:  # every worker is dead
                        raise AsyncdlError(f"every worker died; the run cannot go on ({last_death})")
                    return
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    shard, worker, _handle = pending.pop(future)
                    load[worker] -= 1
                    self._suspects.pop(future, None)
                    try:
                        if future.cancelled():  # by the watchdog: see _poll
                            raise WorkerLost("the answer to a finished shard never arrived", gone=False)
                        answer: ShardAnswer = future.result()
                    except WorkerLost as exc:
                        last_death = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                        if exc.gone:
                            self._dead.add(worker)
                        shard.tries += 1
                        if shard.tries < MAX_SHARD_TRIES:
                            shard.spec = (*shard.spec[:3], shard.tries, shard.number)
                            again.append(shard)
                            continue
                        for result in self._give_up(shard, worker, exc, prefix):
                            self.progress.finish(None, result)
                            yield result
                        continue
                    self.progress.mirror((worker, answer[5]), bytes_done=answer[6], active=None)
                    for result in self._results(shard, answer, worker, prefix):
                        yield result
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            if pending:
                await self._cancel(pending)
            if hasattr(items, "aclose"):
                await items.aclose()

    def _results(self, shard: _Shard, answer: ShardAnswer, worker: int, prefix: str) -> list[Result]:
        """The Results of a shard from its worker's answer (counted in the progress)."""
        statuses, sizes, attempts, errors, paths, _incarnation, _bytes = answer
        finish = self.progress.finish
        names = shard.spec[1]
        extras = shard.spec[2]
        number = shard.number
        status_of = _STATUS
        results: list[Result] = []
        append = results.append
        if not (errors or paths or extras):
            # The usual shard: plain URLs (every item a Request), none failed or renamed.
            for index, item in enumerate(shard.items):
                url = item.url
                result = Result(
                    url if "@" not in url else redact_url(url),
                    prefix + names[index],
                    status_of[statuses[index]],
                    sizes[index],
                    attempts[index],
                    None,
                    item,  # type: ignore[arg-type]
                    worker,
                    number,
                )
                finish(None, result)
                append(result)
            return results
        for index, item in enumerate(shard.items):
            if index in paths:
                path = paths[index]
            elif index in extras:
                path = planned_path(extras[index])
            else:
                path = prefix + names[index]
            result = Result(
                redact_url(item.url),
                path,
                status_of[statuses[index]],
                sizes[index],
                attempts[index],
                errors.get(index),
                item if isinstance(item, Request) else None,
                worker,
                number,
            )
            finish(None, result)
            append(result)
        return results

    def _free_worker(self, load: list[int]) -> int | None:
        best: int | None = None
        for worker, n in enumerate(load):
            if worker in self._dead or n >= IN_FLIGHT_PER_WORKER:
                continue
            if best is None or n < load[best]:
                best = worker
        return best

    def _give_up(self, shard: _Shard, worker: int, exc: BaseException, prefix: str) -> list[Result]:
        error = f"a worker died {shard.tries} times while running this download's shard: {exc}"
        return [
            Result(
                url=redact_url(item.url),
                path=shard.planned_path(index, prefix),
                status=Status.FAILED,
                error=error.splitlines()[0],
                request=item if isinstance(item, Request) else None,
                worker=worker,
                shard=shard.number,
            )
            for index, item in enumerate(shard.items)
        ]

    async def _cancel(self, pending: dict[asyncio.Future[Any], tuple[_Shard, int, Any]]) -> None:
        """Cancel the shards under way and give the workers a moment to keep their temp files."""
        for future, (_shard, _worker, handle) in pending.items():
            with contextlib.suppress(Exception):
                self._cancel_call(handle)
            future.cancel()
        await asyncio.wait(list(pending), timeout=CANCEL_GRACE_S)
        pending.clear()

    async def _poll(self) -> None:
        """Now and then: mirror the workers' bytes and active downloads into the run's Progress, and
        notice a shard whose worker finished it while its answer never arrived.

        An answer lost on the way (seen, rarely, with Ray: the worker idle, the driver waiting) would
        hang the run for good. A shard that its worker reports finished in two polls in a row while
        its answer has not come is handed out again, as if its worker had died: its downloads are
        complete, so the second run of the shard finds them on disk and sends no request for them.
        """
        while True:
            await asyncio.sleep(self.poll_interval_s)
            calls = [(worker, self._stats(worker)) for worker in range(self.size) if worker not in self._dead]
            for worker, call in calls:
                try:
                    incarnation, bytes_done, active, finished = await asyncio.wait_for(
                        call, self.poll_interval_s
                    )
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: S112 - a dead or busy worker: its shard's result will say
                    continue
                entries = [ActiveDownload(-1, url, name, done, total) for url, name, done, total in active]
                self.progress.mirror((worker, incarnation), bytes_done=bytes_done, active=entries)
                self._watch(worker, set(finished))

    def _watch(self, worker: int, finished: set[tuple[int, int]]) -> None:
        for future, (shard, on, _handle) in list(self._pending.items()):
            if on != worker or future.done() or (shard.number, shard.tries) not in finished:
                continue
            seen = self._suspects[future] = self._suspects.get(future, 0) + 1
            if seen >= 2:
                future.cancel()  # the driver loop hands the shard out again

    def _take_final(self, worker: int, answer: object) -> None:
        """A worker's answer to close(): its final byte count, for the summary."""
        if isinstance(answer, tuple):
            incarnation, bytes_done = answer
            self.progress.mirror((worker, incarnation), bytes_done=bytes_done)


Item = str | Request | BadEntry


def _items(items: Iterable[Item] | AsyncIterable[Item]) -> Iterator[Item] | AsyncIterator[Item]:
    """An iterator over the input: a plain one when the input is not async (no await per item)."""
    if isinstance(items, AsyncIterable):
        return aiter(items)
    return iter(items)


async def _cut(
    items: Iterator[Item] | AsyncIterator[Item], size: int, dest: Path, registry: NameRegistry, number: int
) -> _Shard:
    """The next shard: up to ``size`` items, planned in input order (names decided here)."""
    requests: list[Request | BadEntry] = []
    urls: list[str] = []
    names: list[str] = []
    extras: dict[int, Plan] = {}

    def add(item: Item) -> None:
        request = item if isinstance(item, (Request, BadEntry)) else Request.coerce(item)
        name = None if isinstance(request, BadEntry) else plain_name(request, dest, registry)
        if name is None:
            extras[len(requests)] = plan_download(request, dest, registry)
            urls.append("")
            names.append("")
        else:
            urls.append(request.url)
            names.append(name)
        requests.append(request)

    if isinstance(items, Iterator):
        for item in itertools.islice(items, size):
            add(item)
    else:
        async for item in items:
            add(item)
            if len(requests) >= size:
                break
    return _Shard(number, requests, (urls, names, extras, 0, number))


def planned_path(plan: Plan) -> str | None:
    """The path a Result of ``plan`` has unless the download renamed it (None: a bad entry)."""
    return str(plan.target) if plan.request is not None and plan.failure is None else None
