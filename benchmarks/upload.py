"""Upload benchmark: `asyncdl upload FILE URL` against `curl -T FILE URL`, same file, same local server.

    python benchmarks/upload.py                 # a 1 GiB file, 3 rounds
    python benchmarks/upload.py --size-mib 256 --rounds 5 --keep

A receiving server runs in a subprocess on 127.0.0.1: by default aiohttp.web, which streams each
request body to nowhere, counting and hashing it; with ``--server nginx``, nginx's WebDAV PUT into a
directory on /dev/shm (checked and removed after each run), a faster receiver that shows the
clients' own limits. Neither server's memory nor the disk enters the race. Each round runs
asyncdl and curl once, alternating which goes first, under `/usr/bin/time -f '%e %U %S %M'`; every
run is checked (exit status 0, the server got the whole file with the right sha256). The report gives,
per tool, the median wall time (min-max), throughput from the median, median CPU time and median peak
RSS. Exit status 0 when every run was right and asyncdl's peak RSS stayed within the target (64 MiB),
1 otherwise, 2 when curl or GNU time is missing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024
RSS_TARGET_MIB = 64
GNU_TIME = "/usr/bin/time"

# The receiving server, run as `python -c SERVER PORT_FILE`: prints nothing, writes its port to
# PORT_FILE, and answers each PUT/POST with JSON {"bytes": N, "sha256": HEX}, also kept for GET /last.
SERVER = r"""
import asyncio, hashlib, json, sys
from aiohttp import web

last = {}

async def receive(request):
    hasher = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_any():
        hasher.update(chunk)
        size += len(chunk)
    last.clear()
    last.update(bytes=size, sha256=hasher.hexdigest(), path=request.path,
                content_length=request.headers.get("Content-Length"))
    return web.json_response(last, status=201)

async def report(request):
    return web.json_response(last)

