"""Scale-out on a Ray cluster: the shards of a run (see ``_shards``) go to long-lived Ray actors.

The only module that imports ray, and only when a run asks for it (``Downloader(ray=...)``,
``--ray``): without the extra installed that is a UsageError that says how to install it.

Each worker is a ``DownloadWorker`` made into an async actor; Ray restarts an actor whose process
died (up to WORKER_MAX_RESTARTS times) and the driver hands its shards out again. Ctrl-C: each
worker stops its shards and keeps their temporary files, then the actors are killed and Ray is
shut down (when this run started or connected it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from ._exceptions import UsageError
from ._progress import Progress
from ._shards import (
    CANCEL_GRACE_S,
    IN_FLIGHT_PER_WORKER,
    WORKER_MAX_RESTARTS,
    DownloadWorker,
    ShardAnswer,
    ShardCluster,
    ShardSpec,
    WorkerConfig,
    WorkerLost,
    WorkerStats,
)

__all__ = ["DownloadWorker", "RayCluster", "ShardAnswer", "ShardSpec", "WorkerConfig", "import_ray"]

INSTALL_HINT = "pip install 'asyncdl[ray]'"
# A restarting actor refuses calls (ActorUnavailableError: "the actor is restarting") until its new
# process is up. A worker that died gets its next shard only once it answers again, so that the
# seconds of a restart are not counted as deaths of the shards sent meanwhile. How often it is asked,
# and for how long before the shard goes out anyway (and counts a try if it fails).
RESTART_PROBE_S = 0.1
RESTART_WAIT_S = 120.0


def import_ray() -> Any:
    """The ray module, or a UsageError that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise UsageError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from exc
    return ray


class RayCluster(ShardCluster):
    """Starts or joins Ray and owns the worker actors.

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
        super().__init__(shard_size=shard_size, config=config, progress=progress)
        if workers is not None and workers < 1:
            raise UsageError("workers must be at least 1")
        if not (address in ("local", "auto") or address.startswith("ray://")):
            raise UsageError(f"--ray takes 'auto', 'local' or 'ray://HOST:PORT', not {address!r}")
        self.ray = import_ray()
        self.address = address
        self.workers = workers
        self._actors: list[Any] = []
        self._restarting: set[int] = set()  # workers that died, not known to be up again
        self._started_ray = False
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
        actor_class = ray.remote(self.worker_class).options(
            max_restarts=WORKER_MAX_RESTARTS,
            max_task_retries=0,  # the driver re-submits a dead worker's shards itself
            max_concurrency=IN_FLIGHT_PER_WORKER + 8,  # shards plus stats and pid calls
            # Downloads are I/O: spread the workers over the nodes rather than pack them.
            scheduling_strategy="SPREAD",
        )
        config = self.share(workers)
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

    @property
    def size(self) -> int:
        return len(self._actors)

    def _submit(self, worker: int, spec: ShardSpec) -> tuple[asyncio.Future[ShardAnswer], Any]:
        sent: list[Any] = []  # the call's ref, once the worker is up to take it
        return asyncio.ensure_future(self._run_shard(worker, spec, sent)), sent

    async def _run_shard(self, worker: int, spec: ShardSpec, sent: list[Any]) -> ShardAnswer:
        if worker in self._restarting:
            await self._until_up(worker)
        ref = self._actors[worker].run_shard.remote(spec)
        sent.append(ref)
        answer: ShardAnswer = await self._await(ref, worker)
        return answer

    async def _until_up(self, worker: int) -> None:
        """Return once the restarted ``worker`` answers (or after RESTART_WAIT_S); WorkerLost if gone."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RESTART_WAIT_S
        while worker in self._restarting and loop.time() < deadline:
            try:
                await self._await(self._actors[worker].pid.remote(), worker)
            except WorkerLost as exc:
                if exc.gone:
                    raise
                await asyncio.sleep(RESTART_PROBE_S)
            else:
                self._restarting.discard(worker)

    def _cancel_call(self, handle: Any) -> None:
        for ref in handle:
            self.ray.cancel(ref)

    def _stats(self, worker: int) -> asyncio.Future[WorkerStats]:
        return asyncio.ensure_future(self._await(self._actors[worker].stats.remote(), worker))

    async def _await(self, ref: Any, worker: int | None = None) -> Any:
        try:
            return await ref
        except self.ray.exceptions.RayActorError as exc:
            # ActorUnavailableError: the actor died and Ray restarts it; until its new process is up,
            # calls to it fail the same way (see _until_up).
            # ActorDiedError: its restarts are used up; it is gone for good, the others take its shards.
            gone = isinstance(exc, self.ray.exceptions.ActorDiedError)
            if worker is not None and not gone:
                self._restarting.add(worker)
            raise WorkerLost(str(exc) or type(exc).__name__, gone=gone) from exc

    async def aclose(self) -> None:
        """Stop the workers; shut Ray down when this run started or connected it. Safe to call twice."""
        actors, self._actors = self._actors, []
        self._restarting.clear()
        if actors:
            # Each worker stops its shards (keeping their temporary files) before it is killed.
            closing = [self._await(a.close.remote()) for a in actors]
            closed: list[Any] = []
            with contextlib.suppress(Exception):
                closed = await asyncio.wait_for(
                    asyncio.gather(*closing, return_exceptions=True), CANCEL_GRACE_S
                )
            for worker, answer in enumerate(closed):
                self._take_final(worker, answer)
            for actor in actors:
                with contextlib.suppress(Exception):
                    self.ray.kill(actor, no_restart=True)
        if self._started_ray:
            self._started_ray = False
            await asyncio.to_thread(self.ray.shutdown)


class _DropMessage(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)
