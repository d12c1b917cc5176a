"""One download, end to end: skip, resume decision, attempt loop, length and checksum, commit.

Every outcome is a :class:`Result`; exceptions from the layers below end an attempt (transient ones
are retried, resuming from what is on disk) or the download (recorded in ``Result.error``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import random
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from ._exceptions import (
    ChecksumMismatch,
    ConnectError,
    DownloadError,
    FileTooLarge,
    HTTPStatusError,
    IncompleteBody,
    RetryableStatus,
    SlowError,
    StorageError,
    TransientError,
)
from ._files import (
    DirectoryIndex,
    HashFollower,
    PartialState,
    ResumeMeta,
    TempFile,
    hash_prefix,
    load_final_name,
    name_record_path,
    save_final_name,
    size_of,
    storage_error,
)
from ._hosts import PROVEN_BYTES, HostRules, Retry, Signal, signal_of
from ._http import Body, CookieSource, HopOptions, Validator, basic_authorization, open_body
from ._models import BadEntry, Request, Result, Status, has_options
from ._naming import (
    NameRegistry,
    name_from_content_disposition,
    name_from_url,
    plain_url_name,
    safe_subdir,
    sanitize_name,
    temp_name,
)
from ._progress import Progress, format_bytes
from ._ratelimit import BothLimiters, RateLimiter, SpeedFloor
from ._retry import RetryPolicy
from ._segments import PIECE_SIZE, FileChanged, PieceMap, SpliceInto, fetch_pieces, write_piece
from ._splice import WriteFailed
from ._urls import origin_key, redact_text, redact_url, usable_url_problem


@dataclass(frozen=True)
class Settings:
    """What every download of a run shares."""

    dest: Path
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    overwrite: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    connections: int = 1  # -x: connections for one large file (segmented download)
    max_per_host: int | None = None  # --max-per-host: downloads at once to one origin
    lowest_speed_bps: int | None = None  # --lowest-speed-limit: cut an attempt slower than this
    speed_window_s: float = 30.0  # ... over this many seconds (the stall timeout)
    max_filesize: int | None = None  # --max-filesize: fail a larger file at once
    # Other processes write into dest during the run (the workers of a Ray run). Names known before
    # the request come from one registry (the driver's) and stay distinct as in a local run; a name
    # taken from Content-Disposition cannot be checked against the other workers' names, so:
    # existence is asked of the disk (no listing snapshot), a taken name gets the next suffix (at
    # rename and at the no-clobber commit), and a final name that differs from the planned one is
    # recorded beside the temporary file, where a retried shard or a re-run finds it.
    shared_dest: bool = False
    # Sent on every hop of every request unless a Request says otherwise (None: asyncdl/VERSION).
    user_agent: str | None = None
    referer: str | None = None
    cookies: CookieSource | None = None  # a cookies.txt, each cookie sent where it may go
    # TLS: the CA certificates to verify against (PEM text; None: the system's), or no verification.
    ca_certificates: str | None = None
    verify: bool = True

    def overwrite_for(self, request: Request) -> bool:
        return self.overwrite if request.overwrite is None else request.overwrite


def host_rules(settings: Settings) -> HostRules:
    """The scheduler's per-origin rules for a downloader with ``settings``."""
    policy = settings.retry
    return HostRules(
        max_per_host=settings.max_per_host,
        backoff_base_s=policy.backoff_base_s,
        backoff_max_s=policy.backoff_max_s,
        # An origin is down after as many failed rounds as one download has attempts.
        down_after=policy.retries + 1,
    )


@dataclass(slots=True)
class Plan:
    """A request with its target decided (synchronously, in input order, so names are deterministic)."""

    request: Request | None
    directory: Path
    name: str
    name_fixed: bool  # out= given: Content-Disposition does not rename it
    temp_key: str
    failure: str | None = None  # a bad entry: fail without any request
    shown_url: str = ""  # for a bad entry: its text

    @property
    def target(self) -> Path:
        return self.directory / self.name

    @property
    def temp_path(self) -> Path:
        return self.directory / temp_name(self.name, self.temp_key)


