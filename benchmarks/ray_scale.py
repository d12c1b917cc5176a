"""Scale-out on Ray, measured: (a) files/s with 1, 2, 4 workers next to a local run; (b) the driver's ceiling.

    python benchmarks/ray_scale.py                 # both parts, a Markdown table on stdout
    python benchmarks/ray_scale.py --only a --files 2000 --workers 1,2
    python benchmarks/ray_scale.py --only b --urls 1000000

(a) A server that answers every request after a delay (default 50 ms, 1 KiB bodies) is downloaded from by
    a local run (`-j 16`) and by Ray runs of 1, 2 and 4 workers of `-j 16` each, on a local Ray instance
    started here, for --rounds rounds (the runs of a round one after the other; the table gives medians and
    the range). Files/s is timed from the first request to the last result, after a warm-up batch of one
    shard per worker, so that every worker has started and opened its connections before the clock runs
    (their start-up is shown apart). Output in /dev/shm when it exists, so the disk does not set the pace.
    This measures the client side's scaling, so the server must not be the bottleneck: on a small machine
    it shares the cores with the workers, the driver and Ray's own processes, and every CPU second it takes
    is one the workers do not get. So it is a minimal HTTP/1.1 keep-alive server (asyncio.Protocol, in a
    subprocess of its own, on 127.0.0.1) that parses just the request heads and answers each with
    `loop.call_later(delay, ...)`: about 0.1 ms of CPU per request on a 2-core machine, where the aiohttp
    web app it replaces took 0.25-0.45 ms (and the workers take 0.6-0.9 ms per file).
    The table also gives the CPU time per file of the processes that download (the workers, or the local
    run's own process), of the driver of Ray runs and of the server (read from /proc, Linux only), and how
    busy the whole machine was during the timed part (all processes, other users' included: a noisy
    machine shows here).
(b) The driver alone: a subprocess reads a list of N URLs (default 1,000,000) with the list parser, plans
    the names, cuts shards, dispatches them to dry-run workers (actors that answer each shard at once with a
    record per URL, without any network or disk) and collects the records into Results and a report written
    to /dev/null. It prints URLs/s and its own peak RSS (getrusage).

Needs `pip install 'asyncdl[ray]'`. Every process started here is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncdl
from asyncdl import Downloader
from asyncdl._models import Status
from asyncdl._ray import DownloadWorker, ShardAnswer, ShardSpec
from asyncdl._report import ReportWriter
from asyncdl._urllist import parse_lines

TARGET_OVERHEAD = 0.15  # a 1-worker Ray run within 15% of the local run's files/s
TARGET_SCALING = 3.0  # 4 workers at least 3x 1 worker
TARGET_RSS_MIB = 256
TARGET_CEILING = 100_000


# --- the delayed server (run as a subprocess: --serve) ----------------------------------------------


class _DelayedHTTP(asyncio.Protocol):
    """HTTP/1.1 with keep-alive, GET and HEAD without a request body: each answer after a fixed delay."""

    def __init__(self, delay_s: float, get: bytes, head: bytes) -> None:
        self.delay_s = delay_s
        self.get = get
        self.head = head
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        answers: list[bytes] = []
        close = False
        while not close:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head, buffer = buffer[:end], buffer[end + 4 :]
            line_end = head.find(b"\r\n")
            request_line = head if line_end < 0 else head[:line_end]
            answers.append(self.head if request_line.startswith(b"HEAD ") else self.get)
            fields = head[line_end:].lower() if line_end >= 0 else b""
            if request_line.endswith(b"HTTP/1.0"):
                close = b"\r\nconnection: keep-alive" not in fields
            else:
                close = b"\r\nconnection: close" in fields
        self.buffer = buffer
        if answers:
            # Pipelined requests (one read) are answered together, in order.
            self.loop.call_later(self.delay_s, self.respond, b"".join(answers), close)

    def respond(self, data: bytes, close: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return  # the client went away meanwhile
        transport.write(data)
        if close:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def serve(delay_s: float, body_size: int) -> None:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {body_size}\r\n\r\n"
    get = head.encode() + b"x" * body_size

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _DelayedHTTP(delay_s, get, head.encode()), "127.0.0.1", 0, backlog=4096
        )
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    asyncio.run(main())


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc), None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float] | None:
    """(busy, all) CPU seconds of the whole machine so far, from /proc/stat (idle and iowait are not busy)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:8]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - ticks[3] - ticks[4]) / hz, sum(ticks) / hz


