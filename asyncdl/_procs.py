"""Worker processes on this machine: the shards of a run (see ``_shards``) go to N Python processes.

One event loop keeps one core busy with a list of many small files (the per-file Python work of
the request, the response and the file, not the bytes, sets the pace); N processes use N cores.
This process reads the list, decides the names and keeps the display and the report; each worker
process is one ``DownloadWorker`` (its own session, -j pool and share of the rate cap), reused
shard after shard, exactly as on Ray but without a cluster.

The wire: the worker's standard input and output, each message a 4-byte length and a pickle.
Driver -> worker: the WorkerConfig first, then ``(call_id, method, args)``; worker -> driver:
``(call_id, ok, value)``. A worker's standard error is kept (its last lines say why it died).

Faults: a worker process that dies (killed, out of memory) is started again, up to
WORKER_MAX_RESTARTS times, and the driver hands its shards out again (to it or another worker): the
same temporary files are resumed, complete targets skipped. The workers run in a session of their
own, so a Ctrl-C on the terminal reaches only this process, which tells them to stop (they keep
their temporary files); a worker whose driver went away (standard input closed) stops the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pickle
import signal
import struct
import sys
from collections import deque
from pathlib import Path
from typing import Any

from ._exceptions import AsyncdlError, UsageError
from ._progress import Progress
from ._shards import (
    CANCEL_GRACE_S,
    WORKER_MAX_RESTARTS,
    DownloadWorker,
    ShardAnswer,
    ShardCluster,
    ShardSpec,
    WorkerConfig,
    WorkerLost,
    WorkerStats,
)

# Shards of a local run are small: the last shards of a run end at about the same time on every
# worker (a shard takes a worker about a tenth of a second at a thousand small files a second),
# and handing one over costs a pickle and a pipe write.
DEFAULT_SHARD_SIZE = 100
# What a worker may be asked (besides "cancel" and "close").
_CALLS = frozenset({"run_shard", "stats", "pid"})
_HEAD = struct.Struct("!I")
_WORKER_CODE = "from asyncdl._procs import worker_main; worker_main()"
_STDERR_LINES = 20
# The workers import this very asyncdl, wherever it was imported from.
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


def _frame(message: object) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEAD.pack(len(data)) + data


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    """The next message, or None at the end of the stream."""
    try:
        head = await reader.readexactly(_HEAD.size)
        (size,) = _HEAD.unpack(head)
        return pickle.loads(await reader.readexactly(size))  # noqa: S301 - our own worker's pipe
    except asyncio.IncompleteReadError:
        return None


class _Worker:
    """One running worker process, as the driver sees it."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.calls: dict[int, asyncio.Future[Any]] = {}
        self.alive = True
        self.stderr: deque[str] = deque(maxlen=_STDERR_LINES)
        self.readers: list[asyncio.Task[None]] = []

    def send(self, message: object) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        stdin.write(_frame(message))

    def why(self) -> str:
        code = self.proc.returncode
        said = next((line for line in reversed(self.stderr) if line.strip()), "")
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with {code}"
        return f"worker process {self.proc.pid} {how}" + (f": {said.strip()}" if said else "")


