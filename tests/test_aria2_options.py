"""aria2c input files run unchanged: each honoured key, seen from the server's side, through the real command.

The list is written as aria2c takes it (``-i``): a URL at column 0, its options on indented lines.
Each test runs ``python -m asyncdl`` against a local server that records what it received.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import time
from pathlib import Path

import pytest
from clirun import run_cli
from faultserver import FaultServer
from httpserver import FileServer

from asyncdl import Request, __version__
from asyncdl._urllist import format_request, parse_lines

MIB = 1024 * 1024
# Five pieces of 4 MiB (the last one short): after the first, four are left for the connections.
BIG = os.urandom(17 * MIB)


def write_list(path: Path, *entries: tuple[str, list[str]]) -> Path:
    path.write_text("".join(url + "\n" + "".join(f"  {o}\n" for o in options) for url, options in entries))
    return path


async def test_split_uses_that_many_connections(file_server: FileServer, tmp_path: Path) -> None:
    file_server.add("/big.bin", BIG)
    file_server.gate, file_server.gate_skip = 4, 1  # the pieces wait until four are in flight at once
    url_list = write_list(tmp_path / "in.txt", (file_server.url("/big.bin"), ["split=4"]))

    code, err = await run_cli("-i", str(url_list), "-d", str(tmp_path / "out"), "-q")

    assert code == 0, err
    assert (tmp_path / "out" / "big.bin").read_bytes() == BIG
    assert file_server.max_in_flight == 4
    ranges = [r.headers.get("Range") for r in file_server.requests_for("/big.bin")]
    assert len(ranges) == 5
    assert all(ranges)


async def test_the_smaller_of_split_and_max_connection_per_server(
    file_server: FileServer, tmp_path: Path
) -> None:
    file_server.add("/big.bin", BIG)
    file_server.gate, file_server.gate_skip = 2, 1
    url_list = write_list(
        tmp_path / "in.txt", (file_server.url("/big.bin"), ["split=8", "max-connection-per-server=2"])
    )

    code, err = await run_cli("-i", str(url_list), "-d", str(tmp_path / "out"), "-q")

    assert code == 0, err
    assert (tmp_path / "out" / "big.bin").read_bytes() == BIG
    assert file_server.max_in_flight == 2


async def test_referer_and_user_agent_go_with_every_hop(file_server: FileServer, tmp_path: Path) -> None:
    file_server.add("/moved", redirect_to="/file")
    file_server.add("/file", b"content")
    file_server.add("/plain", b"plain")
    url_list = write_list(
        tmp_path / "in.txt",
        (file_server.url("/moved"), ["referer=https://example.org/page", "user-agent=Wget/1.21.3"]),
        (file_server.url("/plain"), []),
    )

    code, err = await run_cli(str(url_list), "-d", str(tmp_path / "out"), "-q")

    assert code == 0, err
    for path in ("/moved", "/file"):
        (seen,) = file_server.requests_for(path)
        assert seen.headers["User-Agent"] == "Wget/1.21.3"
        assert seen.headers["Referer"] == "https://example.org/page"
    (plain,) = file_server.requests_for("/plain")
    assert plain.headers["User-Agent"] == f"asyncdl/{__version__}"
    assert "Referer" not in plain.headers


async def test_http_user_and_passwd_go_to_that_origin_only(file_server: FileServer, tmp_path: Path) -> None:
    async with FaultServer(host="127.0.0.2") as elsewhere:
        elsewhere.route("/file", body=b"from elsewhere")
        file_server.add("/secret", b"secret")
        file_server.add("/away", redirect_to=elsewhere.url("/file"))
        url_list = write_list(
            tmp_path / "in.txt",
            (file_server.url("/secret"), ["http-user=alice", "http-passwd=hunter2"]),
            (file_server.url("/away"), ["http-user=alice", "http-passwd=hunter2", "out=away.bin"]),
        )
        report = tmp_path / "report.jsonl"

        code, err = await run_cli(str(url_list), "-d", str(tmp_path / "out"), "--report", str(report))

        assert code == 0, err
        expected = "Basic " + base64.b64encode(b"alice:hunter2").decode()
        assert file_server.requests_for("/secret")[0].headers["Authorization"] == expected
        assert file_server.requests_for("/away")[0].headers["Authorization"] == expected
        (redirected,) = elsewhere.requests_for("/file")
        assert not redirected.has_header("Authorization")
    assert (tmp_path / "out" / "away.bin").read_bytes() == b"from elsewhere"
    assert "hunter2" not in err + report.read_text()


async def test_max_download_limit_caps_that_download(fault_server: FaultServer, tmp_path: Path) -> None:
    body = os.urandom(96 * 1024)
    fault_server.route("/slow.bin", body=body)
    url_list = write_list(tmp_path / "in.txt", (fault_server.url("/slow.bin"), ["max-download-limit=32K"]))

    started = time.monotonic()
    code, err = await run_cli(str(url_list), "-d", str(tmp_path / "out"), "-q")
    elapsed = time.monotonic() - started

    assert code == 0, err
    assert (tmp_path / "out" / "slow.bin").read_bytes() == body
    # 96 KiB at 32 KiB/s, less a burst of 0.1 s: never under 2.9 s, however fast the machine.
    assert elapsed >= 2.5


async def test_lowest_speed_limit_cuts_that_download_when_it_crawls(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    body = bytes(range(256)) * 16  # 4 KiB, served at 2,000 bytes/s: below a floor of 4K/s
    fault_server.route("/crawl", body=body, rate=2000)
    fault_server.route("/patient", body=body, rate=2000)
    url_list = write_list(
        tmp_path / "in.txt",
        (fault_server.url("/crawl"), ["lowest-speed-limit=4K", "max-tries=2"]),
        (fault_server.url("/patient"), []),
    )
    report = tmp_path / "report.jsonl"

    code, _ = await run_cli(
        str(url_list), "-d", str(tmp_path / "out"), "--timeout", "0.5", "--report", str(report), "-q"
    )

    assert code == 1
    records = {
        json.loads(line)["url"].rsplit("/", 1)[1]: json.loads(line)
        for line in report.read_text().splitlines()
    }
    assert records["crawl"]["status"] == "failed"
    assert "too slow" in records["crawl"]["error"]
    assert records["crawl"]["attempts"] == 2
    _first, second = fault_server.requests_for("/crawl")
    assert second.header("Range") is not None  # the cut attempt's bytes were kept and resumed
    assert records["patient"]["status"] == "ok"
    assert (tmp_path / "out" / "patient").read_bytes() == body


async def test_allow_overwrite_replaces_that_download_only(file_server: FileServer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_bytes(b"old a")
    (out / "b.txt").write_bytes(b"old b")
    file_server.add("/a.txt", b"new a")
    file_server.add("/b.txt", b"new b")
    url_list = write_list(
        tmp_path / "in.txt",
        (file_server.url("/a.txt"), ["allow-overwrite=true"]),
        (file_server.url("/b.txt"), []),
    )

    code, err = await run_cli(str(url_list), "-d", str(out), "-q")

    assert code == 0, err
    assert (out / "a.txt").read_bytes() == b"new a"
    assert (out / "b.txt").read_bytes() == b"old b"
    assert file_server.requests_for("/b.txt") == []


async def test_max_tries_counts_attempts_in_all(fault_server: FaultServer, tmp_path: Path) -> None:
    for path in ("/two", "/one", "/default"):
        fault_server.route(path, statuses=[503], retry_after=0)
    url_list = write_list(
        tmp_path / "in.txt",
        (fault_server.url("/two"), ["max-tries=2"]),
        (fault_server.url("/one"), ["max-tries=1"]),
        (fault_server.url("/default"), []),
    )
    report = tmp_path / "report.jsonl"

    code, _ = await run_cli(
        str(url_list), "-d", str(tmp_path / "out"), "--retries", "3", "--report", str(report), "-q"
    )

    assert code == 1
    assert len(fault_server.requests_for("/two")) == 2
    assert len(fault_server.requests_for("/one")) == 1
    assert len(fault_server.requests_for("/default")) == 4  # --retries 3: four attempts
    attempts = {
        json.loads(line)["url"].rsplit("/", 1)[1]: json.loads(line)["attempts"]
        for line in report.read_text().splitlines()
    }
    assert attempts == {"two": 2, "one": 1, "default": 4}


async def test_an_unknown_key_is_reported_once_and_the_download_runs(
    file_server: FileServer, tmp_path: Path
) -> None:
    file_server.add("/a", b"a")
    file_server.add("/b", b"b")
    url_list = write_list(
        tmp_path / "in.txt",
        (file_server.url("/a"), ["pause=true", "bt-tracker=x"]),
        (file_server.url("/b"), ["pause=true"]),
    )

    code, err = await run_cli(str(url_list), "-d", str(tmp_path / "out"))

    assert code == 0, err
    assert (tmp_path / "out" / "a").read_bytes() == b"a"
    assert (tmp_path / "out" / "b").read_bytes() == b"b"
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert warnings == [
        f"asyncdl: warning: {url_list}:2: unknown option 'pause' ignored",
        f"asyncdl: warning: {url_list}:3: unknown option 'bt-tracker' ignored",
    ]


async def test_unknown_keys_on_standard_input_are_reported_too(
    file_server: FileServer, tmp_path: Path
) -> None:
    file_server.add("/a", b"a")
    text = f"{file_server.url('/a')}\n  pause=true\n  user-agent=UA/9\n".encode()

    code, err = await run_cli("-", "-d", str(tmp_path / "out"), stdin=text)

    assert code == 0, err
    assert "asyncdl: warning: <stdin>:2: unknown option 'pause' ignored" in err.splitlines()
    assert file_server.requests_for("/a")[0].headers["User-Agent"] == "UA/9"


async def test_the_options_travel_to_worker_processes(fault_server: FaultServer, tmp_path: Path) -> None:
    fault_server.route("/a", body=b"a")
    fault_server.route("/b", body=b"b")
    fault_server.route("/gone", statuses=[503], retry_after=0)
    url_list = write_list(
        tmp_path / "in.txt",
        (fault_server.url("/a"), ["user-agent=curl/8.0", "referer=https://r.example/", "http-user=u"]),
        (fault_server.url("/b"), ["http-user=bob", "http-passwd=pw"]),
        (fault_server.url("/gone"), ["max-tries=2"]),
    )

    code, _ = await run_cli(
        str(url_list), "-d", str(tmp_path / "out"), "--processes", "2", "--shard-size", "1", "-q"
    )

    assert code == 1
    (a,) = fault_server.requests_for("/a")
    assert (a.header("User-Agent"), a.header("Referer")) == ("curl/8.0", "https://r.example/")
    assert a.header("Authorization") == "Basic " + base64.b64encode(b"u:").decode()
    (b,) = fault_server.requests_for("/b")
    assert b.header("Authorization") == "Basic " + base64.b64encode(b"bob:pw").decode()
    assert len(fault_server.requests_for("/gone")) == 2


def test_every_option_survives_pickling_and_the_list_format() -> None:
    request = Request(
        "https://example.org/f",
        mirrors=("https://mirror.example/f",),
        out="f.bin",
        dir="sub",
        checksum="md5=098f6bcd4621d373cade4e832627b4f6",
        headers=[("X-A", "1"), ("X-A", "2")],
        connections=3,
        user_agent="UA/1",
        referer="https://example.org/",
        auth=("alice", "pw with spaces"),
        limit_rate="500K",
        overwrite=True,
        max_tries=4,
        lowest_speed_limit="10K",
    )
    assert pickle.loads(pickle.dumps(request)) == request
    (parsed,) = parse_lines(format_request(request).splitlines(), source="s")
    assert parsed == request
    (plain,) = parse_lines(format_request(Request("https://example.org/g")).splitlines(), source="s")
    assert plain == Request("https://example.org/g")


@pytest.mark.parametrize("bad", [{"connections": 0}, {"max_tries": -1}, {"limit_rate": "fast"}])
def test_a_request_refuses_bad_options(bad: dict[str, object]) -> None:
    from asyncdl import UsageError

    with pytest.raises(UsageError):
        Request("https://example.org/f", **bad)  # type: ignore[arg-type]
