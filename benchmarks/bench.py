"""Benchmark asyncdl against curl, wget, aria2c and axel on a loopback nginx.

Run it as root (it mounts a file system for the downloads), with a Python that can import the asyncdl
dependencies (aiohttp, aiofiles, rich); the asyncdl package itself is taken from this checkout:

    python benchmarks/bench.py                      # full run, 15-20 minutes
    python benchmarks/bench.py --asyncdl-rev HEAD   # the committed asyncdl, not the working tree
    python benchmarks/bench.py --quick              # smaller sizes, one round: a smoke test under a minute
    python benchmarks/bench.py --only b,e10k --runs 3 --tools asyncdl,curl
    python benchmarks/bench.py --asyncdl-args="--timeout 10" --keep
    python benchmarks/bench.py --only b,e10k --tools asyncdl --baseline-rev 721c7a2   # before / after

Needs nginx (`apt-get install nginx-light`) and GNU time (`apt-get install time`); the peers curl, wget,
aria2c and axel are used when installed and skipped with a note when not. Standard library only.

What it does:
- generates random content in a temporary directory and serves it with its own nginx on 127.0.0.1 (one
  worker, sendfile, no access log, a `/throttled/` location at 8 MiB/s per connection, a `/tiny/` location
  that answers any name with one byte);
- downloads every workload with each tool, alternating tools within each round, into an output directory
  that is emptied (a mounted file system is made afresh) and followed by `os.sync()` before each timed run;
- times each run with `/usr/bin/time -f '%e %U %S %M'`, checks the output (file count, total bytes, sha256
  of a sample against the source) and counts only correct runs;
- prints one Markdown table per workload and writes everything to `benchmarks/results/latest.json`.

Workloads: a = one 1 GiB file; b = 5,000 x 16 KiB; c = 1,000 x 1 MiB; d = one 256 MiB file served at
8 MiB/s per connection (segmented downloads: `-x 16`); e10k / e1m = lists of 10,000 / 1,000,000 one-byte
files (`e` = both); f = one 1 GiB file over HTTPS; g = 5,000 x 16 KiB over HTTPS (the same nginx, with a
certificate from a CA made at run time by openssl, which every tool is told to trust).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import io
import json
import os
import platform
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_PATH = REPO_ROOT / "benchmarks" / "results" / "latest.json"
TIME_BIN = "/usr/bin/time"
TIME_FORMAT = "%e %U %S %M"
ALL_TOOLS = ("asyncdl", "asyncdl-2p", "curl", "wget", "aria2c", "axel", "aiohttp-floor", "ssl-floor")
# Run only when named in --tools: the floors under asyncdl's cost, bare aiohttp for lists
# (benchmarks/aiohttp_floor.py) and a blocking Python TLS socket for one HTTPS file (ssl_floor.py).
OPT_IN_TOOLS = frozenset({"aiohttp-floor", "ssl-floor"})
FLOOR_SCRIPT = REPO_ROOT / "benchmarks" / "aiohttp_floor.py"
SSL_FLOOR_SCRIPT = REPO_ROOT / "benchmarks" / "ssl_floor.py"
PYTHON_TOOLS = frozenset({"aiohttp-floor", "ssl-floor"})  # scripts run by --python, not programs on PATH
TLS_ONLY_TOOLS = frozenset({"ssl-floor"})
SINGLE_FILE_ONLY_TOOLS = frozenset({"axel", "ssl-floor"})
# asyncdl with --processes 2: two worker processes (this machine's two cores) share the list.
LIST_ONLY_TOOLS = frozenset({"asyncdl-2p", "aiohttp-floor"})
LOCAL_PROCESSES = 2
PARALLEL_JOBS = 16
SEGMENT_CONNECTIONS = 16
THROTTLE_RATE = "8m"  # nginx units: 8 MiB/s per connection
TINY_BODY = b"x"
WRITE_CHUNK = 1 * MiB
SAMPLE_FILES = 5
LAZY_INPUT_THRESHOLD = 100_000  # URLs; longer lists make aria2c read its input lazily


# ----------------------------------------------------------------------------------------------------
# Workloads and their data


@dataclass(frozen=True)
class Workload:
    """One thing to download, described before any data exists."""

    key: str
    title: str
    files: int
    file_size: int
    location: str  # "files", "throttled" or "tiny": which nginx location serves it
    runs: int
    timeout_s: float  # per timed run
    fs_role: str  # "disk" (journaled ext4 by default) or "ram" (tmpfs by default)
    segmented: bool = False  # downloaders get their many-connections-per-file option
    tls: bool = False  # served over HTTPS (the CA made at run time is passed to every tool)
    # Unless --tools names them: peers left out (one run would take longer than the rest together), and
    # peers run in the first round only (their time is fixed by construction, e.g. one throttled connection).
    slow_peers: frozenset[str] = frozenset()
    first_round_only: frozenset[str] = frozenset()

    @property
    def single(self) -> bool:
        return self.files == 1

    @property
    def total_bytes(self) -> int:
        return self.files * self.file_size

    @property
    def rate_unit(self) -> str:
        return "MiB/s" if self.file_size >= MiB else "files/s"


def make_workloads(*, quick: bool) -> list[Workload]:
    """The workloads of a full run, or their small versions for --quick."""

    def pick(full: int, small: int) -> int:
        return small if quick else full

    rounds = 1 if quick else 5
    too_slow_at_1m = frozenset({"wget", "aria2c"})
    return [
        Workload(
            "a", f"one {pick(1024, 256)} MiB file", 1, pick(1 * GiB, 256 * MiB), "files", rounds, 180, "disk"
        ),
        Workload(
            "b",
            f"{pick(5000, 1000):,} files of 16 KiB",
            pick(5000, 1000),
            16 * KiB,
            "files",
            rounds,
            180,
            "disk",
        ),
        Workload(
            "c", f"{pick(1000, 200):,} files of 1 MiB", pick(1000, 200), 1 * MiB, "files", rounds, 180, "disk"
        ),
        Workload(
            "d",
            f"one {pick(256, 32)} MiB file at 8 MiB/s per connection",
            1,
            pick(256 * MiB, 32 * MiB),
            "throttled",
            1 if quick else 3,
            180,
            "disk",
            segmented=True,
            first_round_only=frozenset({"curl", "wget"}),
        ),
        Workload(
            "e10k",
            f"{pick(10_000, 1000):,} URLs of 1-byte files",
            pick(10_000, 1000),
            1,
            "tiny",
            rounds,
            180,
            "disk",
        ),
        Workload(
            "e1m",
            f"{pick(1_000_000, 5_000):,} URLs of 1-byte files",
            pick(1_000_000, 5_000),
            1,
            "tiny",
            1,
            1500,
            "ram",
            slow_peers=too_slow_at_1m,
        ),
        Workload(
            "f",
            f"one {pick(1024, 256)} MiB file over HTTPS",
            1,
            pick(1 * GiB, 256 * MiB),
            "files",
            rounds,
            180,
            "disk",
            tls=True,
        ),
        Workload(
            "g",
            f"{pick(5000, 1000):,} files of 16 KiB over HTTPS",
            pick(5000, 1000),
            16 * KiB,
            "files",
            rounds,
            180,
            "disk",
            tls=True,
        ),
    ]


class Dataset:
    """The served files of one workload, its URL list, its curl config and what a correct download holds."""

    def __init__(self, workload: Workload, *, www: Path, lists: Path, base_url: str, out_dir: Path) -> None:
        self.workload = workload
        self.url_list = lists / f"{workload.key}.urls"
        self.curl_config = lists / f"{workload.key}.curl"
        self._www = www
        self._base_url = base_url
        self._out_dir = out_dir
        self._sha256: list[str] = []

    def name(self, index: int) -> str:
        """The file name of item `index`: the last segment of its URL, so every tool saves it so."""
        if self.workload.single:
            return f"{self.workload.key}-{self.workload.file_size // MiB}MiB.bin"
        return f"f{index:07d}.bin" if self.workload.location != "tiny" else f"t{index:07d}"

    def url(self, index: int) -> str:
        return f"{self._base_url}/{self.workload.location}/{self.workload.key}/{self.name(index)}"

    def source(self, index: int) -> Path:
        return self._www / self.workload.location / self.workload.key / self.name(index)

    def expected_sha256(self, index: int) -> str:
        if self.workload.location == "tiny":
            return hashlib.sha256(TINY_BODY).hexdigest()
        return self._sha256[index]

    def generate(self) -> None:
        """Write random content (none for /tiny/: nginx answers it), the URL list and the curl config."""
        w = self.workload
        if w.location != "tiny":
            self.source(0).parent.mkdir(parents=True, exist_ok=True)
            for index in range(w.files):
                self._sha256.append(_write_random_file(self.source(index), w.file_size))
        self.url_list.parent.mkdir(parents=True, exist_ok=True)
        with self.url_list.open("w") as urls, self.curl_config.open("w") as config:
            for index in range(w.files):
                url = self.url(index)
                urls.write(url + "\n")
                config.write(f'url = "{url}"\noutput = "{self._out_dir / self.name(index)}"\n')


def _write_random_file(path: Path, size: int) -> str:
    """Fill `path` with `size` random bytes; return their sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, WRITE_CHUNK))
            digest.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(WRITE_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_output(dataset: Dataset, out_dir: Path, *, seed: str) -> str | None:
    """Check a run's output: file count, total bytes, sha256 of a sample. Return what is wrong, or None.

    Hidden `.asyncdl*` files are allowed by the asyncdl contract and ignored.
    """
    w = dataset.workload
    count = total = 0
    for path in _walk_files(out_dir):
        if path.name.startswith(".asyncdl"):
            continue
        count += 1
        total += path.stat().st_size
    if count != w.files:
        return f"{count:,} files instead of {w.files:,}"
    if total != w.total_bytes:
        return f"{total:,} bytes instead of {w.total_bytes:,}"
    rng = random.Random(seed)
    sample = {0, w.files - 1, *(rng.randrange(w.files) for _ in range(SAMPLE_FILES))}
    for index in sorted(sample):
        target = out_dir / dataset.name(index)
        if not target.is_file():
            return f"{dataset.name(index)} missing"
        if sha256_of(target) != dataset.expected_sha256(index):
            return f"{dataset.name(index)}: content differs from the source"
    return None


def _walk_files(root: Path) -> Iterator[Path]:
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                else:
                    yield Path(entry.path)


# ----------------------------------------------------------------------------------------------------
# nginx


def find_nginx() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


NGINX_CONF = """\
worker_processes {workers};
worker_rlimit_nofile 65536;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 8192;
}}
http {{
    default_type application/octet-stream;
    types {{ }}
    sendfile on;
    tcp_nopush on;
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        {tls_listen}
        root {www};
        location /throttled/ {{ limit_rate {rate}; }}
        # Any name under /tiny/ is a distinct one-byte file: a million URLs without a million source files.
        location /tiny/ {{ return 200 "{tiny}"; }}
    }}
}}
"""


# TLS 1.2 and 1.3, the server's choice of cipher (AES-GCM where the CPU has AES instructions), a session
# cache so that the 16 connections of a list each pay one full handshake.
NGINX_TLS = (
    "listen 127.0.0.1:{tls_port} ssl; ssl_certificate {cert}; ssl_certificate_key {key}; "
    "ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:tls:1m;"
)


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA made now, and a certificate it signs for 127.0.0.1: (ca.pem, cert.pem, key.pem)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (
        directory / n for n in ("ca.key", "ca.pem", "key.pem", "req.csr", "cert.pem")
    )
    ext = directory / "ext.cnf"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
    )
    _run_quiet(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=asyncdl bench CA",
            "-keyout",
            str(ca_key),
            "-out",
            str(ca),
        ]
    )
    _run_quiet(
        [
            "openssl",
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(csr),
        ]
    )
    _run_quiet(
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(ca),
            "-CAkey",
            str(ca_key),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(ext),
            "-out",
            str(cert),
        ]
    )
    return ca, cert, key


