"""Memory of `asyncdl daemon` holding a long queue: 100,000 URLs added over JSON-RPC.

    python benchmarks/daemon_memory.py                  # 100,000 URLs, in multicalls of 1,000 addUri each
    python benchmarks/daemon_memory.py --urls 20000 --batch 500

The daemon runs with `-j 1` against a local server that accepts connections and never answers, so one
download stays active and every other one waits in the queue. The report gives the daemon's resident memory
(VmRSS) and its peak (VmHWM) from /proc, the time to add the URLs, and the time of a `tellWaiting` of 1,000
entries with the queue full. Target: peak under 256 MiB. Exit status 0 when met, 1 when not.
Standard library only; asyncdl is taken from this checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

TARGET_MIB = 256
SECRET = "benchmark"
ROOT = Path(__file__).resolve().parent.parent


def black_hole() -> tuple[socket.socket, int]:
    """A listening socket that accepts connections and never answers (held by a thread)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    return server, server.getsockname()[1]


def call(port: int, method: str, *params: object) -> object:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": [f"token:{SECRET}", *params]})
    request = urllib.request.Request(f"http://127.0.0.1:{port}/jsonrpc", data=body.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.loads(answer.read())["result"]


def memory_mib(pid: int) -> tuple[float, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
    hwm = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
    return rss / 1024, hwm / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--urls", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000, help="addUri calls per system.multicall")
    args = parser.parse_args()
    hole, hole_port = black_hole()
    with tempfile.TemporaryDirectory() as work:
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        daemon = subprocess.Popen(
            [
                *(sys.executable, "-m", "asyncdl", "daemon", "-d", work, "--rpc-listen-port", "0"),
                *("--rpc-secret", SECRET, "-j", "1", "--timeout", "3600"),
            ],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert daemon.stderr is not None
            line = daemon.stderr.readline()
            port = int(re.search(r"port (\d+)", line).group(1))  # type: ignore[union-attr]
            start_rss, _ = memory_mib(daemon.pid)
            started = time.monotonic()
            for first in range(0, args.urls, args.batch):
                calls = [
                    {
                        "methodName": "aria2.addUri",
                        "params": [f"token:{SECRET}", [f"http://127.0.0.1:{hole_port}/files/{i:07d}.bin"]],
                    }
                    for i in range(first, min(first + args.batch, args.urls))
                ]
                call(port, "system.multicall", calls)
            added_s = time.monotonic() - started
            stat = call(port, "aria2.getGlobalStat")
            started = time.monotonic()
            window = call(port, "aria2.tellWaiting", 0, 1000)
            tell_s = time.monotonic() - started
            rss, hwm = memory_mib(daemon.pid)
        finally:
            daemon.terminate()
            daemon.wait(60)
            hole.close()
    assert isinstance(stat, dict) and isinstance(window, list)
    active, waiting = stat["numActive"], stat["numWaiting"]
    print(f"asyncdl daemon holding {args.urls:,} URLs ({active} active, {waiting} waiting)")
    print(
        f"| RSS at start | RSS, queue full | peak RSS (VmHWM) | adding {args.urls:,} | tellWaiting 0 1000 |"
    )
    print("| --- | --- | --- | --- | --- |")
    print(
        f"| {start_rss:.0f} MiB | {rss:.0f} MiB | {hwm:.0f} MiB | {added_s:.1f} s | {tell_s * 1000:.0f} ms |"
    )
    ok = hwm < TARGET_MIB and int(stat["numWaiting"]) == args.urls - 1
    print(f"target: peak under {TARGET_MIB} MiB: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
