"""The same JSON-RPC steps against ``asyncdl daemon`` and the real ``aria2c --enable-rpc``, compared field
by field. Where asyncdl must differ, the difference is named here (and in the README)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from daemons import Daemon, ThreadedFaultServer, aria2c_daemon, asyncdl_daemon, until

pytestmark = pytest.mark.slow

BODY = os.urandom(300_000)
# Fields whose values legitimately differ, by kind of download.
ALWAYS_DIFFERENT = {"gid", "dir", "files", "downloadSpeed"}


@pytest.fixture
def files() -> Iterator[ThreadedFaultServer]:
    with ThreadedFaultServer() as server:
        server.route("/a.bin", body=BODY)
        server.route("/missing.bin", statuses=[404])
        server.route("/held.bin", body=os.urandom(100_000), stall_after=1000)
        yield server


@pytest.fixture
def both(tmp_path: Path) -> Iterator[dict[str, Daemon]]:
    if shutil.which("aria2c") is None:
        pytest.fail("aria2c is not installed (apt-get install aria2; .ci/run installs it)")
    with ExitStack() as stack:
        yield {
            "aria2c": stack.enter_context(
                aria2c_daemon(tmp_path / "aria2c", "--max-concurrent-downloads=1", "--split=1")
            ),
            "asyncdl": stack.enter_context(asyncdl_daemon(tmp_path / "asyncdl", "-j", "1")),
        }


def status(daemon: Daemon, gid: str, *keys: str) -> dict[str, Any]:
    answer: dict[str, Any] = daemon.result("aria2.tellStatus", gid, list(keys))
    return answer


def wait_status(daemon: Daemon, gid: str, *wanted: str) -> dict[str, Any]:
    until(lambda: status(daemon, gid, "status")["status"] in wanted, what=f"{wanted} on {daemon.url}")
    return status(daemon, gid)


def relative_file(daemon: Daemon, answer: dict[str, Any]) -> dict[str, Any]:
    """files[0] with its path relative to the daemon's directory (each has its own)."""
    one = dict(answer["files"][0])
    if one["path"]:
        one["path"] = str(Path(one["path"]).relative_to(daemon.dir.resolve()))
    return one