class DelayedServer:
    def __init__(self, delay_ms: float, body_size: int) -> None:
        self.body_size = body_size
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(delay_ms), str(body_size)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def cpu_seconds(self) -> float | None:
        return cpu_seconds(self.proc.pid)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


# --- (a) files/s ---------------------------------------------------------------------------------


def output_root() -> Path:
    return Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())


async def timed_batch(dl: Downloader, urls: list[str], body_size: int | None = None) -> tuple[float, int]:
    """Seconds for the batch, and how many files came back OK (and of ``body_size`` bytes, when given)."""
    started = time.perf_counter()
    ok = 0
    async for result in dl.stream(urls):
        ok += result.status is Status.OK and (body_size is None or result.bytes == body_size)
    return time.perf_counter() - started, ok


async def warm_up(dl: Downloader, urls: list[str], n_workers: int) -> None:
    """Download ``urls`` untimed; say so when some failed or some worker got none of them."""
    ok = 0
    workers: set[int | None] = set()
    async for result in dl.stream(urls):
        ok += result.status is Status.OK
        workers.add(result.worker)
    if ok < len(urls) or len(workers) < max(1, n_workers):
        print(f"  warm-up: {ok} of {len(urls)} OK, on {len(workers)} of {n_workers} workers", file=sys.stderr)


def _delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


async def run_a(server: DelayedServer, run: str, files: int, jobs: int, n_workers: int, shard: int) -> dict:
    """One timed run: ``n_workers`` Ray workers (0: a local run in this process)."""
    dest = Path(tempfile.mkdtemp(prefix="asyncdl-ray-bench-", dir=output_root()))
    try:
        options: dict = {"jobs": jobs}
        if n_workers:
            options.update(ray="auto", workers=n_workers, shard_size=shard)
        started = time.perf_counter()
        async with Downloader(dest, **options) as dl:
            # Warm-up, before the clock runs: one shard per worker (the driver hands the first shards
            # out one per worker), so that every worker has started, opened its session and connections.
            slug = run.replace(" ", "-")
            warm = [server.url(f"/warm/{slug}/{i}") for i in range(n_workers * shard if n_workers else jobs)]
            await warm_up(dl, warm, n_workers)
            pids: list[int] = []
            if dl._cluster is not None:
                pids = list(await asyncio.gather(*(actor.pid.remote() for actor in dl._cluster.actors)))
            startup = time.perf_counter() - started
            urls = [server.url(f"/f/{slug}/{i}.bin") for i in range(files)]
            downloaders = [cpu_seconds(pid) for pid in pids]
            server_cpu, driver_cpu, busy = server.cpu_seconds(), time.process_time(), machine_busy()
            elapsed, ok = await timed_batch(dl, urls, server.body_size)
            busy_after, server_after = machine_busy(), server.cpu_seconds()
            driver_cpu = time.process_time() - driver_cpu
            spent = [_delta(a, cpu_seconds(pid)) for a, pid in zip(downloaders, pids, strict=True)]
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    if not n_workers:
        worker_cpu: float | None = driver_cpu  # the local run downloads in this process
    else:
        worker_cpu = None if None in spent else sum(s for s in spent if s is not None)
    busy_cores = None
    if busy is not None and busy_after is not None:
        busy_cores = (busy_after[0] - busy[0]) / (busy_after[1] - busy[1]) * (os.cpu_count() or 1)
    return {
        "run": run,
        "workers": n_workers,
        "files": files,
        "ok": ok,
        "seconds": elapsed,
        "files_per_s": files / elapsed,
        "startup_s": startup,
        "worker_cpu_s": worker_cpu,
        "driver_cpu_s": driver_cpu if n_workers else None,
        "server_cpu_s": _delta(server_cpu, server_after),
        "busy_cores": busy_cores,
    }