def plain_name(request: Request, dest: Path, registry: NameRegistry) -> str | None:
    """The name claimed for ``request`` in ``dest`` when it is plain, else None (use plan_download).

    Plain: a usable URL without mirrors, ``out=``, ``dir=``, checksum or headers, which is what
    most requests of a long list are. For those it claims exactly the name plan_download would,
    without building a Plan (the driver of a Ray run plans millions of them).
    """
    if (
        request.mirrors
        or request.out is not None
        or request.dir is not None
        or request.checksum is not None
        or request.headers
        or has_options(request)
    ):
        return None
    name = plain_url_name(request.url)  # None: not a plain URL
    return None if name is None else registry.claim(dest, name)


def plan_download(item: Request | BadEntry, dest: Path, registry: NameRegistry) -> Plan:
    """Decide the target of ``item`` inside ``dest``, claiming its name in ``registry``.

    Synchronous and without I/O, so it runs in input order wherever the names must be decided: in
    the Engine for a local run, on the driver of a Ray run.
    """
    if isinstance(item, BadEntry):
        return Plan(None, dest, "", False, "", failure=item.message, shown_url=redact_url(item.url))
    request = item
    problem = usable_url_problem(request.url)
    if problem is None and request.mirrors:
        problem = next((usable_url_problem(m) for m in request.mirrors if usable_url_problem(m)), None)
    if problem:
        where = f"{request.source}: " if request.source else ""
        return Plan(request, dest, "", False, "", failure=f"{where}{problem}: {redact_url(request.url)}")
    directory = safe_subdir(dest, request.dir)
    provisional = sanitize_name(request.out) if request.out else name_from_url(request.url)
    name = registry.claim(directory, provisional)
    return Plan(request, directory, name, request.out is not None, temp_key=f"{request.url}\n{name}")


