"""How a local download daemon is attacked from a web page, and how ``asyncdl daemon`` refuses it."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import websocket
from daemons import SECRET, ThreadedFaultServer, asyncdl_daemon, until

from asyncdl import Downloader
from asyncdl._aria2 import RpcError
from asyncdl._daemon import Daemon as DaemonCore
from asyncdl._daemon import DaemonConfig
from asyncdl._web import origin_allowed

pytestmark = pytest.mark.slow


@pytest.fixture
def files() -> Iterator[ThreadedFaultServer]:
    with ThreadedFaultServer() as server:
        yield server


def listening_addresses(port: int) -> set[str]:
    """The local addresses a TCP socket of this machine listens on at ``port`` (from /proc/net/tcp*)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                address, port_hex = fields[1].rsplit(":", 1)
                if int(port_hex, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                    found.add(address)
    return found


def test_listens_on_loopback_unless_told_otherwise(tmp_path: Path) -> None:
    with asyncdl_daemon(tmp_path) as daemon:
        assert listening_addresses(daemon.port) == {"0100007F"}  # 127.0.0.1
    with asyncdl_daemon(tmp_path, "--rpc-listen-all") as daemon:
        assert listening_addresses(daemon.port) == {"00000000"}  # 0.0.0.0
        assert daemon.result("aria2.getVersion")["version"]


def test_a_wrong_or_missing_secret_changes_nothing(files: ThreadedFaultServer, tmp_path: Path) -> None:
    files.route("/x.bin", body=b"x" * 100)
    with asyncdl_daemon(tmp_path) as daemon:
        for token in ("wrong", SECRET + "x", SECRET[:-1], ""):
            answer = daemon.call("aria2.addUri", [files.url("/x.bin")], token=token)
            assert answer.status_code == 400
            assert answer.json()["error"] == {"code": 1, "message": "Unauthorized"}
        # No token at all, and the token in the wrong place: refused too.
        assert daemon.call("aria2.getGlobalStat", token="").json()["error"]["message"] == "Unauthorized"
        misplaced = daemon.call("aria2.addUri", [files.url("/x.bin")], f"token:{SECRET}", token="")
        assert misplaced.json()["error"]["message"] == "Unauthorized"
        assert daemon.call("aria2.shutdown", token="nope").json()["error"]["message"] == "Unauthorized"
        stat_ = daemon.result("aria2.getGlobalStat")
        assert (stat_["numActive"], stat_["numWaiting"], stat_["numStopped"]) == ("0", "0", "0")
        assert daemon.process.poll() is None  # the shutdown was refused
    assert files.requests_for("/x.bin") == []


def test_generated_secret_is_in_a_private_file_and_printed_once(tmp_path: Path) -> None:
    with asyncdl_daemon(tmp_path, secret=None) as daemon:
        secret_file = tmp_path / ".asyncdl-rpc-secret"
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        secret = secret_file.read_text().strip()
        assert len(secret) >= 24
        daemon.secret = secret
        assert daemon.result("aria2.getVersion")["version"]
        assert daemon.call("aria2.getVersion", token="guess").status_code == 400
        out, err = daemon.stop()
    assert out.count(secret) == 1
    assert secret not in err


async def test_secrets_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    compared: list[tuple[bytes, bytes]] = []

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return a == b

    monkeypatch.setattr("asyncdl._daemon.hmac.compare_digest", spy)
    async with Downloader(tmp_path) as dl:
        core = DaemonCore(dl, DaemonConfig(root=tmp_path, secret="right"), log=lambda _: None)
        with pytest.raises(RpcError, match="Unauthorized"):
            core.call("aria2.getVersion", ["token:wrong"])
        assert core.call("aria2.getVersion", ["token:right"])["version"]
    assert compared == [(b"wrong", b"right"), (b"right", b"right")]


def test_a_page_of_another_origin_is_refused(files: ThreadedFaultServer, tmp_path: Path) -> None:
    files.route("/x.bin", body=b"x" * 100)
    with asyncdl_daemon(tmp_path) as daemon:
        evil = daemon.call("aria2.addUri", [files.url("/x.bin")], Origin="http://evil.example")
        assert evil.status_code == 403
        also_evil = daemon.call("aria2.getVersion", Origin=f"http://evil.example:{daemon.port}")
        assert also_evil.status_code == 403
        handshake = {
            "Origin": "http://evil.example",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
        }
        assert requests.get(daemon.url, headers=handshake, timeout=10).status_code == 403
        handshake["Origin"] = f"http://127.0.0.1:{daemon.port}"
        with requests.get(daemon.url, headers=handshake, timeout=10, stream=True) as upgraded:
            assert upgraded.status_code == 101
        # Without an Origin header (a program, not a page) and from the daemon's own page: allowed.
        assert daemon.call("aria2.getVersion").status_code == 200
        own = daemon.call("aria2.getVersion", Origin=f"http://127.0.0.1:{daemon.port}")
        assert own.status_code == 200
        assert daemon.result("aria2.getGlobalStat")["numWaiting"] == "0"
    assert files.requests_for("/x.bin") == []
    with asyncdl_daemon(tmp_path, "--rpc-allow-origin-all") as daemon:
        allowed = daemon.call("aria2.getVersion", Origin="http://evil.example")
        assert allowed.status_code == 200
        assert allowed.headers["Access-Control-Allow-Origin"] == "*"


def test_origin_rule() -> None:
    assert origin_allowed(None, host_header="127.0.0.1:6800", port=6800, listen_all=False)
    assert origin_allowed("http://localhost:6800", host_header="x", port=6800, listen_all=False)
    assert origin_allowed("http://[::1]:6800", host_header="x", port=6800, listen_all=False)
    assert not origin_allowed("http://127.0.0.1:6801", host_header="x", port=6800, listen_all=False)
    assert not origin_allowed("https://127.0.0.1:6800", host_header="x", port=6800, listen_all=False)
    assert not origin_allowed("http://evil.example", host_header="evil.example", port=80, listen_all=False)
    assert not origin_allowed("null", host_header="x", port=6800, listen_all=False)
    # Listening on every interface, the daemon's own name as the browser addressed it is its origin.
    assert origin_allowed("http://nas.lan:6800", host_header="nas.lan:6800", port=6800, listen_all=True)
    assert not origin_allowed(
        "http://evil.example:6800", host_header="nas.lan:6800", port=6800, listen_all=True
    )


BAD_DIRS = ["..", "../elsewhere", "sub/../../up", "/etc", "/tmp", "/"]


def test_a_dir_leaving_the_root_is_refused(files: ThreadedFaultServer, tmp_path: Path) -> None:
    files.route("/x.bin", body=b"x" * 100)
    root = tmp_path / "root"
    with asyncdl_daemon(root) as daemon:
        gid = daemon.result("aria2.addUri", [files.url("/x.bin")], {"out": "ok.bin", "pause": "true"})
        for bad_dir in BAD_DIRS:
            answer = daemon.call("aria2.addUri", [files.url("/x.bin")], {"dir": bad_dir})
            assert answer.status_code == 400
            assert "outside the download directory" in answer.json()["error"]["message"], bad_dir
            change = daemon.call("aria2.changeOption", gid, {"dir": bad_dir})
            assert "outside the download directory" in change.json()["error"]["message"], bad_dir
        daemon.result("aria2.unpause", gid)
        until(lambda: daemon.result("aria2.tellStatus", gid, ["status"])["status"] == "complete")
        assert daemon.result("aria2.getGlobalStat")["numStoppedTotal"] == "1"
    assert len(files.requests_for("/x.bin")) == 1  # the good one alone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]
    assert (root / "ok.bin").read_bytes() == b"x" * 100


def test_out_is_a_name_inside_the_root(files: ThreadedFaultServer, tmp_path: Path) -> None:
    files.route("/x.bin", body=b"x" * 100)
    root = tmp_path / "root"
    with asyncdl_daemon(root, "-j", "1") as daemon:
        gid = daemon.result("aria2.addUri", [files.url("/x.bin")], {"out": "../../escaped.bin"})
        until(lambda: daemon.result("aria2.tellStatus", gid, ["status"])["status"] == "complete")
        path = Path(daemon.result("aria2.getFiles", gid)[0]["path"])
    assert not (tmp_path / "escaped.bin").exists()
    assert path.parent == root.resolve()
    assert path.read_bytes() == b"x" * 100


def test_bodies_over_2_mib_are_refused(tmp_path: Path) -> None:
    with asyncdl_daemon(tmp_path) as daemon:
        uris = ["http://127.0.0.1:9/" + "a" * 1000] * 2200  # about 2.2 MB of JSON
        body = json.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": "aria2.addUri", "params": [f"token:{SECRET}", uris]}
        )
        assert len(body) > 2 * 1024 * 1024
        answer = requests.post(daemon.url, data=body, timeout=10)
        assert answer.status_code == 413
        socket = websocket.create_connection(f"ws://127.0.0.1:{daemon.port}/jsonrpc", timeout=10)
        try:
            socket.send(body)
            with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
                socket.recv()
                socket.recv()
        finally:
            socket.shutdown()
        assert daemon.result("aria2.getGlobalStat")["numWaiting"] == "0"


def test_the_secret_is_never_logged_nor_saved(files: ThreadedFaultServer, tmp_path: Path) -> None:
    files.route("/held.bin", body=os.urandom(10_000), stall_after=10)
    session = tmp_path / "session.txt"
    root = tmp_path / "root"
    with asyncdl_daemon(root, "--save-session", str(session)) as daemon:
        daemon.result("aria2.addUri", [files.url("/held.bin")], {"header": [f"X-Note: {SECRET[:4]}"]})
        daemon.call("aria2.getVersion", token=SECRET + "wrong")
        daemon.call("aria2.nonsense")
        options = daemon.result("aria2.getGlobalOption")
        assert SECRET not in json.dumps(options)
        assert daemon.result("aria2.saveSession") == "OK"
        out, err = daemon.stop()
    assert SECRET not in out
    assert SECRET not in err
    assert SECRET not in session.read_text()
    for path in root.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes()
