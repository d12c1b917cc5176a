"""``asyncdl daemon`` as a black box, driven by aria2's own client library (aria2p) and raw JSON-RPC."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import aria2p
import pytest
import requests
import websocket
from daemons import SECRET, Daemon, ThreadedFaultServer, asyncdl_daemon, until

pytestmark = pytest.mark.slow


@pytest.fixture
def files() -> Iterator[ThreadedFaultServer]:
    with ThreadedFaultServer() as server:
        yield server


def client(daemon: Daemon) -> aria2p.API:
    return aria2p.API(aria2p.Client(host="http://127.0.0.1", port=daemon.port, secret=SECRET, timeout=10))


def status_of(api: aria2p.API, gid: str) -> str:
    return str(api.client.tell_status(gid, ["status"])["status"])


def test_aria2p_adds_with_options_and_sees_it_complete(files: ThreadedFaultServer, tmp_path: Path) -> None:
    body = os.urandom(300_000)
    files.route("/data/a.bin", body=body)
    with asyncdl_daemon(tmp_path) as daemon:
        api = client(daemon)
        download = api.add_uris([files.url("/data/a.bin")], options={"out": "named.bin", "dir": "sub"})
        assert len(download.gid) == 16 and int(download.gid, 16)
        until(lambda: status_of(api, download.gid) == "complete", what="complete")
        done = api.get_download(download.gid)
        assert done.status == "complete"
        assert done.total_length == done.completed_length == len(body)
        assert done.dir == tmp_path.resolve() / "sub"
        assert done.files[0].path == tmp_path.resolve() / "sub" / "named.bin"
        assert done.files[0].uris[0]["uri"] == files.url("/data/a.bin")
        assert done.name == "named.bin"
        assert done.error_code == "0"
        assert api.get_options([done])[0].get("out") == "named.bin"
    assert (tmp_path / "sub" / "named.bin").read_bytes() == body


def test_aria2p_lists_pauses_resumes_removes_and_purges(files: ThreadedFaultServer, tmp_path: Path) -> None:
    # One download at a time: the first is held by a server that goes silent, the others wait.
    files.route("/held.bin", body=os.urandom(100_000), stall_after=1000)
    for name in ("w1", "w2", "w3"):
        files.route(f"/{name}.bin", body=name.encode() * 1000)
    with asyncdl_daemon(tmp_path, "-j", "1", "--timeout", "60") as daemon:
        api = client(daemon)
        held = api.add_uris([files.url("/held.bin")])
        until(lambda: api.client.tell_status(held.gid, ["completedLength"])["completedLength"] == "1000")
        w1, w2, w3 = (api.add_uris([files.url(f"/{n}.bin")]) for n in ("w1", "w2", "w3"))

        assert [d["gid"] for d in api.client.tell_active()] == [held.gid]
        assert [d["gid"] for d in api.client.tell_waiting(0, 10)] == [w1.gid, w2.gid, w3.gid]
        assert api.client.tell_stopped(0, 10) == []
        assert {d.gid for d in api.get_downloads()} == {held.gid, w1.gid, w2.gid, w3.gid}

        # Reorder: w3 to the front of the waiting queue.
        assert api.move_to_top(w3) == 0
        assert [d["gid"] for d in api.client.tell_waiting(0, 10, ["gid"])] == [w3.gid, w1.gid, w2.gid]

        # Pause a waiting one and the active one; then resume the active one.
        assert all(r for r in api.pause([w1]))
        assert status_of(api, w1.gid) == "paused"
        assert all(r for r in api.pause([held]))
        until(lambda: status_of(api, held.gid) == "paused", what="held paused")
        # With the active one paused, the queue moves on: w3 and w2 run (w1 stays paused).
        until(lambda: status_of(api, w3.gid) == "complete" and status_of(api, w2.gid) == "complete")
        assert status_of(api, w1.gid) == "paused"
        assert all(r for r in api.resume([w1]))
        until(lambda: status_of(api, w1.gid) == "complete", what="w1 complete")

        # Resume the held one: it continues from the bytes on disk (a Range request).
        files.route("/held.bin", body=files.server.routes["/held.bin"].body)
        assert all(r for r in api.resume([held]))
        until(lambda: status_of(api, held.gid) == "complete", what="held complete")
        assert files.requests_for("/held.bin")[-1].header("Range") == "bytes=1000-"

        stopped = api.client.tell_stopped(0, 10, ["gid", "status"])
        assert {d["gid"] for d in stopped} == {w1.gid, w2.gid, w3.gid, held.gid}
        assert {d["status"] for d in stopped} == {"complete"}

        # Remove: an active download is stopped and its temporary file goes.
        files.route("/gone.bin", body=os.urandom(50_000), stall_after=500)
        gone = api.add_uris([files.url("/gone.bin")])
        until(lambda: api.client.tell_status(gone.gid, ["completedLength"])["completedLength"] == "500")
        assert api.client.remove(gone.gid) == gone.gid  # as aria2: the answer comes before it has stopped
        until(lambda: status_of(api, gone.gid) == "removed", what="removed")
        assert api.client.tell_status(gone.gid, ["errorCode"])["errorCode"] == "31"
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]

        # A download removed while it waits leaves no result (as in aria2): it disappears.
        files.route("/never.bin", body=b"never")
        never = api.add_uris([files.url("/never.bin")], options={"pause": "true"})
        assert all(api.remove([never]))
        assert never.gid not in {d.gid for d in api.get_downloads()}
        assert files.requests_for("/never.bin") == []

        assert api.purge()
        assert api.client.tell_stopped(0, 10) == []
        stat = api.get_stats()
        assert (stat.num_active, stat.num_waiting, stat.num_stopped, stat.num_stopped_total) == (0, 0, 0, 5)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "held.bin",
        "w1.bin",
        "w2.bin",
        "w3.bin",
    ]


def test_aria2p_changes_global_concurrency_and_rate(files: ThreadedFaultServer, tmp_path: Path) -> None:
    for i in range(3):
        files.route(f"/slow{i}.bin", body=os.urandom(50_000), stall_after=100)
    with asyncdl_daemon(tmp_path, "-j", "1") as daemon:
        api = client(daemon)
        gids = [api.add_uris([files.url(f"/slow{i}.bin")]).gid for i in range(3)]
        until(lambda: len(api.client.tell_active(["gid"])) == 1)
        assert len(api.client.tell_waiting(0, 10)) == 2
        assert api.set_global_options({"max-concurrent-downloads": "3", "max-overall-download-limit": "1M"})
        until(lambda: len(api.client.tell_active(["gid"])) == 3, what="three active")
        options = api.get_global_options()
        assert options.get("max-concurrent-downloads") == "3"
        assert options.get("max-overall-download-limit") == str(1024 * 1024)
        assert "rpc-secret" not in api.client.get_global_option()
        assert api.set_global_options({"max-overall-download-limit": "0"})
        assert api.get_global_options().get("max-overall-download-limit") == "0"
        api.client.force_remove(gids[0])


def test_multicall_and_batch(files: ThreadedFaultServer, tmp_path: Path) -> None:
    files.route("/m.bin", body=b"m" * 100)
    with asyncdl_daemon(tmp_path) as daemon:
        api = client(daemon)
        answers = api.client.multicall(
            [
                {"methodName": "aria2.addUri", "params": [[files.url("/m.bin")]]},
                {"methodName": "aria2.getVersion", "params": []},
                {"methodName": "aria2.tellStatus", "params": ["0123456789abcdef"]},
                {"methodName": "aria2.nonsense", "params": []},
            ]
        )
        gid = answers[0][0]
        assert len(gid) == 16
        assert answers[1][0]["version"]
        assert answers[2] == {"code": 1, "message": "GID 0123456789abcdef is not found"}
        assert answers[3] == {"code": 1, "message": "No such method: aria2.nonsense"}
        # A multicall with a wrong secret in one call: that call alone is refused.
        raw = daemon.call(
            "system.multicall",
            [
                {"methodName": "aria2.getGlobalStat", "params": ["token:wrong"]},
                {"methodName": "aria2.getGlobalStat", "params": [f"token:{SECRET}"]},
            ],
            token="",
        ).json()["result"]
        assert raw[0] == {"code": 1, "message": "Unauthorized"}
        assert "numActive" in raw[1][0]
        # A JSON-RPC batch (a list of requests) gets a list of answers.
        batch = [
            {"jsonrpc": "2.0", "id": 1, "method": "aria2.getVersion", "params": [f"token:{SECRET}"]},
            {"jsonrpc": "2.0", "id": 2, "method": "system.listNotifications"},
        ]
        answers2 = daemon_post(daemon, json.dumps(batch)).json()
        assert [a["id"] for a in answers2] == [1, 2]
        assert "aria2.onDownloadComplete" in answers2[1]["result"]
        methods = api.client.call("system.listMethods")
        for name in ("aria2.addUri", "aria2.changePosition", "system.multicall", "aria2.saveSession"):
            assert name in methods


def daemon_post(daemon: Daemon, body: str | bytes, **headers: str) -> requests.Response:
    return requests.post(daemon.url, data=body, headers=headers, timeout=10)


def test_notifications_over_websocket_to_aria2p(files: ThreadedFaultServer, tmp_path: Path) -> None:
    files.route("/probe.bin", body=os.urandom(10_000), stall_after=0)
    files.route("/n.bin", body=b"n" * 5000)
    completed: list[str] = []
    paused: list[str] = []
    done = threading.Event()
    with asyncdl_daemon(tmp_path) as daemon:
        api = client(daemon)

        def on_complete(_api: aria2p.API, gid: str) -> None:
            completed.append(gid)
            done.set()

        api.listen_to_notifications(
            threaded=True,
            on_download_complete=on_complete,
            on_download_pause=lambda _api, gid: paused.append(gid),
            timeout=1,
            handle_signals=False,
        )
        try:
            # Until the listener is connected, pausing and resuming a probe makes pause notifications.
            probe = api.add_uris([files.url("/probe.bin")])

            def heard_a_pause() -> bool:
                api.client.pause(probe.gid)
                until(lambda: status_of(api, probe.gid) == "paused")
                if paused:
                    return True
                api.client.unpause(probe.gid)
                until(lambda: status_of(api, probe.gid) == "active")
                return False

            until(heard_a_pause, what="a pause notification")
            assert paused[0] == probe.gid
            gid = api.add_uris([files.url("/n.bin")]).gid
            assert done.wait(30)
            assert completed == [gid]
        finally:
            api.stop_listening()
            if api.listener is not None:
                api.listener.join(10)


def test_websocket_answers_calls_too(files: ThreadedFaultServer, tmp_path: Path) -> None:
    with asyncdl_daemon(tmp_path) as daemon:
        socket = websocket.create_connection(f"ws://127.0.0.1:{daemon.port}/jsonrpc", timeout=10)
        try:
            socket.send(
                json.dumps({"jsonrpc": "2.0", "id": 7, "method": "aria2.getGlobalStat", "params": []})
            )
            answer = json.loads(socket.recv())
            assert answer == {"jsonrpc": "2.0", "id": 7, "error": {"code": 1, "message": "Unauthorized"}}
            socket.send(
                json.dumps(
                    {
                        "jsonrpc": "2.0",
                        "id": 8,
                        "method": "aria2.getGlobalStat",
                        "params": [f"token:{SECRET}"],
                    }
                )
            )
            assert json.loads(socket.recv())["result"]["numActive"] == "0"
        finally:
            socket.close()


def test_errors_are_aria2s(files: ThreadedFaultServer, tmp_path: Path) -> None:
    files.route("/missing.bin", statuses=[404])
    with asyncdl_daemon(tmp_path) as daemon:
        api = client(daemon)
        gid = api.add_uris([files.url("/missing.bin")]).gid
        until(lambda: status_of(api, gid) == "error", what="error")
        status = api.client.tell_status(gid, ["errorCode", "errorMessage", "status"])
        assert status["errorCode"] == "3"
        assert "404" in status["errorMessage"]
        for method, params, message in [
            ("aria2.tellStatus", ["zz"], "Invalid GID zz"),
            ("aria2.pause", ["0123456789abcdef"], "GID 0123456789abcdef is not found"),
            ("aria2.pause", [gid], f"GID#{gid} cannot be paused now"),
            ("aria2.unpause", [gid], f"GID#{gid} cannot be unpaused now"),
            ("aria2.remove", [gid], f"Active Download not found for GID#{gid}"),
            ("aria2.addUri", [[]], "URI is not provided."),
            ("aria2.changePosition", [gid, 0, "POS_SET"], f"GID#{gid} not found in the waiting queue."),
            ("aria2.tellWaiting", [0], "The parameter at 1 is required but missing."),
            ("aria2.saveSession", [], "Filename is not given."),
        ]:
            response = daemon.call(method, *params)
            assert response.status_code == 400
            assert response.json()["error"] == {"code": 1, "message": message}, method
        parse = daemon_post(daemon, b"{not json")
        assert parse.json()["error"]["code"] == -32700
        invalid = daemon_post(daemon, json.dumps({"jsonrpc": "2.0", "method": "aria2.getVersion"}))
        assert invalid.json()["error"] == {"code": -32600, "message": "Invalid Request."}


def test_stopped_results_are_bounded_oldest_dropped_first(files: ThreadedFaultServer, tmp_path: Path) -> None:
    for i in range(5):
        files.route(f"/r{i}", body=b"r" * (i + 1))
    with asyncdl_daemon(tmp_path, "--max-download-result", "3", "-j", "1") as daemon:
        api = client(daemon)
        gids = [api.add_uris([files.url(f"/r{i}")]).gid for i in range(5)]
        until(lambda: api.get_stats().num_stopped_total == 5, what="all stopped")
        assert [d["gid"] for d in api.client.tell_stopped(0, 10, ["gid"])] == gids[2:]
        assert [d["gid"] for d in api.client.tell_stopped(-1, 2, ["gid"])] == [gids[4], gids[3]]
        assert api.set_global_options({"max-download-result": "1"})
        assert [d["gid"] for d in api.client.tell_stopped(0, 10, ["gid"])] == [gids[4]]
        assert api.client.remove_download_result(gids[4]) == "OK"
        assert api.client.tell_stopped(0, 10) == []


def test_options_uris_files_and_shutdown(files: ThreadedFaultServer, tmp_path: Path) -> None:
    files.route("/o.bin", body=b"o" * 2000)
    files.route("/mirror/o.bin", body=b"o" * 2000)
    session = tmp_path / "session.txt"
    with asyncdl_daemon(tmp_path / "root", "--save-session", str(session)) as daemon:
        uris = [files.url("/o.bin"), files.url("/mirror/o.bin")]
        gid = daemon.result("aria2.addUri", uris, {"out": "first.bin", "pause": "true", "split": "1"})
        assert daemon.result("aria2.getUris", gid) == [  # not tried yet (as aria2c)
            {"uri": uris[0], "status": "waiting"},
            {"uri": uris[1], "status": "waiting"},
        ]
        # Options changed before it starts apply to it: a new name, a checksum.
        digest = "sha-256=" + hashlib.sha256(b"o" * 2000).hexdigest()
        assert daemon.result("aria2.changeOption", gid, {"out": "renamed.bin", "checksum": digest}) == "OK"
        options = daemon.result("aria2.getOption", gid)
        assert (options["out"], options["checksum"], options["split"]) == ("renamed.bin", digest, "1")
        assert options["dir"] == str((tmp_path / "root").resolve())
        assert daemon.result("aria2.unpause", gid) == gid
        until(lambda: daemon.result("aria2.tellStatus", gid, ["status"])["status"] == "complete")
        (entry,) = daemon.result("aria2.getFiles", gid)
        assert [u["status"] for u in entry["uris"]] == ["used", "waiting"]
        assert Path(entry["path"]) == (tmp_path / "root" / "renamed.bin").resolve()
        assert (entry["length"], entry["completedLength"], entry["selected"]) == ("2000", "2000", "true")
        assert daemon.result("aria2.getOption", gid)["out"] == "renamed.bin"  # kept for stopped ones too
        session_id = daemon.result("aria2.getSessionInfo")["sessionId"]
        assert len(session_id) == 40 and int(session_id, 16) >= 0
        later = daemon.result("aria2.addUri", [files.url("/o.bin")], {"pause": "true", "out": "later.bin"})
        assert daemon.result("aria2.shutdown") == "OK"
        assert daemon.process.wait(20) == 0  # it stops by itself, after answering
    assert (tmp_path / "root" / "renamed.bin").read_bytes() == b"o" * 2000
    assert f" gid={later}\n" in session.read_text()  # the session is saved at the end


def test_run_options_reach_the_scheduler(files: ThreadedFaultServer, tmp_path: Path) -> None:
    for name in ("s1", "s2"):
        files.route(f"/{name}.bin", body=os.urandom(10_000), stall_after=10)
    with asyncdl_daemon(tmp_path, "-j", "4", "--max-per-host", "1") as daemon:
        first = daemon.result("aria2.addUri", [files.url("/s1.bin")])
        second = daemon.result("aria2.addUri", [files.url("/s2.bin")])
        until(lambda: daemon.result("aria2.tellStatus", first, ["status"])["status"] == "active")
        # Four slots, but one download at a time for this origin: the second waits.
        assert [a["gid"] for a in daemon.result("aria2.tellActive", ["gid"])] == [first]
        assert daemon.result("aria2.tellStatus", second, ["status"])["status"] == "waiting"


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    for argv in ([], ["-d", str(tmp_path), "--rpc-listen-port", "x"], ["-d", str(tmp_path), "-i", "missing"]):
        done = subprocess.run(
            [sys.executable, "-m", "asyncdl", "daemon", *argv],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, argv
        assert "Traceback" not in done.stderr
