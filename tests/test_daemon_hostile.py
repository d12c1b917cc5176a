"""What a careless or hostile JSON-RPC client sends the daemon: aria2's answer, never a crash."""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from asyncdl import Downloader
from asyncdl import _aria2 as a2
from asyncdl._cli_daemon import daemon_main
from asyncdl._daemon import Daemon, DaemonConfig
from asyncdl._exceptions import UsageError

SECRET = "right"


async def answer(core: Daemon, request: Any) -> tuple[int, dict[str, Any]]:
    body = request if isinstance(request, bytes) else json.dumps(request).encode()
    result = await core.handle_body(body)
    assert result is not None
    status, text = result
    return status, json.loads(text)


def call(method: str, *params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 7, "method": method, "params": [f"token:{SECRET}", *params]}


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the parser goes
        b'{"jsonrpc": "2.0", "id": 1, "method": "aria2.getVersion", "params": ["token:\\ud800"]}',
        b'{"jsonrpc": "2.0", "id": 1, "method": "aria2.addUri", "params": ["token:right", '
        b'["http://127.0.0.1/a"], {"out": "\\udc80"}]}',
    ],
    ids=["deep", "surrogate-token", "surrogate-option"],
)
async def test_unreadable_json_is_a_parse_error(tmp_path: Path, body: bytes) -> None:
    async with Downloader(tmp_path) as dl:
        core = Daemon(dl, DaemonConfig(root=tmp_path, secret=SECRET), log=lambda _: None)
        _, reply = await answer(core, body)
        assert reply["error"] == {"code": -32700, "message": "Parse error."}
        assert core.live == {}  # nothing was queued


@pytest.mark.parametrize("value", ["1e400", "inf", "-inf"])
async def test_an_overflowing_rate_is_aria2s_error(tmp_path: Path, value: str) -> None:
    async with Downloader(tmp_path) as dl:
        core = Daemon(dl, DaemonConfig(root=tmp_path, secret=SECRET), log=lambda _: None)
        status, reply = await answer(
            core, call("aria2.changeGlobalOption", {"max-overall-download-limit": value})
        )
        assert status == 400
        assert reply["error"]["code"] == 1
        assert "max-overall-download-limit" in reply["error"]["message"]
        assert dl.limit_rate is None


async def test_answers_never_show_passwords_nor_credential_headers(tmp_path: Path) -> None:
    async with Downloader(tmp_path) as dl:
        core = Daemon(dl, DaemonConfig(root=tmp_path, secret=SECRET), log=lambda _: None)
        options = {
            "pause": "true",
            "http-user": "ann",
            "http-passwd": "PASSWD-1",
            "referer": "http://ann:PASSWD-5@127.0.0.1:9/",
            "header": ["Authorization: Bearer TOKEN-2", "Cookie: id=COOKIE-3", "X-Note: shown"],
        }
        _, added = await answer(
            core, call("aria2.addUri", ["http://ann:PASSWD-4@127.0.0.1:9/f.bin"], options)
        )
        gid = added["result"]
        replies = [
            await answer(core, call(method, *params))
            for method, params in [
                ("aria2.getOption", [gid]),
                ("aria2.getUris", [gid]),
                ("aria2.getFiles", [gid]),
                ("aria2.tellStatus", [gid]),
                ("aria2.tellWaiting", [0, 10]),
            ]
        ]
        text = json.dumps(replies)
        for secret in ("PASSWD-1", "TOKEN-2", "COOKIE-3", "PASSWD-4", "PASSWD-5"):
            assert secret not in text
        shown = replies[0][1]["result"]
        assert shown["http-user"] == "ann"
        assert shown["header"] == ["Authorization: ***", "Cookie: ***", "X-Note: shown"]
        assert replies[1][1]["result"][0]["uri"] == "http://ann:***@127.0.0.1:9/f.bin"
        # A client that sends back what getOption showed (as front ends do) keeps the real values.
        shown.pop("dir")
        _, changed = await answer(core, call("aria2.changeOption", gid, {**shown, "http-user": "bob"}))
        assert changed["result"] == "OK"
        (entry,) = core.session_entries()
        assert entry.options["http-passwd"] == "PASSWD-1"
        assert entry.options["header"] == options["header"]
        assert entry.options["http-user"] == "bob"
        assert entry.uris == ["http://ann:PASSWD-4@127.0.0.1:9/f.bin"]