async def main():
    app = web.Application(client_max_size=0)
    app.router.add_get("/last", report)
    app.router.add_route("*", "/{tail:.*}", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    with open(sys.argv[1], "w") as f:
        f.write(str(port))
    await asyncio.Event().wait()

asyncio.run(main())
"""


@dataclass
class Run:
    tool: str
    round: int
    ok: bool
    wall_s: float = 0.0
    user_s: float = 0.0
    sys_s: float = 0.0
    rss_kib: int = 0
    why: str = ""


def make_file(path: Path, size: int) -> str:
    """A file of ``size`` bytes that does not compress or dedupe trivially; its sha256."""
    hasher = hashlib.sha256()
    block = os.urandom(MiB)
    with path.open("wb") as f:
        written = 0
        counter = 0
        while written < size:
            # A different 1 MiB each time: the first 8 bytes carry a counter.
            piece = (counter.to_bytes(8, "big") + block[8:])[: size - written]
            f.write(piece)
            hasher.update(piece)
            written += len(piece)
            counter += 1
    return hasher.hexdigest()


def start_server(python: str, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port_file = workdir / "port"
    proc = subprocess.Popen([python, "-c", SERVER, str(port_file)])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            return proc, int(port_file.read_text())
        if proc.poll() is not None:
            raise SystemExit("the receiving server did not start (is aiohttp installed for --python?)")
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("the receiving server did not start within 20 s")


NGINX_CONF = """
daemon off;
user root;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {store}/tmp;
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        location / {{
            root {store}/root;
            dav_methods PUT;
            create_full_put_path on;
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_nginx(workdir: Path, store: Path) -> tuple[subprocess.Popen[bytes], int]:
    """nginx with WebDAV PUT into ``store`` (a tmpfs, so the disk does not enter the race)."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    (store / "tmp").mkdir(parents=True, exist_ok=True)
    (store / "root").mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(work=workdir, store=store, port=port))
    proc = subprocess.Popen([nginx, "-p", str(workdir), "-c", str(conf)])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        if proc.poll() is not None:
            raise SystemExit(f"nginx did not start: see {workdir / 'nginx-error.log'}")
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("nginx did not start within 20 s")


def stored_file(store: Path, path: str) -> dict[str, object]:
    """What nginx stored for ``path`` (then removed, so tmpfs does not fill up)."""
    target = store / "root" / path.lstrip("/")
    if not target.exists():
        return {}
    hasher = hashlib.sha256()
    with target.open("rb") as f:
        while block := f.read(8 * MiB):
            hasher.update(block)
    size = target.stat().st_size
    target.unlink()
    return {"path": path, "bytes": size, "sha256": hasher.hexdigest(), "content_length": str(size)}


def last_received(port: int) -> dict[str, object]:
    out = subprocess.run(
        ["curl", "-sS", f"http://127.0.0.1:{port}/last"], capture_output=True, check=True, timeout=30
    )
    data: dict[str, object] = json.loads(out.stdout)
    return data


def timed(command: list[str], workdir: Path, timeout_s: float) -> tuple[int, list[str], str]:
    """Run ``command`` under GNU time; (exit status, [wall, user, sys, maxrss], stderr tail)."""
    time_file = workdir / "time.txt"
    time_file.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["HOME"] = str(workdir)  # no ~/.curlrc or ~/.netrc
    proc = subprocess.run(
        [GNU_TIME, "-o", str(time_file), "-f", "%e %U %S %M", *command],
        capture_output=True,
        env=env,
        timeout=timeout_s,
        check=False,
    )
    fields = time_file.read_text().split()[-4:] if time_file.exists() else []
    return proc.returncode, fields, proc.stderr.decode(errors="replace").strip()[-300:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=1024, help="file size (default 1024)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each tool (default 3)")
    parser.add_argument("--python", default=sys.executable, help="interpreter with asyncdl installed")
    parser.add_argument("--dir", help="where to put the file (default: a temporary directory)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per run")
    parser.add_argument("--keep", action="store_true", help="keep the file and the JSON results")
    parser.add_argument(
        "--server",
        choices=("aiohttp", "nginx"),
        default="aiohttp",
        help="receiver: aiohttp (hashes the stream, default) or nginx (WebDAV PUT into /dev/shm)",
    )
    args = parser.parse_args(argv)

    for tool in ("curl", GNU_TIME):
        if shutil.which(tool) is None:
            print(f"upload.py: {tool} is required", file=sys.stderr)
            return 2

    workdir = Path(tempfile.mkdtemp(prefix="asyncdl-upload-bench-", dir=args.dir))
    size = args.size_mib * MiB
    source = workdir / "upload.bin"
    print(f"making a {args.size_mib} MiB file in {workdir} ...", flush=True)
    digest = make_file(source, size)
    store = Path(tempfile.mkdtemp(prefix="asyncdl-upload-store-", dir="/dev/shm"))
    if args.server == "nginx":
        server, port = start_nginx(workdir, store)
    else:
        server, port = start_server(args.python, workdir)
    commands = {
        "asyncdl": [args.python, "-m", "asyncdl", "upload", "-q", str(source)],
        "curl": ["curl", "-sS", "--fail", "-o", "/dev/null", "-T", str(source)],
    }
    runs: list[Run] = []
    try:
        for round_no in range(1, args.rounds + 1):
            order = ["asyncdl", "curl"] if round_no % 2 else ["curl", "asyncdl"]
            for tool in order:
                url = f"http://127.0.0.1:{port}/{tool}/{round_no}/upload.bin"
                status, fields, err = timed([*commands[tool], url], workdir, args.timeout)
                run = Run(tool, round_no, ok=False)
                if status != 0 or len(fields) != 4:
                    run.why = f"exit {status}: {err}"
                else:
                    run.wall_s, run.user_s, run.sys_s = (float(x) for x in fields[:3])
                    run.rss_kib = int(fields[3])
                    path = f"/{tool}/{round_no}/upload.bin"
                    got = stored_file(store, path) if args.server == "nginx" else last_received(port)
                    if got.get("path") != path:
                        run.why = f"the server saw no request for this run: {got}"
                    elif got.get("bytes") != size or got.get("sha256") != digest:
                        run.why = f"the server got {got.get('bytes')} bytes, sha256 {got.get('sha256')}"
                    elif got.get("content_length") != str(size):
                        run.why = f"Content-Length was {got.get('content_length')}, not {size}"
                    else:
                        run.ok = True
                runs.append(run)
                state = "ok" if run.ok else f"FAILED ({run.why})"
                print(
                    f"round {round_no} {tool:8} {run.wall_s:6.2f} s  "
                    f"{run.rss_kib / 1024:6.1f} MiB peak RSS  {state}",
                    flush=True,
                )
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(store, ignore_errors=True)

    print()
    print(
        f"{args.size_mib} MiB upload to a local {args.server} server, {args.rounds} rounds (median, min-max):"
    )
    print("| tool | wall s | MiB/s | CPU s (user+sys) | peak RSS MiB |")
    print("| --- | --- | --- | --- | --- |")
    failed = any(not run.ok for run in runs)
    medians: dict[str, tuple[float, float]] = {}
    for tool in ("asyncdl", "curl"):
        good = [run for run in runs if run.tool == tool and run.ok]
        if not good:
            print(f"| {tool} | FAILED | | | |")
            continue
        walls = [run.wall_s for run in good]
        wall = statistics.median(walls)
        cpu = statistics.median(run.user_s + run.sys_s for run in good)
        rss = statistics.median(run.rss_kib for run in good) / 1024
        rate = args.size_mib / wall if wall > 0 else float("inf")
        medians[tool] = (wall, rss)
        spread = f"{min(walls):.2f}-{max(walls):.2f}"
        print(f"| {tool} | {wall:.2f} ({spread}) | {rate:.0f} | {cpu:.2f} | {rss:.1f} |")
    peak = max((run.rss_kib for run in runs if run.tool == "asyncdl" and run.ok), default=0) / 1024
    within = 0 < peak <= RSS_TARGET_MIB
    print(
        f"\nasyncdl peak RSS (max of runs): {peak:.1f} MiB; target <= {RSS_TARGET_MIB} MiB: "
        f"{'met' if within else 'MISSED'}"
    )
    if "asyncdl" in medians and "curl" in medians:
        print(f"curl wall / asyncdl wall: {medians['curl'][0] / medians['asyncdl'][0]:.2f}")
    if args.keep:
        (workdir / "results.json").write_text(json.dumps([run.__dict__ for run in runs], indent=2))
        print(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if within and not failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
