"""Scale-out on a Ray cluster: long-lived download actors, fed shard by shard from this process.

The only module that imports ray, and only when a run asks for it (``Downloader(ray=...)``,
``--ray``): without the extra installed that is a UsageError that says how to install it.

How a run goes::

    requests (read lazily) -> plan names here, in input order -> shards of shard_size plans
      -> at most IN_FLIGHT_PER_WORKER shards per worker at once (back-pressure: the input is
         read only as fast as the workers finish shards)
      -> DownloadWorker.run_shard (an async actor: one Downloader, one session, one -j pool,
         reused shard after shard) -> one compact record per download
      -> Results here, with ``worker`` and ``shard``; one Progress for the whole run

Names known before the request (``out=``, the URL's last segment) are decided here with the run's
NameRegistry, exactly as a local run decides them, so they are distinct across workers without any
lock on the workers' side. Names decided on a worker (Content-Disposition) use the downloader's
shared-destination mode: a commit that finds the name taken takes the next suffix, and the final
name is recorded beside the temporary file (see ``Settings.shared_dest``).

Faults: a shard whose worker died (process killed, node lost) is handed out again, to the restarted
actor or another one; the plans are the same, so the same temporary files are resumed and complete
targets skipped, and every download is reported exactly once (records come back per shard, and a
failed shard returns none). Ctrl-C on the driver: each worker cancels its shards and returns once
their downloads have ended (the bytes received so far flushed to the temporary files, kept for
resume), then the workers are killed and Ray is shut down.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._download import Plan, Settings, plain_name, plan_download
from ._exceptions import AsyncdlError, StorageError, UsageError
from ._models import BadEntry, Request, Result, Status
from ._naming import NameRegistry
from ._pool import bounded_map
from ._progress import ActiveDownload, Progress
from ._urls import redact_url

INSTALL_HINT = "pip install 'asyncdl[ray]'"
DEFAULT_SHARD_SIZE = 1000
# Two shards per worker: while one drains its last slow downloads the next already fills the -j pool,
# so a worker never idles between shards; more would only hold plans in memory.
IN_FLIGHT_PER_WORKER = 2
# A restarted actor takes the shards of its dead predecessor; a shard that killed its worker this
# many times fails instead of taking the cluster down with it.
WORKER_MAX_RESTARTS = 4
MAX_SHARD_TRIES = 3
# Live view: how often the driver asks the workers for their bytes and active downloads.
POLL_INTERVAL_S = 1.0
ACTIVE_SHOWN_PER_WORKER = 12
# On Ctrl-C, how long the workers get to close their temporary files before they are killed.
CANCEL_GRACE_S = 3.0


def import_ray() -> Any:
    """The ray module, or a UsageError that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise UsageError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from exc
    return ray


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
# driver -> worker, ShardSpec: (urls, names, extras). A plain request (only a URL, see
#   plain_name) is its URL and the name planned for it in dest; anything else (out=, dir=,
#   mirrors, checksum, headers, a bad entry) is sent as its whole Plan in ``extras``, by index
#   (its urls/names entries are then "").
# worker -> driver, ShardAnswer: (statuses, sizes, attempts, errors, paths, incarnation,
#   bytes_done): one status letter per download ("o", "s", "f"), its bytes and attempts; the
#   errors by index; the paths that differ from the planned target (a Content-Disposition name,
#   or None), by index; who answered and its cumulative bytes.
ShardSpec = tuple[list[str], list[str], dict[int, Plan]]
ShardAnswer = tuple[str, list[int], list[int], dict[int, str], dict[int, str | None], str, int]
ActiveRecord = tuple[str, str, int, int | None]

_LETTER = {Status.OK: "o", Status.SKIPPED: "s", Status.FAILED: "f"}
_STATUS = {letter: status for status, letter in _LETTER.items()}