async def test_a_skipped_session_entry_is_logged_without_its_password(tmp_path: Path) -> None:
    logs: list[str] = []
    async with Downloader(tmp_path) as dl:
        core = Daemon(dl, DaemonConfig(root=tmp_path, secret=SECRET), log=logs.append)
        assert core.load_session("http://ann:PASSWD-1@127.0.0.1:9/f.bin\n dir=/etc\n") == 0
    (line,) = logs
    assert "http://ann:***@127.0.0.1:9/f.bin" in line
    assert "outside the download directory" in line
    assert "PASSWD-1" not in line


def test_a_session_file_with_bytes_that_are_not_utf8_still_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = tmp_path / "session.txt"
    session.write_bytes(b"http://127.0.0.1:9/good.bin\nhttp://127.0.0.1:9/bad\xff.bin\n")
    loaded: list[str | None] = []

    async def serve(*args: Any, input_text: str | None, **kwargs: Any) -> None:
        loaded.append(input_text)

    monkeypatch.setattr("asyncdl._cli_daemon.serve", serve)
    argv = ["-d", str(tmp_path / "root"), "--rpc-secret", SECRET, "-i", str(session)]
    assert (
        daemon_main(argv, run=lambda main: asyncio.run(main()), stdout=io.StringIO(), stderr=io.StringIO())
        == 0
    )
    assert loaded == ["http://127.0.0.1:9/good.bin\nhttp://127.0.0.1:9/bad\ufffd.bin\n"]


async def test_the_last_session_write_waits_for_one_under_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At exit the daemon cancels a pending write, but a thread already writing goes on: the last
    # write must not interleave with it in the temporary file (a corrupt or older session).
    session = tmp_path / "session.txt"
    entered, release = threading.Event(), threading.Event()
    real = a2.format_session

    def first_one_slow(entries: Any) -> str:
        text = real(entries)
        if not entered.is_set():
            entered.set()
            release.wait(10)
        return text

    monkeypatch.setattr("asyncdl._aria2.format_session", first_one_slow)
    async with Downloader(tmp_path) as dl:
        core = Daemon(dl, DaemonConfig(root=tmp_path, secret=SECRET, session=session), log=lambda _: None)

        def write(name: str) -> threading.Thread:
            entries = [a2.SessionEntry([f"http://127.0.0.1:9/{name}"])]
            thread = threading.Thread(target=core._write_entries, args=(entries,))
            thread.start()
            return thread

        under_way = write("older-entry")
        assert entered.wait(10)
        last = write("last")
        last.join(0.5)  # without the lock it is done by now, and the older write then spoils it
        release.set()
        under_way.join(10)
        last.join(10)
    assert session.read_text() == "http://127.0.0.1:9/last\n"


def test_a_session_file_that_cannot_be_written_is_told_at_start(tmp_path: Path) -> None:
    argv = [
        "-d",
        str(tmp_path / "root"),
        "--rpc-secret",
        SECRET,
        "--save-session",
        str(tmp_path / "no" / "s.txt"),
    ]

    def never(main: Any) -> int:
        raise AssertionError("the daemon started")

    with pytest.raises(UsageError, match=r"cannot write session file .*s\.txt: .* is not writable"):
        daemon_main(argv, run=never, stdout=io.StringIO(), stderr=io.StringIO())


async def test_the_session_is_never_written_through_a_link_put_in_its_directory(tmp_path: Path) -> None:
    # Another user of a shared directory links the temporary file's name to a file of ours.
    session = tmp_path / "session.txt"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    for pid in range(os.getpid() - 5, os.getpid() + 5):
        (tmp_path / f".session.txt.{pid}.tmp").symlink_to(victim)
    async with Downloader(tmp_path / "root") as dl:
        core = Daemon(
            dl, DaemonConfig(root=tmp_path / "root", secret=SECRET, session=session), log=lambda _: None
        )
        core.add(["http://127.0.0.1:9/f.bin"], {"pause": "true"})
        core.save_session_now()
    assert victim.read_text() == "precious\n"
    assert session.read_text().startswith("http://127.0.0.1:9/f.bin\n")
    assert not session.is_symlink()
    assert stat.S_IMODE(session.stat().st_mode) == 0o600


def test_a_secret_file_that_cannot_be_written_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / ".asyncdl-rpc-secret").mkdir()  # in the way, and not ours to remove

    def never(main: Any) -> int:
        raise AssertionError("the daemon started")

    out = io.StringIO()
    with pytest.raises(
        UsageError, match=r"cannot write the secret file .*\.asyncdl-rpc-secret: .*--rpc-secret"
    ):
        daemon_main(["-d", str(tmp_path)], run=never, stdout=out, stderr=io.StringIO())
    assert out.getvalue() == ""  # no secret shown that nothing could use
