"""Many hosts, one bad: asyncdl beside curl and aria2c on a list that mixes healthy and misbehaving origins.

    python benchmarks/many_hosts.py                  # one round of each tool, with and without bad origins
    python benchmarks/many_hosts.py --rounds 3 --tools asyncdl,curl
    python benchmarks/many_hosts.py --quick          # smaller, shorter waits: a smoke test

The list (every origin a loopback address of its own):
- four healthy origins, 127.0.0.2-5, served by nginx: 400 files of 16 KiB and one of 64 MiB each;
- four bad origins, 16 URLs each, mixed evenly through the list: 127.0.0.6 answers every URL's first
  request with ``429 Retry-After: 30`` (then 200), 127.0.0.7 accepts connections and never answers (a
  black hole), 127.0.0.8 sends 16 KiB at one byte a second, and 127.0.0.9 refuses connections (nothing
  listens on its port). The bad origins are served by this script (a thread with its own event loop).

Every tool runs with 16 at once, 5 retries, a 10 s stall timeout and a 1 KiB/s speed floor, as alike as
their options allow:
  asyncdl  -j 16 --retries 5 --timeout 10 --lowest-speed-limit 1K
  curl     --parallel --parallel-max 16 --retry 5 --retry-connrefused -y 10 -Y 1024
  aria2c   -i LIST -j 16 --max-tries=6 --timeout=10 --lowest-speed-limit=1K

Measured per run: when the healthy origins' last file was served (nginx's access log, $msec of the last
answer, from the start of the run), the run's wall time, and the downloads ok. Output goes to a temporary
directory on the root file system. Needs nginx; standard library only. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
KiB, MiB = 1024, 1024 * 1024
HEALTHY = [f"127.0.0.{i}" for i in range(2, 6)]
LIMITED, BLACK_HOLE, TRICKLE, REFUSED = "127.0.0.6", "127.0.0.7", "127.0.0.8", "127.0.0.9"
ALL_TOOLS = ("asyncdl", "curl", "aria2c")

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    default_type application/octet-stream;
    types {{ }}
    sendfile on;
    tcp_nopush on;
    log_format t '$msec $status $request_uri';
    access_log {prefix}/access.log t;
    keepalive_requests 1000000;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        {listen}
        root {www};
    }}
}}
"""


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Scenario:
    small_files: int = 400
    small_size: int = 16 * KiB
    large_size: int = 64 * MiB
    bad_each: int = 16
    retry_after_s: int = 30
    trickle_size: int = 16 * KiB


# --- the bad origins ----------------------------------------------------------------------------------


