"""The least a downloader built on aiohttp does for a list of small files: the floor under asyncdl's cost.

    python benchmarks/aiohttp_floor.py URL_LIST OUT_DIR [-j 16] [--ca-certificate CA.pem]

Sixteen tasks share one aiohttp session (its defaults: connection pool, cookie jar, decompression),
each takes the next URL, `GET`s it, reads the whole body and writes it with a plain blocking
`open`/`write` under the last segment of the URL. No retries, no temporary files, no resume, no
progress, no report: every file asyncdl writes costs at least this much. `bench.py --tools
aiohttp-floor` runs it beside the other tools (list workloads only), so that the CPU a file of
asyncdl and of this floor are measured in the same rounds. On exit it prints the event loop's CPU
time a file (the main thread's) to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
import time

import aiohttp


async def fetch_all(urls: list[str], out_dir: str, jobs: int, ca_file: str | None) -> None:
    context = ssl.create_default_context(cafile=ca_file) if ca_file else None
    connector = aiohttp.TCPConnector(limit=jobs, ssl=context if context else True)
    pending = iter(urls)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            for url in pending:
                async with session.get(url) as response:
                    response.raise_for_status()
                    body = await response.read()
                with open(os.path.join(out_dir, url.rsplit("/", 1)[1]), "wb") as handle:
                    handle.write(body)

        await asyncio.gather(*(worker() for _ in range(jobs)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("url_list")
    parser.add_argument("out_dir")
    parser.add_argument("-j", type=int, default=16)
    parser.add_argument("--ca-certificate")
    args = parser.parse_args(argv)
    with open(args.url_list) as handle:
        urls = [line.strip() for line in handle if line.strip() and not line.startswith("#")]
    os.makedirs(args.out_dir, exist_ok=True)
    started = time.thread_time()
    asyncio.run(fetch_all(urls, args.out_dir, args.j, args.ca_certificate))
    per_file = (time.thread_time() - started) / max(1, len(urls))
    print(f"aiohttp-floor: event loop CPU {per_file * 1e6:.0f} µs a file", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
