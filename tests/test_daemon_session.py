"""The daemon's queue survives a restart (--save-session kept current, -i brings it back, partial files
resume) and stays bounded in memory."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemons import ThreadedFaultServer, asyncdl_daemon, until

from asyncdl._aria2 import parse_session

pytestmark = pytest.mark.slow

MiB = 1024 * 1024


@pytest.fixture
def files() -> Iterator[ThreadedFaultServer]:
    with ThreadedFaultServer() as server:
        yield server


def session_gids(path: Path) -> dict[str, dict[str, str | list[str]]]:
    if not path.exists():
        return {}
    return {str(e.options["gid"]): e.options for e in parse_session(path.read_text())}


def part_size(directory: Path, name: str) -> int:
    parts = list(directory.glob(f".asyncdl-{name}-*.part"))
    return parts[0].stat().st_size if parts else 0


def test_sigkill_mid_download_then_restart_resumes(files: ThreadedFaultServer, tmp_path: Path) -> None:
    big = os.urandom(3 * MiB)
    stalled_at = MiB + 4096  # more than a write buffer: part of it is on disk when the daemon is killed
    files.route("/big.bin", body=big, stall_after=stalled_at)
    files.route("/later.bin", body=b"later" * 1000)
    files.route("/parked.bin", body=b"parked" * 1000)
    root = tmp_path / "root"
    session = tmp_path / "session.txt"
    with asyncdl_daemon(root, "-j", "1", "--save-session", str(session)) as daemon:
        big_gid = daemon.result("aria2.addUri", [files.url("/big.bin")], {"out": "big.bin"})
        later_gid = daemon.result("aria2.addUri", [files.url("/later.bin")])
        parked_gid = daemon.result("aria2.addUri", [files.url("/parked.bin")], {"pause": "true"})
        # The session file follows the queue as it changes, without a saveSession call.
        until(lambda: set(session_gids(session)) == {big_gid, later_gid, parked_gid}, what="session written")
        assert session_gids(session)[parked_gid].get("pause") == "true"
        assert session_gids(session)[big_gid].get("out") == "big.bin"
        until(lambda: part_size(root, "big.bin") > 0, what="bytes of big.bin on disk")
        assert daemon.result("aria2.tellStatus", later_gid, ["status"])["status"] == "waiting"
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait(10)
    kept = part_size(root, "big.bin")
    assert 0 < kept <= stalled_at
    assert big[:kept] == next(root.glob(".asyncdl-big.bin-*.part")).read_bytes()

    files.route("/big.bin", body=big)  # the server answers in full now
    before = len(files.requests_for("/big.bin"))
    with asyncdl_daemon(root, "-j", "1", "-i", str(session), "--save-session", str(session)) as daemon:
        # The same downloads, under the same GIDs: the paused one still paused.
        assert daemon.result("aria2.tellStatus", parked_gid, ["status"])["status"] == "paused"
        until(lambda: daemon.result("aria2.tellStatus", big_gid, ["status"])["status"] == "complete")
        until(lambda: daemon.result("aria2.tellStatus", later_gid, ["status"])["status"] == "complete")
        assert daemon.result("aria2.tellStatus", parked_gid, ["status"])["status"] == "paused"
        until(lambda: set(session_gids(session)) == {parked_gid}, what="session without the finished")
        daemon.result("aria2.unpause", parked_gid)
        until(lambda: daemon.result("aria2.tellStatus", parked_gid, ["status"])["status"] == "complete")
        _out, err = daemon.stop(signal.SIGTERM)
    assert "Traceback" not in err, err
    resumed = files.requests_for("/big.bin")[before:]
    assert [r.header("Range") for r in resumed] == [f"bytes={kept}-"]
    assert (root / "big.bin").read_bytes() == big
    assert (root / "later.bin").read_bytes() == b"later" * 1000
    assert (root / "parked.bin").read_bytes() == b"parked" * 1000
    assert session.read_text() == ""  # nothing left to do


def test_session_written_at_exit_holds_active_waiting_and_paused(
    files: ThreadedFaultServer, tmp_path: Path
) -> None:
    files.route("/held.bin", body=os.urandom(100_000), stall_after=100)
    files.route("/wait.bin", body=b"w")
    session = tmp_path / "s.txt"
    with asyncdl_daemon(tmp_path / "root", "-j", "1", "--save-session", str(session)) as daemon:
        held = daemon.result(
            "aria2.addUri", [files.url("/held.bin")], {"header": ["X-Token: abc"], "split": "2"}
        )
        until(
            lambda: daemon.result("aria2.tellStatus", held, ["completedLength"])["completedLength"] == "100"
        )
        waiting = daemon.result("aria2.addUri", [files.url("/wait.bin")])
        daemon.result("aria2.pause", waiting)
        _out, err = daemon.stop(signal.SIGTERM)
    assert daemon.process.returncode == 143, err
    entries = parse_session(session.read_text())
    assert [e.uris for e in entries] == [[files.url("/held.bin")], [files.url("/wait.bin")]]
    assert entries[0].options == {"gid": held, "header": ["X-Token: abc"], "split": "2"}
    assert entries[1].options == {"gid": waiting, "pause": "true"}
    assert os.stat(session).st_mode & 0o077 == 0  # the headers may hold secrets: the user's alone


def test_a_queue_of_100000_urls_stays_under_256_mib(tmp_path: Path) -> None:
    urls = tmp_path / "queue.txt"
    with urls.open("w") as out:
        for i in range(100_000):
            out.write(f"http://127.0.0.1:9/files/{i:07d}.bin\n pause=true\n")
    with asyncdl_daemon(tmp_path / "root", "-i", str(urls)) as daemon:
        stat = daemon.result("aria2.getGlobalStat")
        assert stat["numWaiting"] == "100000"
        last = daemon.result("aria2.tellWaiting", -1, 1, ["status", "files"])
        assert last[0]["status"] == "paused"
        assert last[0]["files"][0]["uris"][0]["uri"].endswith("0099999.bin")
        status = Path(f"/proc/{daemon.process.pid}/status").read_text()
        peak_kib = int(status.split("VmHWM:")[1].split()[0])
    assert peak_kib < 256 * 1024, f"peak RSS {peak_kib // 1024} MiB"