class Engine:
    """Runs downloads with shared parts: session, settings, progress, names, limiter."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: Settings,
        *,
        progress: Progress,
        limiter: RateLimiter | None = None,
        registry: NameRegistry | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.session = session
        self.settings = settings
        self.progress = progress
        self.limiter = limiter
        self.registry = registry or NameRegistry()
        self.index = DirectoryIndex()
        self.hop = _hop_options(settings.user_agent, settings.referer, settings.cookies)
        self._sleep = sleep
        self._rng = rng

    # --- planning (sync) ---
    def plan(self, item: Request | BadEntry) -> Plan:
        return plan_download(item, self.settings.dest, self.registry)

    async def exists(self, directory: Path, name: str, *, exact: bool = False) -> bool:
        """Whether ``directory / name`` exists: from the run's listing, or asked of the disk (exact).

        The listing is right for the names the run decided itself (kept distinct by one registry),
        even when other workers write into the same directory (Settings.shared_dest); a name that
        another process may have created since the listing was taken must be looked up exactly.
        """
        if exact:
            return await size_of(directory / name) is not None
        return await self.index.exists(directory, name)

    # --- running ---
    def job(self, plan: Plan, *, recheck: bool = False) -> Job:
        """A download that the pool runs one attempt at a time (see :class:`Job`)."""
        return Job(self, plan, recheck)

    async def run(self, plan: Plan, *, recheck: bool = False) -> Result:
        """Download ``plan`` to its end, waiting between attempts here (no scheduler: one download).

        ``recheck``: ask the disk, not the listing, what is there already (another process may have
        worked on this very download during the run: a retried shard)."""
        job = self.job(plan, recheck=recheck)
        while True:
            outcome = await job.step()
            if isinstance(outcome, Result):
                return outcome
            await self._sleep(outcome.delay_s)

    async def _settled(self, plan: Plan, recheck: bool) -> Result | None:
        """The Result of ``plan`` when no request is needed (a bad entry, a target already there)."""
        request = plan.request
        if plan.failure is not None or request is None:
            result = Result(
                url=redact_url(request.url) if request else plan.shown_url,
                path=None,
                status=Status.FAILED,
                error=plan.failure,
                request=request,
            )
            self.progress.finish(None, result)
            return result
        if not self.settings.overwrite_for(request):
            done = await self._complete_target(plan, recheck)
            if done is not None:
                result = Result(
                    redact_url(request.url),
                    str(done),
                    Status.SKIPPED,
                    await size_of(done) or 0,
                    0,
                    None,
                    request,
                )
                self.progress.finish(None, result)
                return result
        return None

    async def _complete_target(self, plan: Plan, recheck: bool) -> Path | None:
        """The target already on disk for ``plan`` (None: it must be downloaded)."""
        if self.settings.shared_dest:
            # A name decided on a worker (Content-Disposition) was recorded when it was committed;
            # the listing says whether there is a record to read (no thread hop when there is none).
            record = name_record_path(plan.temp_path)
            if await self.exists(record.parent, record.name, exact=recheck):
                recorded = await load_final_name(plan.temp_path)
                # Another worker may have taken that name since: ask the disk.
                if recorded is not None and await self.exists(plan.directory, recorded, exact=True):
                    return plan.directory / recorded
        return plan.target if await self.exists(plan.directory, plan.name, exact=recheck) else None


# max-tries=0 (no limit), as a number of retries: more than any run will make.
_UNLIMITED_RETRIES = 1 << 30


def _hop_options(user_agent: str | None, referer: str | None, cookies: CookieSource | None) -> HopOptions:
    headers: list[tuple[str, str]] = []
    if user_agent is not None:
        headers.append(("User-Agent", user_agent))
    if referer is not None:
        headers.append(("Referer", referer))
    return HopOptions(tuple(headers), cookies)


def plan_origin(plan: Plan) -> str:
    """The origin the first attempt of ``plan`` asks ("" for a bad entry: no request is made)."""
    if plan.request is None or plan.failure is not None:
        return ""
    return origin_key(plan.request.url)


class JobWrapper:
    """A Job with something of its caller's: the scheduler reads the Job's origin and signals through it."""

    __slots__ = ("job",)

    def __init__(self, job: Job) -> None:
        self.job = job

    @property
    def origin(self) -> str:
        return self.job.origin

    @property
    def signal(self) -> Signal | None:
        return self.job.signal

    @property
    def retry_after(self) -> float | None:
        return self.job.retry_after


class Job:
    """A planned download as the scheduler runs it: each ``step()`` is one attempt.

    The first step also settles what needs no request (a bad entry, a target already there). The
    state between steps (attempts made, the mirror in use, the progress entry) lives here, so a
    download waiting for its next attempt is data, not a task. ``origin`` is the origin of the next
    attempt; ``signal`` and ``retry_after`` what the last step's attempt said about its origin.
    """

    __slots__ = ("_job", "engine", "origin", "plan", "recheck")

    def __init__(self, engine: Engine, plan: Plan, recheck: bool = False) -> None:
        self.engine = engine
        self.plan = plan
        self.recheck = recheck
        self.origin = plan_origin(plan)
        self._job: _Job | None = None

    @property
    def signal(self) -> Signal | None:
        return None if self._job is None else self._job.signal

    @property
    def retry_after(self) -> float | None:
        return None if self._job is None else self._job.retry_after

    @property
    def attempts(self) -> int:
        return 0 if self._job is None else self._job.attempts

    async def step(self, down: str | None = None, proven: Callable[[], None] | None = None) -> Result | Retry:
        """The next attempt (``down``: its origin is down, why; no request is made).

        ``proven()`` is called once the attempt has brought PROVEN_BYTES: its origin answers well.
        """
        engine = self.engine
        job = self._job
        if job is None:
            settled = await engine._settled(self.plan, self.recheck)
            if settled is not None:
                return settled
            request = self.plan.request
            assert request is not None
            key = engine.progress.start(redact_url(request.url), self.plan.name)
            job = self._job = _Job(engine, self.plan, key, self.recheck)
        try:
            job.on_proven = proven
            outcome = await job.step(down)
        except BaseException:
            self.abandon()
            raise
        if isinstance(outcome, Result):
            engine.progress.finish(job.key, outcome)
        elif job.mirror:
            self.origin = origin_key(job.url)
        return outcome

    @property
    def progress_key(self) -> int | None:
        """Its entry in ``Progress.active`` while it has one (from its first attempt until it ends)."""
        return None if self._job is None else self._job.key

    def abandon(self) -> None:
        """The download stops here (cancelled): forget its progress entry. Stepped again later, it
        starts over as a new download (resuming from the bytes on disk): a pause and a resume."""
        job, self._job = self._job, None
        if job is not None:
            self.engine.progress.drop(job.key)
            self.origin = plan_origin(self.plan)


class _OneStream(Exception):
    """Fetch this file in one stream: ranges work but cannot be used safely for pieces."""


class _Skip(Exception):
    """The target turned out to exist already (its name came from Content-Disposition)."""


class _Job:
    """The state of one download across its attempts."""

    def __init__(self, engine: Engine, plan: Plan, key: int, recheck: bool = False) -> None:
        assert plan.request is not None
        self.engine = engine
        self.recheck = recheck  # what is on disk must be asked of the disk (see Engine.run)
        self.plan = plan
        self.request: Request = plan.request
        self.key = key
        self.attempts = 0
        self.mirror = 0  # which of request.urls the next attempt asks
        self.tries = 0  # attempts at that URL
        self.last_error: DownloadError | None = None
        self.signal: Signal | None = None  # what the last step's attempt said about its origin
        self.retry_after: float | None = None
        self.on_proven: Callable[[], None] | None = None  # see Job.step
        self.received = 0
        self.target = plan.target
        self.renamed = False
        self.temp = TempFile(plan.temp_path)
        self.server_name: str | None = None  # the Content-Disposition name, when it renamed the file
        request = self.request
        settings = engine.settings
        self.headers = (*settings.headers, *request.headers)
        if request.auth is not None:  # Basic authentication, to the URL's origin only (as headers go)
            self.headers = (*self.headers, ("Authorization", basic_authorization(*request.auth)))
        self.hop = engine.hop
        if request.user_agent is not None or request.referer is not None:
            user_agent = request.user_agent or settings.user_agent
            self.hop = _hop_options(user_agent, request.referer or settings.referer, settings.cookies)
        self.connections = request.connections or settings.connections
        self.overwrite = settings.overwrite_for(request)
        self.policy = settings.retry
        if request.max_tries is not None:
            # aria2c's count: attempts per URL, the first included; 0 is no limit.
            retries = request.max_tries - 1 if request.max_tries else _UNLIMITED_RETRIES
            self.policy = dataclasses.replace(settings.retry, retries=retries)
        self.limiter: RateLimiter | BothLimiters | None = engine.limiter
        if request.limit_rate is not None:
            own = RateLimiter(request.limit_rate)
            self.limiter = own if engine.limiter is None else BothLimiters(own, engine.limiter)
        # The speed floor of every attempt (the list's lowest-speed-limit= before --lowest-speed-limit).
        self.speed_floor_bps = request.lowest_speed_limit or settings.lowest_speed_bps
        self._spliced_hash: Any = None  # the checksum's hash of a spliced body, taken as it was written

    def failed(self, error: str) -> Result:
        return Result(
            redact_url(self.request.url),
            str(self.target),
            Status.FAILED,
            self.received,
            self.attempts,
            redact_text(error, self.request.url),
            self.request,
        )

    @property
    def url(self) -> str:
        """The URL the next attempt asks: the request's, or the mirror it was handed to."""
        return self.request.urls[self.mirror]

    async def step(self, down: str | None = None) -> Result | Retry:
        """One attempt: the final Result, or a Retry (the state stays here for the next step).

        ``down``: the origin of the next attempt is down (why); no request is made, the download
        goes to its next mirror or fails. ``signal`` and ``retry_after`` then tell what the attempt
        said about its origin (None: no request was made).
        """
        url = self.url
        self.signal = None
        self.retry_after = None
        if down is not None:
            return self._next_mirror(DownloadError(f"not tried: {down}", url=url))
        policy = self.policy
        self.tries += 1
        self.attempts += 1
        try:
            result = await self._attempt(url)
        except _Skip:
            return Result(
                redact_url(self.request.url),
                str(self.target),
                Status.SKIPPED,
                await size_of(self.target) or 0,
                self.attempts,
                None,
                self.request,
            )
        except StorageError as exc:
            self.signal = Signal.ANSWERED
            return self.failed(str(exc))  # disk trouble: no mirror or retry will help
        except DownloadError as exc:
            delay = policy.delay(self.tries, exc, random=self.engine._rng)
            self.signal = signal_of(exc, retried=delay is not None)
            if isinstance(exc, RetryableStatus):
                self.retry_after = exc.retry_after
            slow_mirror = isinstance(exc, SlowError) and self.mirror + 1 < len(self.request.urls)
            if delay is not None and not slow_mirror:
                return Retry(delay, exc)
            return self._next_mirror(exc)  # a slow mirror hands over at once
        self.signal = Signal.OK
        return result

    def _next_mirror(self, error: DownloadError) -> Result | Retry:
        """Hand over to the next mirror (a Retry without delay), or fail with ``error``."""
        self.last_error = error
        if self.mirror + 1 < len(self.request.urls):
            self.mirror += 1
            self.tries = 0
            return Retry(0.0, error)
        last = self.last_error
        prefix = f"{redact_url(last.url)}: " if last.url and len(self.request.urls) > 1 else ""
        return self.failed(prefix + str(last))

    async def _resume_point(self) -> tuple[PartialState | None, int, Validator | None, PieceMap | None]:
        """What is on disk: (state, offset to resume at, validator, the pieces of a segmented file)."""
        temp = self.temp.path
        if self.attempts == 1 and not await self.engine.exists(temp.parent, temp.name, exact=self.recheck):
            return None, 0, None, None  # no earlier run left a partial file (known without a thread hop)
        state = await self.temp.inspect()
        if state is None or state.size == 0 or state.meta is None:
            return state, 0, None, None
        meta = state.meta
        validator = Validator(etag=meta.etag, last_modified=meta.last_modified)
        if validator.if_range is None or (meta.size is not None and state.size > meta.size):
            # Without a strong validator a resumed file could mix two versions: start over.
            return state, 0, None, None
        if meta.pieces is not None:
            # A segmented file is pre-sized: only its recorded pieces count.
            pieces = PieceMap.from_json(meta.size or 0, meta.pieces) if meta.size else None
            if pieces is None or state.size != meta.size:
                return state, 0, None, None
            return state, pieces.prefix_bytes(), validator, pieces
        return state, state.size, validator, None

    async def _attempt(self, url: str) -> Result:
        state, offset, validator, pieces = await self._resume_point()
        try:
            if self.connections > 1 and (offset == 0 or pieces is not None):
                try:
                    return await self._attempt_segmented(url, state, validator, pieces)
                except _OneStream:
                    offset, validator = 0, None
            async with open_body(
                self.engine.session,
                url,
                offset=offset,
                validator=validator,
                headers=self.headers,
                hop=self.hop,
            ) as body:
                return await self._receive(url, body, state, offset)
        except BaseException:
            # Keep what arrived for the next attempt or run, without hiding the original error.
            # (the error that ended the attempt is the one to report)
            with contextlib.suppress(Exception):
                await asyncio.shield(self.temp.close())
            raise

    async def _attempt_segmented(
        self, url: str, state: PartialState | None, validator: Validator | None, pieces: PieceMap | None
    ) -> Result:
        """Fetch the file as pieces over several connections; small or unrangeable files in one stream.

        The first request asks for the first piece only: its answer tells the size, the validator
        and whether ranges work, with no extra HEAD request.
        """
        engine = self.engine
        progress = engine.progress
        on_bytes = self._on_bytes
        floor = None
        if self.speed_floor_bps:
            # The attempt's rate over all its connections, as aria2c's --lowest-speed-limit: below
            # the floor for a window, the whole attempt is cut (the pieces done stay on disk).
            floor = SpeedFloor(self.speed_floor_bps, engine.settings.speed_window_s)
            got = 0

            async def on_bytes(n: int) -> None:
                nonlocal got
                await self._on_bytes(n)
                got += n
                slow = floor.too_slow(got)
                if slow is not None:
                    raise self._too_slow(slow, floor, url)

        if pieces is None:
            async with open_body(
                engine.session, url, offset=0, end=PIECE_SIZE - 1, headers=self.headers, hop=self.hop
            ) as body:
                total = body.range_total
                if not (
                    body.status == 206
                    and body.range_start == 0
                    and total is not None
                    and total > PIECE_SIZE
                    and body.validator.if_range is not None
                ):
                    if body.status == 206 and body.total_size != body.content_length:
                        # Ranges work, but without a validator pieces could mix two versions.
                        raise _OneStream()
                    return await self._receive(url, body, state, 0)  # the whole file is in this answer
                await self._maybe_rename(body)
                await self._check_size(total, url)
                validator = body.validator
                pieces = PieceMap(total)
                meta = ResumeMeta(
                    url=url,
                    etag=body.etag,
                    last_modified=body.last_modified,
                    size=total,
                    pieces=pieces.to_json(),
                )
                await self.temp.begin_sparse(total, meta, keep=False)
                progress.begin(self.key, done=0, total=total)
                await write_piece(
                    body,
                    0,
                    PIECE_SIZE,
                    write_at=self.temp.write_at,
                    on_bytes=on_bytes,
                    splice=self._splice_into(floor),
                )
            pieces.mark_done(0)
            await self.temp.save_meta(dataclasses.replace(meta, pieces=pieces.to_json()))
        else:
            assert state is not None and state.meta is not None
            meta = state.meta
            await self.temp.begin_sparse(pieces.total, meta, keep=True)
            progress.begin(self.key, done=pieces.bytes_done(), total=pieces.total)
        done_pieces = pieces

        async def piece_done(_index: int) -> None:
            await self.temp.save_meta(dataclasses.replace(meta, pieces=done_pieces.to_json()))

        def open_piece(start: int, end: int) -> AbstractAsyncContextManager[Body]:
            # Each piece asks the original URL (redirects are followed again), so that user
            # headers keep going only to the origin the user named.
            return open_body(
                engine.session,
                url,
                offset=start,
                end=end,
                validator=validator,
                headers=self.headers,
                hop=self.hop,
            )

        try:
            await fetch_pieces(
                pieces,
                open_piece=open_piece,
                write_at=self.temp.write_at,
                on_bytes=on_bytes,
                on_piece_done=piece_done,
                connections=self.connections,
                max_failures=max(1, min(self.policy.retries, _UNLIMITED_RETRIES)) * self.connections,
                splice=self._splice_into(floor),
            )
        except FileChanged:
            await self.temp.discard()
            raise
        checksum = self.request.checksum
        hasher = await hash_prefix(self.temp.path, pieces.total, checksum.algorithm) if checksum else None
        return await self._finish(url, hasher, pieces.total)

    def _splice_into(self, floor: SpeedFloor | None) -> SpliceInto | None:
        """Where the pieces may be spliced: the pre-sized file, unless a rate limit or a speed floor
        applies (spliced bytes are not seen by either)."""
        if self.limiter is not None or floor is not None:
            return None

        def landed(n: int) -> None:
            self.engine.progress.advance(self.key, n)
            self.received += n

        return SpliceInto(self.temp.sparse_fd, self.engine.session.timeout.sock_read, landed)

    async def _on_bytes(self, n: int) -> None:
        if self.limiter is not None:
            await self.limiter.take(n)
        self.engine.progress.advance(self.key, n)
        self.received += n
        if self.on_proven is not None and self.received >= PROVEN_BYTES:
            self._proven()

    async def _receive(self, url: str, body: Body, state: PartialState | None, offset: int) -> Result:
        if body.status == 416:
            return await self._range_not_satisfiable(url, body, state, offset)
        if body.status == 206:
            if body.range_start != offset:
                await self.temp.discard()
                raise ConnectError(
                    f"server answered a range from byte {body.range_start}, not {offset}; restarting", url=url
                )
            start = offset
        else:
            start = 0  # 200: the whole body (If-Range failed, or ranges unsupported)
        await self._maybe_rename(body)
        total = body.total_size
        await self._check_size(total, url)
        checksum = self.request.checksum
        limiter = self.limiter
        settings = self.engine.settings
        max_size = settings.max_filesize
        floor = SpeedFloor(self.speed_floor_bps, settings.speed_window_s) if self.speed_floor_bps else None
        # A spliced body never passes through Python: its checksum is computed from the file, as it
        # grows (see _splice below) or, when the splice turns out impossible after all (the first
        # bytes were taken already), at the end. A speed floor is watched chunk by chunk here.
        splice = limiter is None and floor is None and body.splice_candidate
        hasher: Any = None
        if checksum is not None and not splice:
            hasher = (
                await hash_prefix(self.temp.path, start, checksum.algorithm)
                if start
                else hashlib.new(checksum.algorithm)
            )
        meta = ResumeMeta(url=url, etag=body.etag, last_modified=body.last_modified, size=total)
        await self.temp.begin(start, meta)
        progress = self.engine.progress
        progress.begin(self.key, done=start, total=total)
        temp = self.temp
        key = self.key
        if splice and await self._splice(body):
            return await self._finish(url, self._spliced_hash, temp.position)
        got = 0
        watch = floor is not None or self.on_proven is not None
        async for chunk in body.chunks():
            n = len(chunk)
            if max_size is not None and temp.position + n > max_size:
                await self._check_size(temp.position + n, url, received=True)
            if limiter is not None:
                await limiter.take(n)
            await temp.write(chunk)
            if watch:
                got += n
                if got >= PROVEN_BYTES:
                    self._proven()
                    watch = floor is not None
            if floor is not None:
                slow = floor.too_slow(got)
                if slow is not None:
                    raise self._too_slow(slow, floor, url)
            if hasher is not None:
                hasher.update(chunk)
            progress.advance(key, n)
            self.received += n
        size = temp.position
        if total is not None and size != total:
            raise IncompleteBody(
                f"body cut short: {size} of {total} bytes", received=size, expected=total, url=url
            )
        if splice:
            hasher = await self._hash_file()
        return await self._finish(url, hasher, size)

    @staticmethod
    def _too_slow(rate: float, floor: SpeedFloor, url: str) -> SlowError:
        return SlowError(
            f"too slow: {format_bytes(rate)}/s over {floor.window_s:g} s, below the speed "
            f"floor of {format_bytes(floor.min_bps)}/s",
            url=url,
        )

    def _proven(self) -> None:
        """This attempt brought PROVEN_BYTES: tell the scheduler (once)."""
        proven, self.on_proven = self.on_proven, None
        if proven is not None:
            proven()

    async def _check_size(self, size: int | None, url: str, *, received: bool = False) -> None:
        """Fail at once (temporary file removed, no retry) when ``size`` is over --max-filesize."""
        limit = self.engine.settings.max_filesize
        if limit is None or size is None or size <= limit:
            return
        await self.temp.discard()
        how = "received" if received else "declared"
        raise FileTooLarge(
            f"file larger than the size limit of {format_bytes(limit)} (--max-filesize): {size} bytes {how}",
            limit=limit,
            url=url,
        )

    async def _hash_file(self) -> Any:
        """The checksum's hash of the whole temporary file (None without a checksum)."""
        checksum = self.request.checksum
        if checksum is None:
            return None
        await self.temp.raw_fd()  # everything written, nothing left in buffers
        return await hash_prefix(self.temp.path, self.temp.position, checksum.algorithm)

    async def _splice(self, body: Body) -> bool:
        """The body's rest from the socket straight into the file (see _splice); False: not possible."""
        buffered, sock = body.detach()
        temp = self.temp
        progress = self.engine.progress
        key = self.key
        if buffered:
            await temp.write(buffered)
            progress.advance(key, len(buffered))
            self.received += len(buffered)
        if sock is None:
            return False
        out = await temp.raw_fd()
        checksum = self.request.checksum
        # The checksum is computed on the other core as the file grows: no pass over it at the end.
        try:
            follower = HashFollower(temp.path, checksum.algorithm) if checksum is not None else None
        except RuntimeError as exc:  # no thread to be had: another attempt resumes from the disk
            raise TransientError(f"cannot start a thread: {exc}", url=body.url) from exc

        def wrote(n: int) -> None:
            if self.on_proven is not None and self.received >= PROVEN_BYTES:
                self._proven()
            temp.wrote(n)
            progress.advance(key, n)
            self.received += n
            if follower is not None:
                follower.advance(temp.position)

        try:
            if follower is not None:
                follower.advance(temp.position)  # what earlier attempts and aiohttp's buffer left
            await body.splice_rest(
                out, offset=temp.position, stall_timeout=self.engine.session.timeout.sock_read, on_bytes=wrote
            )
            if follower is not None:
                self._spliced_hash = await follower.result(temp.position)
        except WriteFailed as exc:
            cause = exc.__cause__
            assert isinstance(cause, OSError)
            raise storage_error(cause, "write", temp.path) from cause
        finally:
            if follower is not None:
                follower.abandon()  # ends the thread if the hash was not taken
        return True

    async def _finish(self, url: str, hasher: Any, size: int) -> Result:
        checksum = self.request.checksum
        if checksum is not None:
            assert hasher is not None, "every path to a finished download with a checksum hashes it"
            actual = hasher.hexdigest()
            if actual != checksum.hexdigest:
                await self.temp.discard()
                raise ChecksumMismatch(
                    f"{checksum.algorithm} mismatch: expected {checksum.hexdigest}, got {actual}",
                    algorithm=checksum.algorithm,
                    expected=checksum.hexdigest,
                    actual=actual,
                    url=url,
                )
        if self.engine.settings.shared_dest:
            await self._commit_shared()
        elif not await self.temp.commit(self.target, replace=self.overwrite):
            raise _Skip()
        return Result(
            redact_url(self.request.url), str(self.target), Status.OK, size, self.attempts, None, self.request
        )

    async def _range_not_satisfiable(
        self, url: str, body: Body, state: PartialState | None, offset: int
    ) -> Result:
        if offset == 0:
            raise HTTPStatusError("HTTP 416 Range Not Satisfiable", status=416, url=url)
        remote = body.range_total
        known = state.meta.size if state is not None and state.meta is not None else None
        if state is not None and remote is not None and state.size == remote and known in (None, remote):
            # Everything was already on disk: verify and commit it.
            checksum = self.request.checksum
            hasher = await hash_prefix(self.temp.path, state.size, checksum.algorithm) if checksum else None
            await self.temp.begin(state.size, state.meta or ResumeMeta(url=url, size=remote))
            return await self._finish(url, hasher, state.size)
        await self.temp.discard()
        raise ConnectError("HTTP 416 for the resume offset: the remote file changed; restarting", url=url)

    async def _maybe_rename(self, body: Body) -> None:
        """Use the Content-Disposition name when no out= was given (once per download)."""
        if self.plan.name_fixed or self.renamed or not body.content_disposition:
            return
        self.renamed = True
        name = name_from_content_disposition(body.content_disposition)
        if not name or name == self.plan.name:
            return
        registry = self.engine.registry
        self.server_name = name
        self.target = self.plan.directory / registry.claim(self.plan.directory, name)
        if self.engine.settings.shared_dest:
            # Our own earlier file under this name would have been found by its record before the
            # request (or may be replaced with --overwrite): a file there now is another download's.
            # Another worker may still take the name before our commit, which then moves on to the
            # next suffix (_commit_shared): a file found there is never a reason to skip.
            mine = await load_final_name(self.temp.path) if self.overwrite else None
            directory = self.plan.directory
            while self.target.name != mine and await self.engine.exists(
                directory, self.target.name, exact=True
            ):
                self.target = self.plan.directory / registry.claim(self.plan.directory, name)
            self.engine.progress.rename(self.key, self.target.name)
            return
        self.engine.progress.rename(self.key, self.target.name)
        if not self.overwrite and await self.engine.exists(self.target.parent, self.target.name):
            raise _Skip()

    async def _commit_shared(self) -> None:
        """Commit when other workers write into the same directory (Settings.shared_dest).

        A planned name is this download's alone (the driver's registry): as in a local run, the
        target is replaced with --overwrite, and found there already means complete (a retried
        shard whose first worker committed it before dying). A Content-Disposition name may be
        another worker's: never replaced, and when taken the file moves on to the next suffix.
        """
        overwrite = self.overwrite
        if self.server_name is None:
            if not await self.temp.commit(self.target, replace=overwrite):
                raise _Skip()
            return
        mine = await load_final_name(self.temp.path) if overwrite else None
        registry = self.engine.registry
        while not await self.temp.commit(
            self.target, replace=self.target.name == mine, keep_on_conflict=True
        ):
            self.target = self.plan.directory / registry.claim(self.plan.directory, self.server_name)
            self.engine.progress.rename(self.key, self.target.name)
        await save_final_name(self.temp.path, self.target.name)