async def measure_a(
    server: DelayedServer, files: int, jobs: int, workers: list[int], shard: int, rounds: int
) -> list[dict]:
    rows = []
    for round_ in range(1, rounds + 1):
        for run, n_workers in [("local", 0), *((f"ray {w}", w) for w in workers)]:
            row = await run_a(server, run, files, jobs, n_workers, shard)
            row["round"] = round_
            rows.append(row)
            per_file = _ms_per_file(row["worker_cpu_s"], files)
            busy = "" if row["busy_cores"] is None else f", machine busy {row['busy_cores']:.2f} cores"
            print(
                f"  round {round_}, {run}: {row['files_per_s']:,.0f} files/s ({row['ok']} ok in "
                f"{row['seconds']:.1f} s; downloaders' CPU {per_file} ms/file{busy})",
                file=sys.stderr,
            )
    return rows


def _ms_per_file(seconds: float | None, files: int) -> str:
    return "" if seconds is None else f"{seconds * 1000 / files:.2f}"


# --- (b) the driver's ceiling (run as a subprocess: --driver) -------------------------------------


class DryRunWorker(DownloadWorker):
    """Answers each shard at once, every download "skipped" at its planned path, without network or disk."""

    async def run_shard(self, spec: ShardSpec) -> ShardAnswer:
        n = len(spec[0])
        return "s" * n, [0] * n, [0] * n, {}, {}, self.incarnation, 0


def url_lines(n: int) -> Iterator[str]:
    for i in range(n):
        yield f"http://127.0.0.1:9/data/{i // 1000}/file-{i}.bin\n"


async def drive(n: int, workers: int, shard: int) -> dict:
    import ray

    # The workers cannot import this script: ship the dry-run class by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    dest = Path(tempfile.mkdtemp(prefix="asyncdl-ray-driver-", dir=output_root()))
    dl = Downloader(dest, ray="auto", workers=workers, shard_size=shard)
    assert dl._cluster is not None
    dl._cluster.worker_class = DryRunWorker
    count = 0
    report = ReportWriter(os.devnull)
    async with dl:
        await timed_batch(dl, [f"http://127.0.0.1:9/warm/{i}" for i in range(workers)])

        # As the command line hands over a list file: the parser's plain iterator.
        requests = parse_lines(url_lines(n), source="list")
        started = time.perf_counter()
        cpu_started = time.process_time()
        async for result in dl.stream(requests):
            report.write(result)
            count += 1
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    report.close()
    shutil.rmtree(dest, ignore_errors=True)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "urls": count,
        "seconds": elapsed,
        "urls_per_s": count / elapsed,
        "cpu_s": cpu,
        "urls_per_cpu_s": count / cpu,
        "peak_rss_mib": peak_kib / 1024,
    }