class Nginx:
    """nginx on 127.0.0.1 with its own configuration, run in the foreground as our child.

    With ``tls`` (certificate, key) it also serves the same content over HTTPS on ``tls_base_url``.
    """

    def __init__(
        self, binary: str, *, prefix: Path, www: Path, workers: int = 1, tls: tuple[Path, Path] | None = None
    ) -> None:
        self.binary = binary
        self.prefix = prefix
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.tls_port = free_port() if tls else None
        self.tls_base_url = f"https://127.0.0.1:{self.tls_port}" if tls else None
        tls_listen = NGINX_TLS.format(tls_port=self.tls_port, cert=tls[0], key=tls[1]) if tls else ""
        prefix.mkdir(parents=True, exist_ok=True)
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(
            NGINX_CONF.format(
                workers=workers,
                prefix=prefix,
                port=self.port,
                www=www,
                rate=THROTTLE_RATE,
                tiny=TINY_BODY.decode(),
                tls_listen=tls_listen,
            )
        )
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [self.binary, "-p", str(self.prefix), "-e", str(self.prefix / "error.log"), "-c", str(self.conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            with (
                contextlib.suppress(OSError),
                opener.open(f"{self.base_url}/tiny/ready", timeout=1) as answer,
            ):
                if answer.read() == TINY_BODY:
                    return
            time.sleep(0.05)
        log = (
            (self.prefix / "error.log").read_text(errors="replace")
            if (self.prefix / "error.log").exists()
            else ""
        )
        self.stop()
        raise RuntimeError(f"nginx did not start:\n{log[-2000:]}")

    def stop(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=10)

    def version(self) -> str:
        done = subprocess.run([self.binary, "-v"], capture_output=True, text=True, timeout=10, check=False)
        return done.stderr.strip()


# ----------------------------------------------------------------------------------------------------
# Output file systems


def _run_quiet(cmd: list[str], timeout_s: float = 120) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=timeout_s)


def _mem_available() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * KiB
    return 0


class OutputArea:
    """Where downloads land; `reset()` gives an empty directory for the next timed run.

    kind "ext4": a sparse image file made into a journaled ext4 afresh before every run and loop-mounted (the
    root file system here has no journal, and there the kernel's scan past recently deleted inodes distorts
    small-file figures); "tmpfs": a tmpfs mounted afresh before every run; "dir": a plain directory emptied
    with rmtree. A mount that fails falls back along ext4 -> tmpfs -> dir with a printed warning.
    """

    FALLBACK: ClassVar[dict[str, str | None]] = {"ext4": "tmpfs", "tmpfs": "dir", "dir": None}

    def __init__(self, kind: str, root: Path, *, size_bytes: int, inodes: int) -> None:
        self.requested = kind
        self.kind = kind
        self.root = root
        self.mountpoint = root / f"mnt-{kind}"
        self.image = root / f"{kind}.img"
        self.out_dir = self.mountpoint / "out"
        self.size_bytes = size_bytes
        self.inodes = inodes
        self.warning = ""
        self._mounted = False

    @property
    def description(self) -> str:
        if self.kind == "ext4":
            return "ext4 with journal on a loop-mounted sparse image, made afresh before each run"
        if self.kind == "tmpfs":
            return "tmpfs (RAM), mounted afresh before each run"
        return "plain directory on the root file system (no journal: small-file figures are distorted)"

    def setup(self) -> None:
        kind: str | None = self.kind
        while kind is not None:
            self.kind = kind
            problem = self._unusable_reason()
            if problem is None:
                try:
                    self.reset()
                    return
                except (OSError, subprocess.SubprocessError) as exc:
                    problem = _describe_error(exc)
            fallback = self.FALLBACK[kind]
            self.warning += f"{kind} not usable ({problem}); "
            print(
                f"WARNING: output on {kind} is not possible ({problem}); trying {fallback}", file=sys.stderr
            )
            self._unmount()
            kind = fallback
        raise RuntimeError("no usable output directory")

    def _unusable_reason(self) -> str | None:
        if self.kind == "dir":
            return None
        if os.geteuid() != 0:
            return "mounting needs root"
        if self.kind == "ext4" and not shutil.which("mkfs.ext4"):
            return "mkfs.ext4 not found"
        if self.kind == "tmpfs" and self.size_bytes > _mem_available() // 2:
            return f"needs {self.size_bytes / GiB:.1f} GiB, more than half of the available memory"
        return None

    def reset(self) -> Path:
        """An empty output directory on a fresh file system (or an emptied plain directory)."""
        if self.kind == "dir":
            shutil.rmtree(self.out_dir, ignore_errors=True)
            self.out_dir.mkdir(parents=True)
            return self.out_dir
        self._unmount()
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        if self.kind == "ext4":
            self.image.unlink(missing_ok=True)
            with self.image.open("wb") as image:
                # Twice the room the workload needs (the image is sparse: free space costs nothing). ext4
                # starts writing back delayed allocations once fewer than twice the dirty blocks are free
                # (ext4_nonda_switch in fs/ext4/inode.c): 1 GiB written into a 2 GiB file system took
                # every tool 0.2-0.5 s longer than into a 3 or 8 GiB one, asyncdl most.
                image.truncate(2 * self.size_bytes)
            inode_option = ["-N", str(self.inodes)]
            lazy_init_off = ["-E", "lazy_itable_init=0,lazy_journal_init=0"]  # no background zeroing mid-run
            _run_quiet(["mkfs.ext4", "-q", "-F", *inode_option, *lazy_init_off, str(self.image)])
            _run_quiet(["mount", "-o", "loop", str(self.image), str(self.mountpoint)])
        else:
            options = f"size={self.size_bytes},nr_inodes={self.inodes},mode=0755"
            _run_quiet(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(self.mountpoint)])
        self._mounted = True
        self.out_dir.mkdir()
        return self.out_dir

    def _unmount(self) -> None:
        if not self._mounted:
            return
        try:
            _run_quiet(["umount", str(self.mountpoint)])
        except subprocess.SubprocessError:
            _run_quiet(["umount", "-l", str(self.mountpoint)])
        self._mounted = False

    def close(self, *, keep_image: bool) -> None:
        self._unmount()
        if not keep_image:
            self.image.unlink(missing_ok=True)


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        stderr = exc.stderr.decode(errors="replace").strip() if exc.stderr else ""
        return f"{shlex.join(str(a) for a in exc.cmd)}: {stderr or exc}"
    return str(exc)