class ProcessCluster(ShardCluster):
    """Starts ``processes`` worker processes on this machine and hands them the shards."""

    poll_interval_s = 0.5

    def __init__(self, processes: int, *, shard_size: int, config: WorkerConfig, progress: Progress) -> None:
        super().__init__(shard_size=shard_size, config=config, progress=progress)
        if processes < 1:
            raise UsageError("processes must be at least 1")
        self.processes = processes
        self._slots: list[asyncio.Future[_Worker] | None] = []
        self._restarts: list[int] = []
        self._ids = itertools.count()
        self._closing = False

    @property
    def size(self) -> int:
        return len(self._slots)

    async def open(self) -> None:
        """Start the worker processes (they get ready while the first shards are cut)."""
        if self._slots:
            return
        self._closing = False
        self.share(self.processes)
        self._restarts = [0] * self.processes
        self._slots = [asyncio.ensure_future(self._start(i)) for i in range(self.processes)]

    async def _start(self, index: int) -> _Worker:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _WORKER_CODE,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # Ctrl-C on the terminal is ours to handle, not theirs
            cwd=self.config.cwd,
            env=env,
        )
        worker = _Worker(proc)
        worker.send(self.worker_config)
        worker.readers = [
            asyncio.ensure_future(self._read_answers(index, worker)),
            asyncio.ensure_future(self._read_stderr(worker)),
        ]
        return worker

    async def _read_answers(self, index: int, worker: _Worker) -> None:
        stdout = worker.proc.stdout
        assert stdout is not None
        try:
            while True:
                message = await _read_frame(stdout)
                if message is None:
                    break
                call_id, ok, value = message
                future = worker.calls.pop(call_id, None)
                if future is None or future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(AsyncdlError(f"a worker process failed: {value}"))
        finally:
            worker.alive = False
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker.proc.wait(), 1.0)
            self._lost(index, worker)

    async def _read_stderr(self, worker: _Worker) -> None:
        stderr = worker.proc.stderr
        assert stderr is not None
        with contextlib.suppress(Exception):
            async for line in stderr:
                worker.stderr.append(line.decode("utf-8", "replace"))

    def _lost(self, index: int, worker: _Worker) -> None:
        """The worker process ended: fail its calls; start another one in its place if allowed."""
        if self._closing or self._running(index) is not worker:
            gone = True  # stopping, or an older process of this slot
        elif self._restarts[index] < WORKER_MAX_RESTARTS:
            self._restarts[index] += 1
            self._slots[index] = asyncio.ensure_future(self._start(index))
            gone = False
        else:
            self._slots[index] = None
            gone = True
        calls, worker.calls = worker.calls, {}
        for future in calls.values():
            if not future.done():
                future.set_exception(WorkerLost(worker.why(), gone=gone))

    def _running(self, index: int) -> _Worker | None:
        """The started process of slot ``index`` (None while it starts, or when there is none)."""
        slot = self._slots[index] if index < len(self._slots) else None
        if slot is None or not slot.done() or slot.cancelled() or slot.exception() is not None:
            return None
        return slot.result()

    async def _worker(self, index: int) -> _Worker:
        slot = self._slots[index] if index < len(self._slots) else None
        if slot is None:
            raise WorkerLost(f"worker {index} is gone", gone=True)
        try:
            return await asyncio.shield(slot)
        except OSError as exc:
            self._slots[index] = None
            raise WorkerLost(f"cannot start a worker process: {exc}", gone=True) from exc

    async def _call(self, index: int, call_id: int, method: str, *args: Any) -> Any:
        worker = await self._worker(index)
        if not worker.alive:
            raise WorkerLost(worker.why(), gone=False)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        worker.calls[call_id] = future
        try:
            worker.send((call_id, method, args))
            return await future
        finally:
            worker.calls.pop(call_id, None)

    def _submit(self, worker: int, spec: ShardSpec) -> tuple[asyncio.Future[ShardAnswer], Any]:
        call_id = next(self._ids)
        return asyncio.ensure_future(self._call(worker, call_id, "run_shard", spec)), (worker, call_id)

    def _cancel_call(self, handle: Any) -> None:
        index, call_id = handle
        worker = self._running(index)
        if worker is not None and worker.alive:
            worker.send((next(self._ids), "cancel", (call_id,)))

    def _stats(self, worker: int) -> asyncio.Future[WorkerStats]:
        return asyncio.ensure_future(self._call(worker, next(self._ids), "stats"))

    async def pids(self) -> list[int]:
        """The worker processes' ids (tests kill them)."""
        return [await self._call(i, next(self._ids), "pid") for i in range(self.size)]

    async def aclose(self) -> None:
        """Stop the workers (each keeps its temporary files), then end their processes. Safe twice."""
        slots, self._slots = self._slots, []
        if not slots:
            return
        self._closing = True
        workers: list[_Worker] = []
        for slot in slots:
            if slot is None:
                continue
            try:
                workers.append(await asyncio.wait_for(asyncio.shield(slot), CANCEL_GRACE_S))
            except (Exception, asyncio.TimeoutError):  # never started: nothing to stop
                slot.cancel()
        closing = [self._close_one(w) for w in workers]
        answers = await asyncio.gather(*closing, return_exceptions=True)
        for number, answer in enumerate(answers):
            self._take_final(number, answer)
        for worker in workers:
            await self._end(worker)

    async def _close_one(self, worker: _Worker) -> Any:
        if not worker.alive:
            return None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        call_id = next(self._ids)
        worker.calls[call_id] = future
        worker.send((call_id, "close", ()))
        try:
            return await asyncio.wait_for(future, CANCEL_GRACE_S)
        except (Exception, asyncio.TimeoutError):
            return None

    async def _end(self, worker: _Worker) -> None:
        proc = worker.proc
        if proc.stdin is not None:
            proc.stdin.close()  # end of input: a worker that is still up stops
        try:
            await asyncio.wait_for(proc.wait(), 1.0)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        for reader in worker.readers:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(reader, 1.0)


# --- the worker process ------------------------------------------------------------------------------


def worker_main() -> None:
    """Entry point of a worker process: serve calls from the driver on stdin/stdout until told to stop."""
    answers = os.dup(1)  # the channel to the driver; anything printed goes to stderr instead
    os.dup2(2, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver tells us when to stop
    asyncio.run(_serve(answers))


async def _serve(answers_fd: int) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    pipe = os.fdopen(answers_fd, "wb", buffering=0)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, pipe)
    writer = asyncio.StreamWriter(transport, protocol, None, loop)

    config = await _read_frame(reader)
    if not isinstance(config, WorkerConfig):
        return
    worker = DownloadWorker(config)
    tasks: dict[int, asyncio.Task[None]] = {}

    def answer(call_id: int, ok: bool, value: object) -> None:
        if not transport.is_closing():
            writer.write(_frame((call_id, ok, value)))

    async def run(call_id: int, method: str, args: tuple[Any, ...]) -> None:
        try:
            value = await getattr(worker, method)(*args)
        except Exception as exc:
            answer(call_id, False, f"{type(exc).__name__}: {exc}")
        else:
            answer(call_id, True, value)
        finally:
            tasks.pop(call_id, None)

    try:
        while True:
            message = await _read_frame(reader)
            if message is None:
                break  # the driver went away
            call_id, method, args = message
            if method == "close":
                answer(call_id, True, await worker.close())
                break
            if method == "cancel":
                task = tasks.get(args[0])
                if task is not None:
                    task.cancel()
            elif method in _CALLS:
                tasks[call_id] = asyncio.ensure_future(run(call_id, method, args))
    finally:
        await worker.close()  # every download ended, its bytes in its temporary file
        with contextlib.suppress(Exception):
            await writer.drain()
        transport.close()