def measure_b(n: int, workers: int, shard: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--driver", str(n), str(workers), str(shard)],
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--serve"]:
        serve(float(argv[1]) / 1000, int(argv[2]))
        return 0
    if argv[:1] == ["--driver"]:
        import ray

        ray.init(address="auto", log_to_driver=False, configure_logging=False)
        print(json.dumps(asyncio.run(drive(int(argv[1]), int(argv[2]), int(argv[3])))))
        return 0

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--only", choices=["a", "b"], help="run one part only")
    parser.add_argument("--files", type=int, default=4000, help="(a) files per run (default 4000)")
    parser.add_argument("--delay-ms", type=float, default=50, help="(a) server delay per response (50)")
    parser.add_argument("--jobs", type=int, default=16, help="(a) -j of each worker and of the local run")
    parser.add_argument("--workers", default="1,2,4", help="(a) worker counts (default 1,2,4)")
    parser.add_argument("--shard-size", type=int, default=250, help="(a) shard size (default 250)")
    parser.add_argument("--rounds", type=int, default=3, help="(a) rounds of all runs (default 3)")
    parser.add_argument("--urls", type=int, default=1_000_000, help="(b) list length (default 1,000,000)")
    parser.add_argument("--driver-workers", type=int, default=4, help="(b) dry-run workers (default 4)")
    parser.add_argument("--driver-shard-size", type=int, default=1000, help="(b) shard size (default 1000)")
    args = parser.parse_args(argv)

    import ray

    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    print(f"asyncdl {asyncdl.__version__}, ray {ray.__version__}, {os.cpu_count()} CPUs", file=sys.stderr)
    rows: list[dict] = []
    ceiling: dict | None = None
    try:
        if args.only in (None, "a"):
            server = DelayedServer(args.delay_ms, 1024)
            try:
                workers = [int(w) for w in args.workers.split(",")]
                rows = asyncio.run(
                    measure_a(server, args.files, args.jobs, workers, args.shard_size, args.rounds)
                )
            finally:
                server.close()
        if args.only in (None, "b"):
            ceiling = measure_b(args.urls, args.driver_workers, args.driver_shard_size)
    finally:
        ray.shutdown()
    print_tables(rows, ceiling, args)
    return 0


def print_tables(rows: list[dict], ceiling: dict | None, args: argparse.Namespace) -> None:
    if rows:
        runs: dict[str, list[dict]] = {}
        for r in rows:
            runs.setdefault(r["run"], []).append(r)
        rate = {run: statistics.median([r["files_per_s"] for r in rs]) for run, rs in runs.items()}
        local = rate.get("local")
        one = rate.get("ray 1")
        rounds = max(r["round"] for r in rows)
        print(
            f"\n(a) {args.files} files of 1 KiB, server delay {args.delay_ms:.0f} ms, -j {args.jobs} each, "
            f"median of {rounds} round{'s' if rounds > 1 else ''} (range)\n"
        )
        print(
            "| run | files/s | vs local | vs 1 worker | worker start-up | downloaders' CPU per file "
            "| driver's | server's | machine busy |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for run, rs in runs.items():
            workers = rs[0]["workers"]
            rates = [r["files_per_s"] for r in rs]
            spread = f" ({min(rates):,.0f}-{max(rates):,.0f})" if len(rs) > 1 else ""
            vs_local = f"{rate[run] / local:.2f}x" if local else ""
            vs_one = f"{rate[run] / one:.2f}x" if one and workers else ""
            start = f"{statistics.median([r['startup_s'] for r in rs]):.1f} s" if workers else ""
            cpu = []
            for key in ("worker_cpu_s", "driver_cpu_s", "server_cpu_s"):
                values = [r[key] * 1000 / r["files"] for r in rs if r[key] is not None]
                cpu.append(f"{statistics.median(values):.2f} ms" if values else "")
            busy_values = [r["busy_cores"] for r in rs if r["busy_cores"] is not None]
            busy = f"{statistics.median(busy_values):.2f} of {os.cpu_count()} cores" if busy_values else ""
            failed = sum(r["files"] - r["ok"] for r in rs)
            note = f" ({failed} not OK)" if failed else ""
            print(
                f"| {run}{note} | {rate[run]:,.0f}{spread} | {vs_local} | {vs_one} | {start} | "
                f"{' | '.join(cpu)} | {busy} |"
            )
    if ceiling is not None:
        print(f"\n(b) driver: {ceiling['urls']:,} URLs, dry-run workers, list parsed, report written\n")
        print("| URLs/s | URLs per CPU second | peak RSS | time |")
        print("| ---: | ---: | ---: | ---: |")
        rate, rss, seconds = ceiling["urls_per_s"], ceiling["peak_rss_mib"], ceiling["seconds"]
        per_cpu = ceiling["urls_per_cpu_s"]
        print(f"| {rate:,.0f} | {per_cpu:,.0f} | {rss:.0f} MiB | {seconds:.1f} s |")
        one_worker = [r["files_per_s"] for r in rows if r["workers"] == 1]
        per_worker = statistics.median(one_worker) if one_worker else None
        if per_worker:
            nodes = ceiling["urls_per_s"] / per_worker
            print(f"\nOne driver can feed about {nodes:,.0f} workers at the 1-worker rate of (a).")


if __name__ == "__main__":
    raise SystemExit(main())
