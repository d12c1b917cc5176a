"""Scale-out on Ray, measured: (a) files/s with 1, 2, 4 workers next to a local run; (b) the driver's ceiling.

    python benchmarks/ray_scale.py                 # both parts, a Markdown table on stdout
    python benchmarks/ray_scale.py --only a --files 2000 --workers 1,2
    python benchmarks/ray_scale.py --only b --urls 1000000

(a) A server that answers every request after a delay (default 50 ms, 1 KiB bodies; aiohttp in a subprocess
    of its own) is downloaded from by a local run (`-j 16`) and by Ray runs of 1, 2 and 4 workers of `-j 16`
    each, on a local Ray instance started here. Files/s is timed from the first request to the last result,
    after a warm-up batch that starts the workers (their start-up is shown apart). Output in /dev/shm when
    it exists, so the disk does not set the pace.
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
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
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


def serve(delay_s: float, body_size: int) -> None:
    from aiohttp import web

    body = b"x" * body_size

    async def handle(request: web.Request) -> web.Response:
        await asyncio.sleep(delay_s)
        return web.Response(body=body)

    async def main() -> None:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(port, flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


class DelayedServer:
    def __init__(self, delay_ms: float, body_size: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(delay_ms), str(body_size)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


# --- (a) files/s ---------------------------------------------------------------------------------


def output_root() -> Path:
    return Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())


async def timed_batch(dl: Downloader, urls: list[str]) -> tuple[float, int]:
    started = time.perf_counter()
    ok = 0
    async for result in dl.stream(urls):
        ok += result.status is Status.OK
    return time.perf_counter() - started, ok


async def measure_a(
    server: DelayedServer, files: int, jobs: int, workers: list[int], shard: int
) -> list[dict]:
    rows = []
    for run, n_workers in [("local", 0), *((f"ray {w}", w) for w in workers)]:
        dest = Path(tempfile.mkdtemp(prefix="asyncdl-ray-bench-", dir=output_root()))
        try:
            options: dict = {"jobs": jobs}
            if n_workers:
                options.update(ray="auto", workers=n_workers, shard_size=shard)
            started = time.perf_counter()
            async with Downloader(dest, **options) as dl:
                # Warm-up: starts the workers (and the session) before the clock runs.
                warm = [server.url(f"/warm/{run}/{i}") for i in range(max(1, n_workers) * jobs)]
                await timed_batch(dl, warm)
                startup = time.perf_counter() - started
                urls = [server.url(f"/f/{i}.bin") for i in range(files)]
                elapsed, ok = await timed_batch(dl, urls)
            rows.append(
                {
                    "run": run,
                    "workers": n_workers,
                    "files": files,
                    "ok": ok,
                    "seconds": elapsed,
                    "files_per_s": files / elapsed,
                    "startup_s": startup,
                }
            )
            print(f"  {run}: {files / elapsed:,.0f} files/s ({ok} ok in {elapsed:.1f} s)", file=sys.stderr)
        finally:
            shutil.rmtree(dest, ignore_errors=True)
    return rows


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

        async def requests() -> AsyncIterator[object]:
            for item in parse_lines(url_lines(n), source="list"):
                yield item

        started = time.perf_counter()
        cpu_started = time.process_time()
        async for result in dl.stream(requests()):  # type: ignore[arg-type]
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
                rows = asyncio.run(measure_a(server, args.files, args.jobs, workers, args.shard_size))
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
        local = next((r for r in rows if r["workers"] == 0), None)
        one = next((r for r in rows if r["workers"] == 1), None)
        print(
            f"\n(a) {args.files} files of 1 KiB, server delay {args.delay_ms:.0f} ms, -j {args.jobs} each\n"
        )
        print("| run | files/s | vs local | vs 1 worker | worker start-up |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for r in rows:
            vs_local = f"{r['files_per_s'] / local['files_per_s']:.2f}x" if local else ""
            vs_one = f"{r['files_per_s'] / one['files_per_s']:.2f}x" if one and r["workers"] else ""
            start = f"{r['startup_s']:.1f} s" if r["workers"] else ""
            print(f"| {r['run']} | {r['files_per_s']:,.0f} | {vs_local} | {vs_one} | {start} |")
    if ceiling is not None:
        print(f"\n(b) driver: {ceiling['urls']:,} URLs, dry-run workers, list parsed, report written\n")
        print("| URLs/s | URLs per CPU second | peak RSS | time |")
        print("| ---: | ---: | ---: | ---: |")
        rate, rss, seconds = ceiling["urls_per_s"], ceiling["peak_rss_mib"], ceiling["seconds"]
        per_cpu = ceiling["urls_per_cpu_s"]
        print(f"| {rate:,.0f} | {per_cpu:,.0f} | {rss:.0f} MiB | {seconds:.1f} s |")
        per_worker = next((r["files_per_s"] for r in rows if r["workers"] == 1), None)
        if per_worker:
            nodes = ceiling["urls_per_s"] / per_worker
            print(f"\nOne driver can feed about {nodes:,.0f} workers at the 1-worker rate of (a).")


if __name__ == "__main__":
    raise SystemExit(main())
