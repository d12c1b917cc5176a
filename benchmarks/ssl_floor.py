"""The least Python does to fetch one file over HTTPS: the floor under asyncdl's large HTTPS body.

    python benchmarks/ssl_floor.py https://HOST:PORT/PATH OUT_FILE [--ca-certificate CA.pem]

One blocking `ssl.SSLSocket` (OpenSSL reads the socket itself: no memory BIO, no event loop), one
`GET`, the body read into a 1 MiB buffer with `recv_into` and written with `os.write`. No retries,
no resume, no progress, no aiohttp (not even imported). `bench.py --tools ssl-floor` runs it beside
the other tools on the single-file HTTPS workload (f), in the same rounds.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import urllib.parse

BUFFER = 1024 * 1024


def fetch(url: str, out: str, ca_file: str | None) -> int:
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 443
    context = ssl.create_default_context(cafile=ca_file)
    with context.wrap_socket(socket.create_connection((host, port)), server_hostname=host) as sock:
        request = f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode())
        buffer = bytearray(BUFFER)
        view = memoryview(buffer)
        head = b""
        while b"\r\n\r\n" not in head:
            got = sock.recv_into(view)
            if not got:
                raise SystemExit("ssl-floor: the connection ended in the headers")
            head += view[:got]
        head, _, first = head.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"ssl-floor: {head.splitlines()[0].decode(errors='replace')}")
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            total = os.write(fd, first) if first else 0
            while got := sock.recv_into(view):
                chunk = view[:got]
                while chunk:
                    chunk = chunk[os.write(fd, chunk) :]
                total += got
        finally:
            os.close(fd)
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("url")
    parser.add_argument("out")
    parser.add_argument("--ca-certificate")
    args = parser.parse_args(argv)
    fetch(args.url, args.out, args.ca_certificate)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