class DownloadWorker:
    """A Ray actor: one downloader (session, -j pool, rate share) reused for every shard it gets.

    Made into an actor with ``ray.remote(DownloadWorker)``; its methods are coroutines, so Ray runs
    it as an async actor and several shards share one event loop and one connection pool.
    """

    def __init__(self, config: WorkerConfig) -> None:
        from ._api import Downloader

        with contextlib.suppress(OSError):  # a node without that directory: dest must be absolute
            os.chdir(config.cwd)
        self.config = config
        self.progress = Progress()
        self.downloader = Downloader(
            config.dest,
            jobs=config.jobs,
            connections=config.connections,
            timeout=config.timeout,
            limit_rate=config.limit_rate,
            progress=self.progress,
            retry_policy=config.settings.retry,
            overwrite=config.settings.overwrite,
            headers=config.settings.headers,
        )
        # Other workers write into the same directory (see Settings.shared_dest).
        self.downloader.settings = dataclasses.replace(config.settings, shared_dest=True)
        self.incarnation = f"{os.getpid()}-{id(self)}"
        self._shards: set[asyncio.Task[Any]] = set()  # the shards running now (close stops them)

    async def run_shard(self, spec: ShardSpec) -> ShardAnswer:
        """Download every request of the shard; compact results in shard order (see ShardSpec)."""
        plans = self.plans(spec)
        try:
            await self.downloader.open()  # once: the session lives as long as the actor
        except StorageError as exc:
            # This node cannot write the output directory: its downloads fail, saying where.
            error = f"{exc} (on Ray node {socket.gethostname()})"
            n = len(plans)
            return "f" * n, [0] * n, [0] * n, dict.fromkeys(range(n), error), dict.fromkeys(range(n)), "", 0
        results: list[Result | None] = [None] * len(plans)
        task = asyncio.current_task()
        if task is not None:
            self._shards.add(task)
            task.add_done_callback(self._shards.discard)

        async def run(item: tuple[int, Plan]) -> None:
            index, plan = item
            results[index] = await self.downloader._run_plan(plan)

        # The downloader's -j slots are shared by every shard this worker runs at once.
        async with contextlib.aclosing(
            bounded_map(enumerate(plans), _identity, run, workers=self.config.jobs)
        ) as done:
            async for _ in done:
                pass
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
        return "".join(statuses), sizes, attempts, errors, paths, self.incarnation, self.progress.bytes_done

    def plans(self, spec: ShardSpec) -> list[Plan]:
        """The Plans of a shard, rebuilt from what the driver sent."""
        urls, names, extras = spec
        dest = self.downloader.dest
        plans: list[Plan] = []
        for index, (url, name) in enumerate(zip(urls, names, strict=True)):
            extra = extras.get(index) if extras else None
            if extra is not None:
                plans.append(extra)
            else:
                plans.append(Plan(Request(url), dest, name, False, f"{url}\n{name}"))
        return plans

    async def stats(self) -> tuple[str, int, list[ActiveRecord]]:
        """For the live view: who am I, bytes received so far, some active downloads."""
        active = sorted(self.progress.active.values(), key=lambda e: e.key)[:ACTIVE_SHOWN_PER_WORKER]
        return (
            self.incarnation,
            self.progress.bytes_done,
            [(e.url, e.name, e.done, e.total) for e in active],
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
        await self.downloader.aclose()
        return self.incarnation, self.progress.bytes_done


def _identity(item: tuple[int, Plan]) -> tuple[int, Plan]:
    return item


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


class RayCluster:
    """The driver side of a Ray run: starts or joins Ray, owns the workers, hands out the shards.

    ``address`` is ``"local"`` (start Ray on this machine for the run), ``"auto"`` (the running
    cluster) or ``"ray://HOST:PORT"``. ``workers`` None means one worker per alive node.
    """

    def __init__(
        self,
        address: str,
        *,
        workers: int | None,
        shard_size: int,
        config: WorkerConfig,
        progress: Progress,
    ) -> None:
        if workers is not None and workers < 1:
            raise UsageError("workers must be at least 1")
        if shard_size < 1:
            raise UsageError("shard_size must be at least 1")
        if not (address in ("local", "auto") or address.startswith("ray://")):
            raise UsageError(f"--ray takes 'auto', 'local' or 'ray://HOST:PORT', not {address!r}")
        self.ray = import_ray()
        self.address = address
        self.workers = workers
        self.shard_size = shard_size
        self.config = config
        self.progress = progress
        self._actors: list[Any] = []
        self._started_ray = False
        self._dead: set[int] = set()
        self.worker_config = config  # what each worker got (its share of the rate cap)
        # The actor's class: benchmarks put a dry-run worker here to measure the driver alone.
        self.worker_class: type[DownloadWorker] = DownloadWorker

    async def open(self) -> None:
        """Connect to (or start) Ray and start the workers."""
        if self._actors:
            return
        ray = self.ray
        if not ray.is_initialized():
            # ray.init blocks for seconds (it may start a whole local cluster): not in the event loop.
            await asyncio.to_thread(self._init)
        workers = self.workers or max(1, sum(1 for node in ray.nodes() if node.get("Alive")))
        worker_class = self.worker_class
        config = self.config
        if config.limit_rate is not None:
            # The cap is for the whole run: each worker gets an equal share.
            config = dataclasses.replace(config, limit_rate=max(1, config.limit_rate // workers))
        actor_class = ray.remote(worker_class).options(
            max_restarts=WORKER_MAX_RESTARTS,
            max_task_retries=0,  # the driver re-submits a dead worker's shards itself
            max_concurrency=IN_FLIGHT_PER_WORKER + 8,  # shards plus stats and pid calls
            # Downloads are I/O: spread the workers over the nodes rather than pack them.
            scheduling_strategy="SPREAD",
        )
        self.worker_config = config
        self._actors = [actor_class.remote(config) for _ in range(workers)]

    def _init(self) -> None:
        ray = self.ray
        # Not in the main thread, so Ray leaves our SIGTERM handling alone (exit 143): quiet its
        # warning about that.
        quiet = _DropMessage("SIGTERM handler is not set")
        logger = logging.getLogger("ray._private.worker")
        logger.addFilter(quiet)
        try:
            if self.address == "local":
                # "local" starts a new instance even when RAY_ADDRESS or a `ray start` cluster exists.
                ray.init(
                    address="local", include_dashboard=False, log_to_driver=False, configure_logging=False
                )
            else:
                # We connect, so we disconnect at the end (a running cluster stays up).
                ray.init(address=self.address, log_to_driver=False, configure_logging=False)
            self._started_ray = True
        finally:
            logger.removeFilter(quiet)

    @property
    def actors(self) -> list[Any]:
        """The worker actor handles (for tests and tools)."""
        return list(self._actors)

    async def aclose(self) -> None:
        """Stop the workers; shut Ray down when this run started or connected it. Safe to call twice."""
        actors, self._actors = self._actors, []
        if actors:
            # Each worker stops its shards (keeping their temporary files) before it is killed.
            closing = [_await_ref(a.close.remote()) for a in actors]
            closed: list[Any] = []
            with contextlib.suppress(Exception):
                closed = await asyncio.wait_for(
                    asyncio.gather(*closing, return_exceptions=True), CANCEL_GRACE_S
                )
            for worker, answer in enumerate(closed):
                if isinstance(answer, tuple):  # the final byte count, for the summary
                    incarnation, bytes_done = answer
                    self.progress.mirror((worker, incarnation), bytes_done=bytes_done)
            for actor in actors:
                with contextlib.suppress(Exception):
                    self.ray.kill(actor, no_restart=True)
        if self._started_ray:
            self._started_ray = False
            await asyncio.to_thread(self.ray.shutdown)

    # --- the driver loop ---------------------------------------------------------------------------

    async def stream(
        self,
        requests: Iterable[str | Request | BadEntry] | AsyncIterable[str | Request | BadEntry],
    ) -> AsyncGenerator[Result, None]:
        """Run every request on the workers; yield results shard by shard as they come back."""
        if not self._actors:
            raise RuntimeError("use 'async with Downloader(..., ray=...)' before downloading")
        dest = Path(self.config.dest)
        prefix = str(dest / "x")[:-1]  # str(dest / name) for a plain name: dest and a separator
        registry = NameRegistry()  # the run's names, decided here in input order
        items = _aiter(requests)
        exhausted = False
        numbers = iter(range(1 << 62))
        load = [0] * len(self._actors)
        pending: dict[asyncio.Future[Any], tuple[_Shard, int, Any]] = {}
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
                    ref = self._actors[worker].run_shard.remote(shard.spec)
                    pending[asyncio.ensure_future(_await_ref(ref))] = (shard, worker, ref)
                    load[worker] += 1
                if not pending:
                    if again:  # every worker is dead
                        raise AsyncdlError(f"every Ray worker died; the run cannot go on ({last_death})")
                    return
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    shard, worker, _ref = pending.pop(future)
                    load[worker] -= 1
                    try:
                        answer: ShardAnswer = future.result()
                    except self.ray.exceptions.RayActorError as exc:
                        last_death = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                        self._on_worker_error(worker, exc)
                        shard.tries += 1
                        if shard.tries < MAX_SHARD_TRIES:
                            again.append(shard)
                            continue
                        for result in self._give_up(shard, worker, exc, prefix):
                            self.progress.finish(None, result)
                            yield result
                        continue
                    statuses, sizes, attempts, errors, paths, incarnation, bytes_done = answer
                    self.progress.mirror((worker, incarnation), bytes_done=bytes_done, active=None)
                    finish = self.progress.finish
                    names = shard.spec[1]
                    extras = shard.spec[2]
                    number = shard.number
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
                            _STATUS[statuses[index]],
                            sizes[index],
                            attempts[index],
                            errors.get(index),
                            item if isinstance(item, Request) else None,
                            worker,
                            number,
                        )
                        finish(None, result)
                        yield result
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            if pending:
                await self._cancel(pending)
            if hasattr(items, "aclose"):
                await items.aclose()

    def _free_worker(self, load: list[int]) -> int | None:
        best: int | None = None
        for worker, n in enumerate(load):
            if worker in self._dead or n >= IN_FLIGHT_PER_WORKER:
                continue
            if best is None or n < load[best]:
                best = worker
        return best

    def _on_worker_error(self, worker: int, exc: BaseException) -> None:
        # ActorUnavailableError: the actor died and Ray restarts it (new calls wait for it).
        # ActorDiedError: its restarts are used up; it is gone for good, the others take its shards.
        if isinstance(exc, self.ray.exceptions.ActorDiedError):
            self._dead.add(worker)

    def _give_up(self, shard: _Shard, worker: int, exc: BaseException, prefix: str) -> list[Result]:
        error = f"a Ray worker died {shard.tries} times while running this download's shard: {exc}"
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
        for future, (_shard, _worker, ref) in pending.items():
            with contextlib.suppress(Exception):
                self.ray.cancel(ref)
            future.cancel()
        await asyncio.wait(list(pending), timeout=CANCEL_GRACE_S)
        pending.clear()

    async def _poll(self) -> None:
        """Mirror the workers' bytes and active downloads into the run's Progress, now and then."""
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            refs = [(worker, actor.stats.remote()) for worker, actor in enumerate(self._actors)]
            for worker, ref in refs:
                try:
                    incarnation, bytes_done, active = await asyncio.wait_for(_await_ref(ref), POLL_INTERVAL_S)
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: S112 - a dead or busy worker: its shard's result will say
                    continue
                entries = [ActiveDownload(-1, url, name, done, total) for url, name, done, total in active]
                self.progress.mirror((worker, incarnation), bytes_done=bytes_done, active=entries)


class _DropMessage(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)


async def _await_ref(ref: Any) -> Any:
    return await ref


def _aiter(
    items: Iterable[str | Request | BadEntry] | AsyncIterable[str | Request | BadEntry],
) -> AsyncIterator[str | Request | BadEntry]:
    if isinstance(items, AsyncIterable):
        return aiter(items)

    async def from_sync() -> AsyncIterator[str | Request | BadEntry]:
        for item in items:
            yield item

    return from_sync()


async def _cut(
    items: AsyncIterator[str | Request | BadEntry], size: int, dest: Path, registry: NameRegistry, number: int
) -> _Shard:
    """The next shard: up to ``size`` items, planned in input order (names decided here)."""
    requests: list[Request | BadEntry] = []
    urls: list[str] = []
    names: list[str] = []
    extras: dict[int, Plan] = {}
    async for item in items:
        request = item if isinstance(item, BadEntry) else Request.coerce(item)
        name = None if isinstance(request, BadEntry) else plain_name(request, dest, registry)
        if name is None:
            extras[len(requests)] = plan_download(request, dest, registry)
            urls.append("")
            names.append("")
        else:
            urls.append(request.url)
            names.append(name)
        requests.append(request)
        if len(requests) >= size:
            break
    return _Shard(number, requests, (urls, names, extras))


def planned_path(plan: Plan) -> str | None:
    """The path a Result of ``plan`` has unless the download renamed it (None: a bad entry)."""
    return str(plan.target) if plan.request is not None and plan.failure is None else None