class BadOrigins:
    """The three bad origins that listen (429 storm, black hole, trickle), in a thread of their own."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.port = free_port(LIMITED)
        self.seen_429: set[str] = set()
        self.loop = asyncio.new_event_loop()
        self._servers: list[asyncio.Server] = []
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> None:
        for host, handler in ((LIMITED, self._limited), (BLACK_HOLE, self._hole), (TRICKLE, self._trickle)):
            self._servers.append(await asyncio.start_server(handler, host, self.port))

    def reset(self) -> None:
        self.seen_429.clear()

    def stop(self) -> None:
        async def close() -> None:
            for server in self._servers:
                server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    @staticmethod
    async def _request(reader: asyncio.StreamReader) -> str | None:
        """The path of the next request on the connection (None when the client closed it)."""
        line = await reader.readline()
        if not line:
            return None
        while (await reader.readline()).strip():
            pass
        parts = line.split()
        return parts[1].decode() if len(parts) > 1 else "/"

    async def _limited(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while (path := await self._request(reader)) is not None:
                body = b"x" * self.scenario.small_size
                if path not in self.seen_429:
                    self.seen_429.add(path)
                    head = f"HTTP/1.1 429 Too Many Requests\r\nRetry-After: {self.scenario.retry_after_s}\r\n"
                    body = b"slow down\n"
                else:
                    head = "HTTP/1.1 200 OK\r\n"
                writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
        writer.close()

    async def _hole(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while await reader.read(65536):
                pass  # never a byte back
        writer.close()

    async def _trickle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            if await self._request(reader) is None:
                return
            size = self.scenario.trickle_size
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
            for _ in range(size):
                writer.write(b"t")
                await writer.drain()
                await asyncio.sleep(1.0)
        writer.close()


# --- the run ------------------------------------------------------------------------------------------


@dataclass
class Setup:
    work: Path
    nginx_port: int
    bad_port: int
    refused_port: int
    healthy_urls: list[str]
    bad_urls: list[str]
    lists: dict[bool, Path] = field(default_factory=dict)  # with bad origins? -> URL list
    aria2_lists: dict[bool, Path] = field(default_factory=dict)  # the same with out= (names repeat)
    curl_configs: dict[bool, Path] = field(default_factory=dict)


def make_data(work: Path, scenario: Scenario) -> Path:
    www = work / "www"
    for index, _host in enumerate(HEALTHY):
        folder = www / f"h{index}"
        folder.mkdir(parents=True)
        for i in range(scenario.small_files):
            (folder / f"s{i:04d}.bin").write_bytes(os.urandom(scenario.small_size))
        with open(folder / "large.bin", "wb") as large:
            for _ in range(scenario.large_size // MiB):
                large.write(os.urandom(MiB))
    work.chmod(0o755)
    return www


def make_lists(setup: Setup, out_root: Path) -> None:
    healthy, bad = setup.healthy_urls, setup.bad_urls
    # The bad URLs spread evenly through the healthy ones.
    mixed: list[str] = []
    positions = {round(k * len(healthy) / len(bad)): url for k, url in enumerate(bad)} if bad else {}
    for i, url in enumerate(healthy):
        if i in positions:
            mixed.append(positions[i])
        mixed.append(url)
    for with_bad, urls in ((True, mixed), (False, healthy)):
        name = "mixed" if with_bad else "healthy"
        listing = setup.work / f"{name}.urls"
        listing.write_text("\n".join(urls) + "\n")
        setup.lists[with_bad] = listing
        # Names repeat between origins (s0000.bin on each): aria2c, told not to rename, gets distinct ones.
        aria2 = setup.work / f"{name}.aria2"
        aria2.write_text(
            "".join(f"{url}\n  out={i:05d}-{url.rsplit('/', 1)[1]}\n" for i, url in enumerate(urls))
        )
        setup.aria2_lists[with_bad] = aria2
        config = setup.work / f"{name}.curl"
        with open(config, "w") as handle:
            for i, url in enumerate(urls):
                handle.write(f'url = "{url}"\noutput = "{out_root}/{i:05d}-{url.rsplit("/", 1)[1]}"\n')
        setup.curl_configs[with_bad] = config


def command(tool: str, setup: Setup, with_bad: bool, out: Path, python: str) -> list[str]:
    listing = str(setup.lists[with_bad])
    if tool == "asyncdl":
        return [
            python,
            "-m",
            "asyncdl",
            listing,
            "-d",
            str(out),
            "-j",
            "16",
            "-q",
            "--retries",
            "5",
            "--timeout",
            "10",
            "--lowest-speed-limit",
            "1K",
        ]
    if tool == "curl":
        return [
            "curl",
            "--parallel",
            "--parallel-max",
            "16",
            "-s",
            "--retry",
            "5",
            "--retry-connrefused",
            "-y",
            "10",
            "-Y",
            "1024",
            "-K",
            str(setup.curl_configs[with_bad]),
        ]
    if tool == "aria2c":
        return [
            "aria2c",
            "-q",
            "-i",
            str(setup.aria2_lists[with_bad]),
            "-j",
            "16",
            "-d",
            str(out),
            "--max-tries=6",
            "--timeout=10",
            "--lowest-speed-limit=1K",
            "--allow-overwrite=true",
            "--auto-file-renaming=false",
        ]
    raise ValueError(tool)


@dataclass
class Run:
    tool: str
    with_bad: bool
    wall_s: float
    healthy_done_s: float | None
    files: int
    exit_code: int | None  # None: killed at --limit


def last_healthy_answer(access_log: Path, since: float) -> float | None:
    """Seconds from ``since`` to the last 200 nginx served (every healthy answer comes from nginx)."""
    last = None
    for line in access_log.read_text().splitlines():
        stamp, status, *_ = line.split()
        moment = float(stamp)
        if status == "200" and moment >= since:
            last = moment if last is None else max(last, moment)
    return None if last is None else last - since


def run_once(
    tool: str, setup: Setup, with_bad: bool, python: str, bad: BadOrigins, env: dict[str, str], limit_s: float
) -> Run:
    out = setup.work / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    access_log = setup.work / "nginx" / "access.log"
    access_log.write_text("")
    os.kill(int((setup.work / "nginx" / "nginx.pid").read_text()), 10)  # SIGUSR1: reopen the log
    time.sleep(0.2)
    bad.reset()
    os.sync()
    started = time.time()
    proc = subprocess.Popen(
        command(tool, setup, with_bad, out, python),
        cwd=out,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        code: int | None = proc.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)  # still going at the limit: the run is reported as killed
        proc.wait(10)
        code = None
    wall = time.time() - started
    time.sleep(0.3)  # nginx writes its log lines as answers end
    # Complete files (not the tools' temporary ones); curl also leaves what it got of a failed download.
    files = [
        p
        for p in out.iterdir()
        if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".aria2")
    ]
    return Run(tool, with_bad, wall, last_healthy_answer(access_log, started), len(files), code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--tools", default=",".join(ALL_TOOLS))
    parser.add_argument(
        "--quick", action="store_true", help="40 small files an origin, 8 MiB large ones, 4 bad URLs each"
    )
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument(
        "--limit", type=float, default=300.0, help="seconds after which a run is killed (default 300)"
    )
    args = parser.parse_args(argv)
    tools = [t for t in args.tools.split(",") if t == "asyncdl" or shutil.which(t)]
    quick = Scenario(small_files=40, large_size=8 * MiB, bad_each=4, retry_after_s=5)
    scenario = quick if args.quick else Scenario()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    work = Path(tempfile.mkdtemp(prefix="asyncdl-many-hosts-"))
    bad = BadOrigins(scenario)
    proc = None
    try:
        www = make_data(work, scenario)
        nginx_port = free_port(HEALTHY[0])
        refused_port = free_port(REFUSED)
        prefix = work / "nginx"
        prefix.mkdir()
        listen = " ".join(f"listen {host}:{nginx_port};" for host in HEALTHY)
        (prefix / "nginx.conf").write_text(NGINX_CONF.format(prefix=prefix, www=www, listen=listen))
        proc = subprocess.Popen(
            [nginx, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(prefix / "nginx.conf")],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            if (prefix / "nginx.pid").exists():
                break
            time.sleep(0.05)
        bad.start()
        healthy_urls = []
        for index, host in enumerate(HEALTHY):
            base = f"http://{host}:{nginx_port}/h{index}"
            healthy_urls += [f"{base}/s{i:04d}.bin" for i in range(scenario.small_files)]
            healthy_urls.append(f"{base}/large.bin")
        bad_urls = []
        for k in range(scenario.bad_each):
            bad_urls += [
                f"http://{LIMITED}:{bad.port}/r{k}.bin",
                f"http://{BLACK_HOLE}:{bad.port}/b{k}.bin",
                f"http://{TRICKLE}:{bad.port}/t{k}.bin",
                f"http://{REFUSED}:{refused_port}/x{k}.bin",
            ]
        setup = Setup(work, nginx_port, bad.port, refused_port, healthy_urls, bad_urls)
        make_lists(setup, work / "out")
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env["PYTHONPATH"] = str(REPO_ROOT)
        env["HOME"] = str(work)
        runs: list[Run] = []
        for round_number in range(args.rounds):
            for with_bad in (False, True):
                for tool in tools:
                    run = run_once(tool, setup, with_bad, args.python, bad, env, args.limit)
                    runs.append(run)
                    print(
                        f"round {round_number + 1} {tool:8} {'with' if with_bad else 'without'} bad: "
                        f"healthy done {run.healthy_done_s:.1f} s, run {run.wall_s:.1f} s, "
                        f"{run.files} files, exit {run.exit_code}",
                        file=sys.stderr,
                        flush=True,
                    )
        print_table(runs, tools, len(healthy_urls), len(bad_urls), scenario)
    finally:
        bad.stop()
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


def print_table(runs: list[Run], tools: list[str], healthy: int, bad: int, scenario: Scenario) -> None:
    def median(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} s"

    rounds = len(runs) // (2 * len(tools))
    print(
        f"\n{healthy} healthy URLs on 4 origins, {bad} bad ones on 4 origins (Retry-After "
        f"{scenario.retry_after_s} s, black hole, 1 B/s, refused); medians of {rounds} round(s)\n"
    )
    print(
        "| tool | healthy done, no bad origins | healthy done, with bad origins | ratio "
        "| whole run with bad origins | files |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for tool in tools:
        clean = [r for r in runs if r.tool == tool and not r.with_bad]
        mixed = [r for r in runs if r.tool == tool and r.with_bad]
        a = median([r.healthy_done_s for r in clean])
        b = median([r.healthy_done_s for r in mixed])
        ratio = f"{b / a:.2f}x" if a and b else "-"
        files = max(r.files for r in mixed) if mixed else 0
        whole = fmt(median([r.wall_s for r in mixed]))
        if any(r.exit_code is None for r in mixed):
            whole = f"killed at {whole}"
        print(f"| {tool} | {fmt(a)} | {fmt(b)} | {ratio} | {whole} | {files} |")


if __name__ == "__main__":
    raise SystemExit(main())
