"""Helpers for black-box tests of ``asyncdl daemon`` (and of ``aria2c --enable-rpc`` beside it).

The daemon runs as a child process on 127.0.0.1 at a free port; the file server runs in a thread of
its own, so that tests can drive the daemon with synchronous clients (aria2p, requests, Playwright).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from faultserver import FaultServer, Route

SECRET = "s3cret-for-tests-only"
DEADLINE_S = 30.0


def until(condition: Callable[[], Any], timeout: float = DEADLINE_S, what: str = "condition") -> Any:
    """Poll ``condition()`` every 20 ms until it is truthy (its value), failing after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.02)


class ThreadedFaultServer:
    """A FaultServer running on an event loop in a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = FaultServer()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ThreadedFaultServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.server.aclose(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    def route(self, path: str, **options: Any) -> Route:
        return self.server.route(path, **options)

    def url(self, path: str) -> str:
        return self.server.url(path)

    def requests_for(self, path: str) -> list[Any]:
        return self.server.requests_for(path)


class Daemon:
    """A running ``asyncdl daemon`` (or ``aria2c --enable-rpc``) child process."""

    def __init__(
        self, process: subprocess.Popen[str], port: int, directory: Path, secret: str | None
    ) -> None:
        self.process = process
        self.port = port
        self.dir = directory
        self.secret = secret
        self.stderr_lines: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jsonrpc"

    def call(self, method: str, *params: Any, token: str | None = None, **headers: str) -> requests.Response:
        """A raw JSON-RPC call over HTTP POST (with the daemon's secret unless ``token`` says otherwise)."""
        secret = self.secret if token is None else token
        full = [f"token:{secret}", *params] if secret else list(params)
        body = {"jsonrpc": "2.0", "id": "t", "method": method, "params": full}
        return requests.post(self.url, json=body, headers=headers, timeout=10)

    def result(self, method: str, *params: Any) -> Any:
        answer = self.call(method, *params).json()
        assert "result" in answer, answer
        return answer["result"]

    def stop(self, sig: int = signal.SIGTERM) -> tuple[str, str]:
        """Stop the process; its (stdout, stderr)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            out, err = self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate(timeout=10)
        return out, "".join(self.stderr_lines) + err


def _read_port(process: subprocess.Popen[str], pattern: str, lines: list[str]) -> int:
    assert process.stderr is not None
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            raise AssertionError(f"the daemon ended before listening: {''.join(lines)}")
        lines.append(line)
        match = re.search(pattern, line)
        if match:
            return int(match.group(1))
    raise AssertionError("the daemon did not say where it listens")


@contextmanager
def asyncdl_daemon(
    directory: Path, *options: str, secret: str | None = SECRET, cwd: Path | None = None
) -> Iterator[Daemon]:
    """``asyncdl daemon -d DIRECTORY --rpc-listen-port 0 [--rpc-secret SECRET] OPTIONS...``."""
    argv = [sys.executable, "-m", "asyncdl", "daemon", "-d", str(directory), "--rpc-listen-port", "0"]
    if secret is not None:
        argv += ["--rpc-secret", secret]
    process = subprocess.Popen(
        [*argv, *options],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    try:
        port = _read_port(process, r"port (\d+)", lines)
        daemon = Daemon(process, port, directory, secret)
        daemon.stderr_lines = lines
        yield daemon
    finally:
        if process.poll() is None:
            process.kill()
        if process.stdout is not None and not process.stdout.closed:
            process.communicate(timeout=10)  # reads and closes the pipes


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def aria2c_daemon(directory: Path, *options: str) -> Iterator[Daemon]:
    """The real ``aria2c --enable-rpc`` on 127.0.0.1, for comparing answers field by field."""
    port = free_port()
    process = subprocess.Popen(
        [
            "aria2c",
            "--enable-rpc",
            f"--rpc-listen-port={port}",
            f"--rpc-secret={SECRET}",
            f"--dir={directory}",
            "--no-conf",
            "--quiet",
            "--auto-file-renaming=false",
            *options,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    daemon = Daemon(process, port, directory, SECRET)
    try:

        def answers() -> bool:
            try:
                return daemon.call("aria2.getVersion").status_code == 200
            except requests.ConnectionError:
                return False

        until(answers, what="aria2c answering")
        yield daemon
    finally:
        if process.poll() is None:
            process.kill()
        if process.stdout is not None and not process.stdout.closed:
            process.communicate(timeout=10)  # reads and closes the pipes
