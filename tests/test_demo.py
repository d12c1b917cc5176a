"""`asyncdl demo`: the README's first command in a fresh virtual environment, the demo's server and
the closing words, and the pure decisions of its server."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

from asyncdl._cli_demo import _demo
from asyncdl._demo import DemoFile, DemoPlan, OpeningOrigin, answer, content, demo_plan, digest

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


def _readme_run_command() -> str:
    """The command under "Run" in the README's set-up."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^Run \(from a clone\):\n\n    (.+)$", readme, re.MULTILINE)
    assert match is not None, "the README has no 'Run (from a clone):' command"
    return match.group(1)


def _copy_checkout(to: Path) -> Path:
    """The files of a clone (what git tracks, and new files not ignored), as they are in this work tree."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (to / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, to / name)
    return to


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_the_readme_run_command_works_in_a_fresh_virtual_environment(tmp_path: Path) -> None:
    command = _readme_run_command()
    assert command == "pip install . && asyncdl demo"
    clone = _copy_checkout(tmp_path / "clone")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    # As a user's shell after `. venv/bin/activate`; pip finds packages as configured on this machine.
    env = {key: value for key, value in os.environ.items() if key not in {"VIRTUAL_ENV", "PYTHONPATH"}}
    env["VIRTUAL_ENV"] = str(env_dir)
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        command,
        cwd=clone,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=220)
    stderr = err.decode()
    stdout = " ".join(out.decode().split())  # as read, whatever the line breaks
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert (env_dir / "bin" / "asyncdl").exists()  # the command that ran is the one pip installed

    demo_dir = clone / "asyncdl-demo"
    plan = demo_plan()
    records = [json.loads(line) for line in (demo_dir / "report.jsonl").read_text().splitlines()]
    assert len(records) == len(plan.files) > 300
    assert {r["status"] for r in records} == {"ok"}
    for demo_file in plan.files:
        saved = demo_dir / demo_file.path.lstrip("/")
        assert saved.stat().st_size == demo_file.size, demo_file.path
    video = next(r for r in records if r["url"].endswith("/large/video.mp4"))
    assert video["attempts"] == 2  # broken half-way, then resumed
    assert hashlib.sha256((demo_dir / "large" / "video.mp4").read_bytes()).hexdigest() == digest(
        plan.by_path["/large/video.mp4"]
    )
    assert any(r["attempts"] > 1 for r in records if "/api/" in r["url"])  # 429 at first
    # The normal display (not a terminal here: plain lines) and the summary, then the closing words.
    assert f"{len(plan.files)} ok, 0 skipped, 0 failed;" in stderr
    assert "Traceback" not in stderr
    assert "retried: " in stdout and "'429 Too Many Requests'" in stdout
    assert "resumed: the connection of large/video.mp4 broke at 8.0 MiB of 16.0 MiB" in stdout
    assert "Range: bytes=8388608-" in stdout
    assert f"Files: {demo_dir.resolve()}{os.sep}" in stdout
    assert f"Report: {(demo_dir / 'report.jsonl').resolve()}" in stdout


async def test_the_demo_server_breaks_once_limits_at_first_and_the_story_says_so(tmp_path: Path) -> None:
    plan = DemoPlan(
        (
            DemoFile("/small/a.txt", 1000),
            DemoFile("/large/cut.bin", 3 * MiB, breaks_at=1 * MiB, checksum=True),
            DemoFile("/stream/s.log", 300_000, chunked=True),
            DemoFile("/api/x.json", 500, limited=True),
        ),
        limited_for_s=0.5,
    )
    stderr, stdout = io.StringIO(), io.StringIO()

    assert await _demo(tmp_path, plan, stderr, stdout) == 0

    for demo_file in plan.files:
        expected = b"".join(content(demo_file, 0, demo_file.size))
        assert (tmp_path / demo_file.path.lstrip("/")).read_bytes() == expected
    lines = (tmp_path / "report.jsonl").read_text().splitlines()
    records = {r["url"].rpartition("/")[2]: r for r in map(json.loads, lines)}
    assert records["cut.bin"]["attempts"] == 2
    assert records["x.json"]["attempts"] == 2
    assert records["a.txt"]["attempts"] == records["s.log"]["attempts"] == 1
    story = " ".join(stdout.getvalue().split())  # as read, whatever the line breaks
    assert "retried: 1 file from http://127.0.0.1:" in story
    assert "(1 such answer);" in story
    assert "resumed: the connection of large/cut.bin broke at 1.0 MiB of 3.0 MiB" in story
    assert "(Range: bytes=1048576-) and appended it; its sha-256 matched" in story
    assert "2 downloads needed more than one attempt (2 retries in all); all 4 arrived" in story
    assert f"Files: {tmp_path.resolve()}{os.sep} Report: {(tmp_path / 'report.jsonl').resolve()}" in story
    assert "4 ok, 0 skipped, 0 failed;" in stderr.getvalue()


def test_answers_ranges_if_range_and_429() -> None:
    f = DemoFile("/f.bin", 100)
    assert answer(f, range_header=None, if_range=None, closed_for_s=None) == answer(
        f, range_header="bytes=x", if_range=None, closed_for_s=None
    )
    assert answer(f, range_header=None, if_range=None, closed_for_s=None).status == 200
    resumed = answer(f, range_header="bytes=40-", if_range=f.etag, closed_for_s=None)
    assert (resumed.status, resumed.start, resumed.end) == (206, 40, 100)
    piece = answer(f, range_header="bytes=10-19", if_range=None, closed_for_s=None)
    assert (piece.status, piece.start, piece.end) == (206, 10, 20)
    changed = answer(f, range_header="bytes=40-", if_range='"another"', closed_for_s=None)
    assert (changed.status, changed.start, changed.end) == (200, 0, 100)
    assert answer(f, range_header="bytes=100-", if_range=None, closed_for_s=None).status == 416
    limited = answer(f, range_header=None, if_range=None, closed_for_s=1.2)
    assert (limited.status, limited.retry_after_s) == (429, 2)
    chunked = DemoFile("/s.log", 100, chunked=True)  # no Content-Length, no ranges
    assert answer(chunked, range_header="bytes=40-", if_range=None, closed_for_s=None).status == 200


def test_an_origin_opens_a_while_after_its_first_request() -> None:
    origin = OpeningOrigin(3.0)
    assert origin.closed_for(100.0) == 3.0
    assert origin.closed_for(102.5) == 0.5
    assert origin.closed_for(103.0) is None
    assert origin.closed_for(200.0) is None


def test_contents_are_the_same_in_any_pieces() -> None:
    f = DemoFile("/large/x.img", 300_000)
    whole = b"".join(content(f, 0, f.size))
    assert len(whole) == f.size
    assert b"".join(content(f, 1234, 200_001, chunk_size=4096)) == whole[1234:200_001]
    assert all(len(piece) <= 4096 for piece in content(f, 7, 100_000, chunk_size=4096))
    assert hashlib.sha256(whole).hexdigest() == digest(f)
    assert whole != b"".join(content(DemoFile("/large/y.img", 300_000), 0, 300_000))
    text = b"".join(content(DemoFile("/small/n.txt", 500), 0, 500))
    assert text.startswith(b"n.txt line 00000: ")


def test_the_plan_has_what_the_readme_promises() -> None:
    plan = demo_plan()
    files = plan.files
    assert sum(f.path.startswith("/small/") for f in files) == 300
    assert sum(f.size >= 16 * MiB for f in files) == 4
    assert [f.path for f in files if f.breaks_at] == ["/large/video.mp4"]
    assert any(f.chunked for f in files)
    assert sum(f.limited for f in files) >= 10
    assert len({f.path for f in files}) == len(files)
    requests = plan.requests("http://a", "http://b")
    assert [r.url.startswith("http://b/api/") for r in requests] == [f.limited for f in files]