def compare(answers: dict[str, dict[str, Any]], *, differ: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    ours, theirs = answers["asyncdl"], answers["aria2c"]
    assert set(ours) == set(theirs), (sorted(ours), sorted(theirs))
    for key in set(theirs) - ALWAYS_DIFFERENT - differ:
        assert ours[key] == theirs[key], (key, ours[key], theirs[key])


def test_a_completed_download_field_by_field(files: ThreadedFaultServer, both: dict[str, Daemon]) -> None:
    answers, file_entries = {}, {}
    for name, daemon in both.items():
        # aria2c takes dir as a path of its own file system; asyncdl as one below its root.
        where = str(daemon.dir.resolve() / "sub") if name == "aria2c" else "sub"
        gid = daemon.result("aria2.addUri", [files.url("/a.bin")], {"out": "a.bin", "dir": where})
        answers[name] = wait_status(daemon, gid, "complete", "error")
        file_entries[name] = relative_file(daemon, answers[name])
        assert (daemon.dir / "sub" / "a.bin").read_bytes() == BODY
        assert Path(answers[name]["dir"]) == daemon.dir.resolve() / "sub"
    compare(answers)
    assert answers["asyncdl"]["status"] == "complete"
    assert answers["asyncdl"]["bitfield"] == answers["aria2c"]["bitfield"] == "80"
    ours, theirs = file_entries["asyncdl"], file_entries["aria2c"]
    # aria2c lists the URI once per connection it planned (split): the used one comes first.
    assert ours["uris"][0] == theirs["uris"][0] == {"uri": files.url("/a.bin"), "status": "used"}
    del ours["uris"], theirs["uris"]
    assert (
        ours
        == theirs
        == {
            "index": "1",
            "path": "sub/a.bin",
            "length": "300000",
            "completedLength": "300000",
            "selected": "true",
        }
    )


def test_a_failed_download_field_by_field(files: ThreadedFaultServer, both: dict[str, Daemon]) -> None:
    answers = {}
    for name, daemon in both.items():
        gid = daemon.result("aria2.addUri", [files.url("/missing.bin")])
        answers[name] = wait_status(daemon, gid, "complete", "error")
    # Differs: errorMessage is asyncdl's own ("HTTP 404 Not Found: ..." against aria2c's
    # "Resource not found"); files[0].path is the planned target (aria2c: "" when no name was known).
    compare(answers, differ={"errorMessage"})
    assert answers["asyncdl"]["status"] == "error"
    assert answers["asyncdl"]["errorCode"] == answers["aria2c"]["errorCode"] == "3"
    assert "404" in answers["asyncdl"]["errorMessage"]


def test_paused_waiting_reordered_and_removed_as_aria2c(
    files: ThreadedFaultServer, both: dict[str, Daemon]
) -> None:
    for name, daemon in both.items():
        # (aria2c counts completedLength in whole blocks: the 1,000 bytes sent do not show there.)
        before = len(files.requests_for("/held.bin"))
        held = daemon.result("aria2.addUri", [files.url("/held.bin")], {"out": f"held-{name}.bin"})
        until(lambda n=before: len(files.requests_for("/held.bin")) > n, what=name)
        wait_status(daemon, held, "active")
        first = daemon.result("aria2.addUri", [files.url("/a.bin")], {"out": "first.bin", "pause": "true"})
        second = daemon.result("aria2.addUri", [files.url("/a.bin")], {"out": "second.bin"})
        third = daemon.result("aria2.addUri", [files.url("/a.bin")], {"out": "third.bin"}, 0)  # at the head

        keys = ["status", "totalLength", "completedLength", "connections", "numPieces"]
        waiting = daemon.result("aria2.tellWaiting", 0, 10, ["gid", *keys])
        assert [w["gid"] for w in waiting] == [third, first, second], name
        assert [w["status"] for w in waiting] == ["waiting", "paused", "waiting"], name
        assert all(w["totalLength"] == "0" and w["numPieces"] == "0" for w in waiting), name
        assert daemon.result("aria2.tellWaiting", -1, 2, ["gid"]) == [{"gid": second}, {"gid": first}], name
        active = daemon.result("aria2.tellActive", ["gid", "status", "completedLength", "connections"])
        assert [(a["gid"], a["status"], a["connections"]) for a in active] == [(held, "active", "1")], name

        # changePosition answers a number (not a string), as aria2c.
        assert daemon.result("aria2.changePosition", second, 0, "POS_SET") == 0, name
        assert daemon.result("aria2.changePosition", second, 1, "POS_CUR") == 1, name
        assert daemon.result("aria2.changePosition", second, -5, "POS_END") == 0, name
        assert [w["gid"] for w in daemon.result("aria2.tellWaiting", 0, 10, ["gid"])] == [
            second,
            third,
            first,
        ]
        assert daemon.call("aria2.changePosition", held, 0, "POS_SET").json()["error"] == {
            "code": 1,
            "message": f"GID#{held} not found in the waiting queue.",
        }

        # Pausing and unpausing a waiting download; the errors for the wrong state.
        assert daemon.result("aria2.pause", third) == third
        assert (
            daemon.call("aria2.pause", third).json()["error"]["message"]
            == f"GID#{third} cannot be paused now"
        )
        assert daemon.result("aria2.unpause", third) == third
        assert (
            daemon.call("aria2.unpause", third).json()["error"]["message"]
            == f"GID#{third} cannot be unpaused now"
        )
        stat = daemon.result("aria2.getGlobalStat")
        assert (stat["numActive"], stat["numWaiting"], stat["numStopped"]) == ("1", "3", "0"), name

        # Removing a waiting download forgets it; removing the active one leaves a "removed" result.
        assert daemon.result("aria2.remove", first) == first
        assert (
            daemon.call("aria2.tellStatus", first).json()["error"]["message"] == f"GID {first} is not found"
        )
        assert daemon.result("aria2.forceRemove", held) == held
        removed = wait_status(daemon, held, "removed")
        assert (removed["errorCode"], removed["status"]) == ("31", "removed"), name

        # Shapes of the answers that hold no download.
        assert daemon.result("aria2.pauseAll") == "OK"
        assert daemon.result("aria2.unpauseAll") == "OK"
        assert daemon.result("aria2.purgeDownloadResult") == "OK"
        assert held not in [s["gid"] for s in daemon.result("aria2.tellStopped", 0, 10, ["gid"])], name
        assert set(daemon.result("aria2.getGlobalStat")) == {
            "downloadSpeed",
            "uploadSpeed",
            "numActive",
            "numWaiting",
            "numStopped",
            "numStoppedTotal",
        }
        assert set(daemon.result("aria2.getVersion")) == {"version", "enabledFeatures"}
        assert len(daemon.result("aria2.getSessionInfo")["sessionId"]) == 40
        assert daemon.result("aria2.changeGlobalOption", {"max-concurrent-downloads": "3"}) == "OK"
        assert daemon.result("aria2.getGlobalOption")["max-concurrent-downloads"] == "3"
        multicall = daemon.call(
            "system.multicall",
            [
                {"methodName": "aria2.getGlobalStat", "params": [f"token:{daemon.secret}"]},
                {"methodName": "aria2.tellStatus", "params": [f"token:{daemon.secret}", "zz"]},
                {"methodName": "aria2.getVersion", "params": ["token:wrong"]},
            ],
            token="",
        ).json()["result"]
        assert isinstance(multicall[0], list) and "numActive" in multicall[0][0], name
        assert multicall[1:] == [
            {"code": 1, "message": "Invalid GID zz"},
            {"code": 1, "message": "Unauthorized"},
        ]
        unauthorized = daemon.call("aria2.getVersion", token="wrong")
        assert (unauthorized.status_code, unauthorized.json()["error"]) == (
            400,
            {"code": 1, "message": "Unauthorized"},
        )
        assert sorted(daemon.result("system.listNotifications")) == sorted(
            [
                "aria2.onDownloadStart",
                "aria2.onDownloadPause",
                "aria2.onDownloadStop",
                "aria2.onDownloadComplete",
                "aria2.onDownloadError",
                "aria2.onBtDownloadComplete",
            ]
        )