def measure_fs_floor(out_dir: Path, *, files: int, file_size: int) -> float:
    """Files per second of this process writing small files (open, write, close, rename): no network."""
    body = os.urandom(file_size)
    start = time.perf_counter()
    for index in range(files):
        temporary = out_dir / f".floor{index}"
        with temporary.open("wb") as f:
            f.write(body)
        temporary.replace(out_dir / f"floor{index:07d}")
    return files / (time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------------
# Tools and timed runs


@dataclass(frozen=True)
class ToolSetup:
    python: str
    asyncdl_args: tuple[str, ...]
    ca_file: Path | None = None  # the CA of the HTTPS workloads
    asyncdl_ca_option: bool = False  # asyncdl has --ca-certificate (else it is given SSL_CERT_FILE)
    baseline_root: Path | None = None  # where asyncdl-base (--baseline-rev) is imported from


def tool_command(tool: str, dataset: Dataset, out_dir: Path, setup: ToolSetup) -> list[str]:
    """The command line that downloads `dataset` into `out_dir` with `tool`."""
    cmd = _plain_command(tool, dataset, out_dir, setup)
    if not dataset.workload.tls:
        return cmd
    assert setup.ca_file is not None
    ca = str(setup.ca_file)
    if tool.startswith("asyncdl"):
        return (
            [*cmd, "--ca-certificate", ca] if _asyncdl_ca_option(tool, setup) else cmd
        )  # else SSL_CERT_FILE
    if tool == "curl":
        return [cmd[0], "--cacert", ca, *cmd[1:]]
    if tool in PYTHON_TOOLS:
        return [*cmd, "--ca-certificate", ca]
    if tool in ("wget", "aria2c"):
        return [cmd[0], f"--ca-certificate={ca}", *cmd[1:]]
    return cmd


def tool_env(tool: str, dataset: Dataset, setup: ToolSetup, env: dict[str, str]) -> dict[str, str]:
    """The environment of one timed run: asyncdl without --ca-certificate trusts the CA through OpenSSL's
    SSL_CERT_FILE (which the default SSL context of Python loads)."""
    if tool == "asyncdl-base" and setup.baseline_root is not None:
        env = {**env, "PYTHONPATH": str(setup.baseline_root)}
    if dataset.workload.tls and tool.startswith("asyncdl") and not _asyncdl_ca_option(tool, setup):
        return {**env, "SSL_CERT_FILE": str(setup.ca_file)}
    return env


def _asyncdl_ca_option(tool: str, setup: ToolSetup) -> bool:
    """Whether this asyncdl takes --ca-certificate: the baseline (an older commit) is given
    SSL_CERT_FILE, which every version honours."""
    return setup.asyncdl_ca_option and tool != "asyncdl-base"


def _plain_command(tool: str, dataset: Dataset, out_dir: Path, setup: ToolSetup) -> list[str]:
    w = dataset.workload
    url_list = str(dataset.url_list)
    if tool in ("asyncdl", "asyncdl-2p", "asyncdl-base"):
        cmd = [setup.python, "-m", "asyncdl", url_list, "-d", str(out_dir), "-j", str(PARALLEL_JOBS), "-q"]
        if w.segmented:
            cmd += ["-x", str(SEGMENT_CONNECTIONS)]
        if tool == "asyncdl-2p":
            cmd += ["--processes", str(LOCAL_PROCESSES)]
        return [*cmd, *setup.asyncdl_args]
    if tool == "aiohttp-floor":
        return [setup.python, str(FLOOR_SCRIPT), url_list, str(out_dir), "-j", str(PARALLEL_JOBS)]
    if tool == "ssl-floor":
        return [setup.python, str(SSL_FLOOR_SCRIPT), dataset.url(0), str(out_dir / dataset.name(0))]
    if tool == "curl":
        if w.single:
            return ["curl", "-s", "-o", str(out_dir / dataset.name(0)), dataset.url(0)]
        return [
            "curl",
            "--parallel",
            "--parallel-max",
            str(PARALLEL_JOBS),
            "-s",
            "-K",
            str(dataset.curl_config),
        ]
    if tool == "wget":
        if w.single:
            return ["wget", "-q", "-O", str(out_dir / dataset.name(0)), dataset.url(0)]
        return ["wget", "-q", "-i", url_list, "-P", str(out_dir)]
    if tool == "aria2c":
        cmd = ["aria2c", "-q", "-i", url_list, "-j", str(PARALLEL_JOBS), "-d", str(out_dir)]
        cmd += ["--allow-overwrite=true", "--auto-file-renaming=false"]
        if w.segmented:
            cmd += ["-x", str(SEGMENT_CONNECTIONS), "-s", str(SEGMENT_CONNECTIONS), "-k", "1M"]
        if w.files > LAZY_INPUT_THRESHOLD:
            cmd.append("--deferred-input=true")  # else aria2c parses the whole list up front: ~12 KiB a URL
        return cmd
    if tool == "axel":
        return [
            "axel",
            "-q",
            "-n",
            str(SEGMENT_CONNECTIONS),
            "-o",
            str(out_dir / dataset.name(0)),
            dataset.url(0),
        ]
    raise ValueError(f"unknown tool {tool!r}")


def snapshot_package(dest: Path, rev: str | None = None, *, python: str | None = None) -> tuple[Path, str]:
    """Copy asyncdl/ from this checkout's working tree, or from its commit `rev`, under `dest`.

    Return `dest`, the directory to import asyncdl from, and a description of the code. Every run of one
    benchmark then measures the same code, even while the checkout is being edited. With `python`, the
    copy is byte-compiled by it, as `pip install` does: otherwise every run would compile asyncdl's
    modules again where bytecode is not written (PYTHONDONTWRITEBYTECODE), about 70 ms a run here.
    """
    if rev is None:
        description = f"{git_revision()}; working tree copied at the start"
        shutil.copytree(REPO_ROOT / "asyncdl", dest / "asyncdl", ignore=shutil.ignore_patterns("__pycache__"))
        _compile(dest, python)
        return dest, description
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", "--format=tar", rev, "asyncdl"],
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        if hasattr(tarfile, "data_filter"):  # Python 3.10.12+: refuse odd members (our own repository anyway)
            tar.extractall(dest, filter="data")
        else:
            tar.extractall(dest)
    _compile(dest, python)
    return dest, f"git {resolve_commit(rev)} (--asyncdl-rev {rev})"


def _compile(dest: Path, python: str | None) -> None:
    if python is not None:
        command = [python, "-m", "compileall", "-q", str(dest / "asyncdl")]
        subprocess.run(command, timeout=120, check=True, capture_output=True)


def resolve_commit(rev: str) -> str | None:
    """The short hash of commit `rev` in this checkout, or None when there is no such commit."""
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "--verify", "--quiet", f"{rev}^{{commit}}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except OSError:
        return None
    return done.stdout.strip() or None


def tool_environment(home: Path, package_root: Path) -> dict[str, str]:
    """The environment of every timed run: no proxies, and a private HOME so no ~/.curlrc, ~/.wgetrc,
    ~/.aria2 or ~/.netrc changes what a tool does; asyncdl is imported from `package_root`."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(package_root), os.environ.get("PYTHONPATH", "")) if p)
    return env


@dataclass
class Measurement:
    exit_code: int | None  # None: killed at the timeout
    wall_s: float | None = None
    user_s: float | None = None
    sys_s: float | None = None
    peak_rss_kib: int | None = None
    elapsed_s: float = 0.0  # our own clock around the run, including the start of /usr/bin/time
    output_tail: str = ""


def run_timed(
    cmd: list[str], *, timeout_s: float, cwd: Path, env: dict[str, str], scratch: Path
) -> Measurement:
    """Run `cmd` under /usr/bin/time in its own process group; kill the group at the timeout or on Ctrl-C."""
    time_file = scratch / "time.txt"
    output_file = scratch / "output.txt"
    time_file.unlink(missing_ok=True)
    with output_file.open("wb") as output:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [TIME_BIN, "-f", TIME_FORMAT, "-o", str(time_file), *cmd],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            exit_code: int | None = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            exit_code = None
            kill_group(proc)
        except BaseException:
            kill_group(proc)
            raise
        elapsed = time.perf_counter() - start
    result = Measurement(exit_code=exit_code, elapsed_s=elapsed, output_tail=_tail(output_file))
    if exit_code is not None and time_file.exists():
        lines = time_file.read_text().split("\n")
        fields = [line for line in lines if line.strip()][-1].split()
        with contextlib.suppress(ValueError, IndexError):
            result.wall_s, result.user_s, result.sys_s = float(fields[0]), float(fields[1]), float(fields[2])
            result.peak_rss_kib = int(fields[3])
    return result


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


def _tail(path: Path, limit: int = 600) -> str:
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - limit))
        return f.read().decode(errors="replace").strip()


def _asyncdl_help(python: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str] | str:
    """The run of `python -m asyncdl --help`, or why it could not run."""
    try:
        return subprocess.run(
            [python, "-m", "asyncdl", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=cwd,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)


def check_asyncdl(python: str, env: dict[str, str], cwd: Path) -> str | None:
    """None when `python -m asyncdl --help` works, else why not."""
    done = _asyncdl_help(python, env, cwd)
    if isinstance(done, str):
        return done
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return lines[-1] if lines else f"exit status {done.returncode}"
    return None


def asyncdl_has_option(python: str, env: dict[str, str], cwd: Path, option: str) -> bool:
    """Whether `python -m asyncdl --help` lists `option`."""
    done = _asyncdl_help(python, env, cwd)
    return not isinstance(done, str) and option in done.stdout


def smoke_test_asyncdl(setup: ToolSetup, env: dict[str, str], scratch: Path, base_url: str) -> str | None:
    """None when asyncdl downloads one tiny file correctly, else what went wrong (the end of its output)."""
    out_dir = scratch / "smoke"
    cmd = [setup.python, "-m", "asyncdl", f"{base_url}/tiny/smoke/ok", "-d", str(out_dir), "-q"]
    try:
        done = subprocess.run(
            [*cmd, *setup.asyncdl_args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=scratch,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "no answer within 60 s"
    try:
        if done.returncode != 0:
            return f"exit status {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]!r}"
        if not (out_dir / "ok").is_file() or (out_dir / "ok").read_bytes() != TINY_BODY:
            return "exit status 0, but the file is missing or wrong"
        return None
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def tool_version(tool: str, python: str, env: dict[str, str], cwd: Path) -> str:
    if tool.startswith("asyncdl"):
        cmd = [python, "-c", "import asyncdl; print(getattr(asyncdl, '__version__', '?'))"]
    elif tool == "aiohttp-floor":
        cmd = [python, "-c", "import aiohttp; print('aiohttp', aiohttp.__version__)"]
    elif tool == "ssl-floor":
        cmd = [python, "-c", "import ssl, sys; print(sys.version.split()[0], ssl.OPENSSL_VERSION)"]
    else:
        cmd = [tool, "--version"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env, cwd=cwd, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def git_revision() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "asyncdl"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "no git"
    return f"git {head}{' + uncommitted changes in asyncdl/' if dirty else ''}"


# ----------------------------------------------------------------------------------------------------
# Results


@dataclass
class Run:
    tool: str
    round: int
    ok: bool
    error: str | None
    exit_code: int | None
    wall_s: float | None
    user_s: float | None
    sys_s: float | None
    peak_rss_kib: int | None
    elapsed_s: float
    load_1m: float  # the 1-minute load average just before the run: others' work on a shared machine


@dataclass
class WorkloadResult:
    workload: Workload
    file_system: str
    commands: dict[str, list[str]] = field(default_factory=dict)
    runs: list[Run] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fs_floor_files_per_s: float | None = None

    def good_runs(self, tool: str) -> list[Run]:
        return [run for run in self.runs if run.tool == tool and run.ok]

    def summary(self, tool: str) -> dict[str, Any] | None:
        good = self.good_runs(tool)
        if not good:
            return None
        walls = [run.wall_s for run in good if run.wall_s is not None]
        cpus = [(run.user_s or 0.0) + (run.sys_s or 0.0) for run in good]
        rss = [run.peak_rss_kib for run in good if run.peak_rss_kib is not None]
        wall = statistics.median(walls)
        w = self.workload
        amount = w.total_bytes / MiB if w.rate_unit == "MiB/s" else w.files
        return {
            "runs_ok": len(good),
            "runs": sum(run.tool == tool for run in self.runs),
            "wall_median_s": wall,
            "wall_min_s": min(walls),
            "wall_max_s": max(walls),
            "throughput": amount / wall if wall > 0 else float("inf"),
            "throughput_unit": w.rate_unit,
            "cpu_median_s": statistics.median(cpus),
            "peak_rss_median_mib": statistics.median(rss) / KiB if rss else None,
        }


def markdown_table(result: WorkloadResult, work_dir: str) -> str:
    w = result.workload
    tools = list(result.commands)
    asyncdl = result.summary("asyncdl")
    lines = [
        f"### ({w.key}) {w.title}",
        "",
        f"Output on: {result.file_system}.",
        "",
        f"| tool | ok runs | wall s, median (min-max) | {w.rate_unit} | CPU s (user+sys) | peak RSS MiB "
        "| peer / asyncdl wall | peer / asyncdl-2p wall |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    asyncdl_2p = result.summary("asyncdl-2p")
    for tool in tools:
        s = result.summary(tool)
        total = sum(run.tool == tool for run in result.runs)
        if s is None:
            lines.append(f"| {tool} | 0/{total} | FAILED | | | | | |")
            continue
        ratio = _ratio(s, asyncdl, tool == "asyncdl")
        ratio_2p = _ratio(s, asyncdl_2p, tool == "asyncdl-2p")
        rss = "?" if s["peak_rss_median_mib"] is None else f"{s['peak_rss_median_mib']:.0f}"
        lines.append(
            f"| {tool} | {s['runs_ok']}/{total} "
            f"| {s['wall_median_s']:.2f} ({s['wall_min_s']:.2f}-{s['wall_max_s']:.2f}) "
            f"| {_format_rate(s['throughput'])} | {s['cpu_median_s']:.2f} | {rss} | {ratio} | {ratio_2p} |"
        )
    lines.append("")
    if result.fs_floor_files_per_s is not None:
        lines.append(
            f"File-system floor (one Python thread: open, write, close, rename; no network): "
            f"{result.fs_floor_files_per_s:,.0f} files/s."
        )
    failures = [run for run in result.runs if not run.ok]
    for run in failures:
        lines.append(f"FAILED: {run.tool} round {run.round}: {run.error}")
    lines.extend(result.notes)
    lines.append("Commands: " + "; ".join(f"`{_shorten(cmd, work_dir)}`" for cmd in result.commands.values()))
    return "\n".join(lines) + "\n"


def _ratio(peer: dict[str, Any], base: dict[str, Any] | None, same: bool) -> str:
    if same or base is None:
        return "—"
    return f"{peer['wall_median_s'] / base['wall_median_s']:.2f}"


def _format_rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _shorten(cmd: list[str], work_dir: str) -> str:
    """A command line with the temporary directory shown as $WORK, for the report."""
    return shlex.join(cmd).replace(work_dir, "$WORK")


def write_json(results: list[WorkloadResult], meta: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "meta": meta,
        "workloads": [
            {
                "workload": {
                    k: sorted(v) if isinstance(v, frozenset) else v for k, v in asdict(r.workload).items()
                },
                "file_system": r.file_system,
                "fs_floor_files_per_s": r.fs_floor_files_per_s,
                "commands": r.commands,
                "summary": {tool: r.summary(tool) for tool in r.commands},
                "runs": [asdict(run) for run in r.runs],
                "notes": r.notes,
            }
            for r in results
        ],
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------------
# The benchmark


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, one round: a smoke test")
    parser.add_argument(
        "--only", help="workloads to run, comma-separated: a,b,c,d,e10k,e1m,f,g (e = both lists)"
    )
    parser.add_argument("--runs", type=int, help="rounds per workload (default 5; 3 for d; 1 for e1m)")
    parser.add_argument("--tools", help=f"tools, comma-separated (default: all of {','.join(ALL_TOOLS)})")
    parser.add_argument("--asyncdl-args", default="", help="extra arguments for asyncdl, as one string")
    parser.add_argument("--python", default=sys.executable, help="the Python that runs asyncdl")
    parser.add_argument(
        "--asyncdl-rev",
        metavar="REV",
        help="benchmark asyncdl as committed at REV (default: the working tree)",
    )
    parser.add_argument(
        "--baseline-rev",
        metavar="REV",
        help="also run asyncdl as committed at REV, as the tool asyncdl-base, alternating with the "
        "others in every round: a before / after comparison within one run",
    )
    parser.add_argument("--fs", choices=("ext4", "tmpfs", "dir"), default="ext4", help="output for a-e10k")
    parser.add_argument("--fs-1m", choices=("ext4", "tmpfs", "dir"), default="tmpfs", help="output for e1m")
    parser.add_argument(
        "--timeout", type=float, help="seconds before a timed run is killed (default per workload)"
    )
    parser.add_argument("--nginx-workers", type=int, default=1, help="nginx worker processes (default 1)")
    parser.add_argument("--keep", action="store_true", help="leave the temporary directory for inspection")
    parser.add_argument(
        "--json", type=Path, default=RESULTS_PATH, help=f"results file (default {RESULTS_PATH})"
    )
    args = parser.parse_args(argv)
    keys = [w.key for w in make_workloads(quick=False)]
    if args.only:
        wanted = set()
        for raw_key in args.only.split(","):
            key = raw_key.strip()
            expanded = [k for k in keys if k.startswith("e")] if key == "e" else [key]
            if not set(expanded) <= set(keys):
                parser.error(f"unknown workload {key!r}; known: {', '.join(keys)}, e")
            wanted.update(expanded)
        args.only = wanted
    if args.tools:
        args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
        unknown = set(args.tools) - set(ALL_TOOLS)
        if unknown:
            parser.error(f"unknown tool(s): {', '.join(sorted(unknown))}; known: {', '.join(ALL_TOOLS)}")
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.asyncdl_rev and resolve_commit(args.asyncdl_rev) is None:
        parser.error(f"--asyncdl-rev: no commit {args.asyncdl_rev!r} in {REPO_ROOT}")
    if args.baseline_rev:
        if resolve_commit(args.baseline_rev) is None:
            parser.error(f"--baseline-rev: no commit {args.baseline_rev!r} in {REPO_ROOT}")
        args.tools = [*(args.tools or ALL_TOOLS), "asyncdl-base"]
    return args


def select_workloads(args: argparse.Namespace) -> list[Workload]:
    workloads = make_workloads(quick=args.quick)
    if args.only:
        workloads = [w for w in workloads if w.key in args.only]
    return workloads


def available_tools(args: argparse.Namespace, env: dict[str, str], cwd: Path) -> tuple[list[str], list[str]]:
    """The tools to run, and notes about those skipped."""
    notes = []
    tools = []
    for tool in args.tools or [t for t in ALL_TOOLS if t not in OPT_IN_TOOLS]:
        if tool.startswith("asyncdl"):
            problem = check_asyncdl(args.python, env, cwd)
            if problem:
                notes.append(f"asyncdl skipped: `{args.python} -m asyncdl --help` failed: {problem}")
                continue
        elif tool not in PYTHON_TOOLS and shutil.which(tool) is None:
            notes.append(f"{tool} skipped: not installed")
            continue
        tools.append(tool)
    return tools, notes


def area_sizes(workloads: list[Workload], role: str) -> tuple[int, int]:
    """Bytes and inodes an output area needs for the workloads that use it."""
    mine = [w for w in workloads if w.fs_role == role]
    # tmpfs and ext4 both spend at least one 4 KiB page or block per file; leave room for temporary files.
    size = max(w.total_bytes + w.files * 4 * KiB for w in mine)
    inodes = max(w.files for w in mine)
    return int(size * 1.5) + 512 * MiB, int(inodes * 1.2) + 16_384


def machine_info() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mem_available_gib": round(_mem_available() / GiB, 1),
        "load_average_at_start": [round(x, 2) for x in load],
    }


def benchmark_workload(
    dataset: Dataset,
    area: OutputArea,
    tools: list[str],
    *,
    once: frozenset[str],
    rounds: int,
    timeout_s: float,
    setup: ToolSetup,
    env: dict[str, str],
    scratch: Path,
    result: WorkloadResult,
) -> None:
    """Alternate the tools round by round (A B C A B C ...), each on an empty, synced output directory.

    Tools in `once` run in the first round only.
    """
    w = dataset.workload
    for round_index in range(1, rounds + 1):
        for tool in tools:
            if round_index > 1 and tool in once:
                continue
            out_dir = area.reset()
            cmd = tool_command(tool, dataset, out_dir, setup)
            result.commands.setdefault(tool, cmd)
            os.sync()
            load_1m = os.getloadavg()[0]
            run_env = tool_env(tool, dataset, setup, env)
            measured = run_timed(cmd, timeout_s=timeout_s, cwd=scratch, env=run_env, scratch=scratch)
            error = None
            if measured.exit_code is None:
                done = sum(1 for path in _walk_files(out_dir) if not path.name.startswith("."))
                error = f"killed at the {timeout_s:.0f} s timeout, with {done:,} of {w.files:,} files present"
            elif measured.exit_code != 0:
                error = f"exit status {measured.exit_code}: {measured.output_tail[-300:]!r}"
            elif measured.wall_s is None:
                error = "no timing from /usr/bin/time"
            else:
                error = verify_output(dataset, out_dir, seed=f"{w.key}/{round_index}/{tool}")
            run = Run(
                tool=tool,
                round=round_index,
                ok=error is None,
                error=error,
                exit_code=measured.exit_code,
                wall_s=measured.wall_s,
                user_s=measured.user_s,
                sys_s=measured.sys_s,
                peak_rss_kib=measured.peak_rss_kib,
                elapsed_s=round(measured.elapsed_s, 3),
                load_1m=round(load_1m, 2),
            )
            result.runs.append(run)
            status = f"{run.wall_s:.2f} s" if run.ok else f"FAILED ({error})"
            print(f"  [{w.key} {round_index}/{rounds}] {tool:8} {status}", flush=True)


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt, so that the cleanup runs for them too."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def preflight() -> str | None:
    """None when nginx and GNU time are there, else the message to exit with."""
    if find_nginx() is None:
        return "nginx not found (PATH or /usr/sbin/nginx). Install it with: apt-get install nginx-light"
    if not os.access(TIME_BIN, os.X_OK):
        return f"{TIME_BIN} not found. Install it with: apt-get install time"
    return None


@dataclass
class Session:
    """Everything set up once for all workloads: directories, output areas, nginx, data, tools."""

    args: argparse.Namespace
    work: Path
    env: dict[str, str]
    scratch: Path
    tools: list[str]
    skip_notes: list[str]
    areas: dict[str, OutputArea]
    datasets: list[Dataset]
    setup: ToolSetup


def prepare(args: argparse.Namespace, cleanup: contextlib.ExitStack, meta: dict[str, Any]) -> Session:
    """Make the temporary directory, the output areas, the data; start nginx. `cleanup` undoes it all."""
    workloads = select_workloads(args)
    if any(w.tls for w in workloads) and shutil.which("openssl") is None:
        print("WARNING: openssl not found: the HTTPS workloads are skipped", file=sys.stderr)
        workloads = [w for w in workloads if not w.tls]
    work = Path(tempfile.mkdtemp(prefix="asyncdl-bench-"))
    work.chmod(0o755)  # nginx workers run as an unprivileged user and must read www/
    cleanup.callback(_remove_work_dir, work, keep=args.keep)
    meta["work_dir"] = str(work)
    home, scratch, www = work / "home", work / "scratch", work / "www"
    for directory in (home, scratch, www):
        directory.mkdir()
    package_root, code = snapshot_package(work / "src", args.asyncdl_rev, python=args.python)
    baseline_root = None
    if args.baseline_rev:
        baseline_root = snapshot_package(work / "base-src", args.baseline_rev, python=args.python)[0]
    env = tool_environment(home, package_root)
    tools, skip_notes = available_tools(args, env, scratch)

    areas: dict[str, OutputArea] = {}
    for role, kind in (("disk", args.fs), ("ram", args.fs_1m)):
        if any(w.fs_role == role for w in workloads):
            size, inodes = area_sizes(workloads, role)
            area = OutputArea(kind, work / role, size_bytes=size, inodes=inodes)
            area.root.mkdir()
            cleanup.callback(area.close, keep_image=args.keep)
            area.setup()
            areas[role] = area

    tls: tuple[Path, Path] | None = None
    ca_file: Path | None = None
    if any(w.tls for w in workloads):
        ca_file, cert, key = make_certificates(work / "tls")
        tls = (cert, key)
    nginx = Nginx(
        find_nginx() or "nginx", prefix=work / "nginx", www=www, workers=args.nginx_workers, tls=tls
    )
    cleanup.callback(nginx.stop)
    nginx.start()
    setup = ToolSetup(
        args.python,
        tuple(shlex.split(args.asyncdl_args)),
        ca_file=ca_file,
        asyncdl_ca_option=ca_file is not None
        and asyncdl_has_option(args.python, env, scratch, "--ca-certificate"),
        baseline_root=baseline_root,
    )
    if "asyncdl" in tools:
        problem = smoke_test_asyncdl(setup, env, scratch, nginx.base_url)
        if problem:
            tools = [t for t in tools if not t.startswith("asyncdl")]
            skip_notes.append(f"asyncdl skipped: it failed to download one small file: {problem}")
    for note in skip_notes:
        print(note, file=sys.stderr)
    meta["nginx"] = f"{nginx.version()}, {args.nginx_workers} worker(s)"
    meta["tools"] = {tool: tool_version(tool, args.python, env, scratch) for tool in tools}
    if "asyncdl" in meta["tools"]:
        meta["tools"]["asyncdl"] += f" ({code})"
    meta["skipped"] = skip_notes

    started = time.perf_counter()
    datasets = []
    for w in workloads:
        out_dir = areas[w.fs_role].out_dir
        base_url = nginx.tls_base_url if w.tls else nginx.base_url
        assert base_url is not None
        dataset = Dataset(w, www=www, lists=work / "lists", base_url=base_url, out_dir=out_dir)
        dataset.generate()
        datasets.append(dataset)
    os.sync()  # so that the first timed runs do not pay for writing back the sources
    print(f"generated the data in {time.perf_counter() - started:.1f} s under {work}", flush=True)
    return Session(args, work, env, scratch, tools, skip_notes, areas, datasets, setup)


def run_workload(session: Session, dataset: Dataset) -> WorkloadResult:
    w = dataset.workload
    area = session.areas[w.fs_role]
    result = WorkloadResult(w, f"{area.kind}: {area.description}")
    tools = [
        t
        for t in session.tools
        if not (w.files > 1 and t in SINGLE_FILE_ONLY_TOOLS)
        and not (w.single and t in LIST_ONLY_TOOLS)
        and not (not w.tls and t in TLS_ONLY_TOOLS)
    ]
    if not session.args.tools:
        for tool in sorted(w.slow_peers & set(tools)):
            result.notes.append(f"{tool} not run by default, to keep the full run short; name it in --tools.")
        tools = [t for t in tools if t not in w.slow_peers]
        once = w.first_round_only & set(tools)
        if once:
            result.notes.append(
                f"{', '.join(sorted(once))}: first round only by default (one connection at 8 MiB/s: time "
                "is known); name them in --tools for every round."
            )
    else:
        once = frozenset()
    if w.fs_role == "ram" and area.kind == "tmpfs":
        result.notes.append(
            "This list goes to tmpfs: on ext4, creating a million files alone costs about as much per file "
            "as the fastest peer spends in all (see the floor), so it would time the disk more than the "
            "downloaders."
        )
    if w.file_size <= 16 * KiB:
        floor_files = min(w.files, 20_000)
        result.fs_floor_files_per_s = measure_fs_floor(area.reset(), files=floor_files, file_size=w.file_size)
    print(f"({w.key}) {w.title} -> {area.kind}: {', '.join(tools)}", flush=True)
    benchmark_workload(
        dataset,
        area,
        tools,
        once=once,
        rounds=session.args.runs or w.runs,
        timeout_s=session.args.timeout or w.timeout_s,
        setup=session.setup,
        env=session.env,
        scratch=session.scratch,
        result=result,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = preflight()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    meta: dict[str, Any] = machine_info() | {
        "quick": args.quick,
        "argv": sys.argv[1:] if argv is None else argv,
    }
    results: list[WorkloadResult] = []
    started = time.perf_counter()
    skip_notes: list[str] = []
    try:
        with contextlib.ExitStack() as cleanup, interrupt_on_sigterm():
            session = prepare(args, cleanup, meta)
            skip_notes = session.skip_notes
            for dataset in session.datasets:
                results.append(run_workload(session, dataset))
    except KeyboardInterrupt:
        meta["interrupted"] = True
        print("\ninterrupted: cleaned up; the results so far follow", file=sys.stderr)
    meta["duration_s"] = round(time.perf_counter() - started, 1)
    meta["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print_report(results, meta, skip_notes)
    write_json(results, meta, args.json)
    print(f"\nresults written to {args.json}")
    return 130 if meta.get("interrupted") else 0


def print_report(results: list[WorkloadResult], meta: dict[str, Any], skip_notes: list[str]) -> None:
    load = ", ".join(str(x) for x in meta["load_average_at_start"])
    end_load = ", ".join(str(x) for x in meta["load_average_at_end"])
    print("\n## asyncdl benchmark" + (" (--quick)" if meta.get("quick") else ""))
    print()
    print(
        f"{meta['date']}, {meta['cpus']} CPUs, Linux {meta['kernel']}; "
        f"load average {load} at the start, {end_load} at the end."
    )
    print(f"Server: {meta.get('nginx', 'nginx')} on 127.0.0.1. Total time {meta['duration_s']:.0f} s.")
    for tool, version in meta.get("tools", {}).items():
        print(f"- {tool}: {version}")
    for note in skip_notes:
        print(f"- {note}")
    print()
    print("Medians of the correct runs. Last column: the peer's median wall time divided by asyncdl's;")
    print("above 1 means asyncdl is faster. Throughput in MiB/s or files/s from the median wall time.")
    print()
    for result in results:
        print(markdown_table(result, meta.get("work_dir", "")))


def _remove_work_dir(work: Path, *, keep: bool) -> None:
    if keep:
        print(f"kept {work} (the output file systems are unmounted; their images are kept)", file=sys.stderr)
        return
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
