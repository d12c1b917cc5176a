"""The command line as users run it: `python -m asyncdl ...` in a subprocess against a local server."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from httpserver import FileServer

import asyncdl
from asyncdl._cli import download_parser


async def run_cli(*args: str, stdin: bytes | None = None, cwd: Path | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asyncdl",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_list_downloads_with_report_and_exit_1_when_one_fails(
    file_server: FileServer, tmp_path: Path
) -> None:
    file_server.add("/a.txt", b"A" * 10)
    file_server.add("/b.bin", b"B" * 2000)
    url_list = tmp_path / "urls.txt"
    url_list.write_text(
        "# a comment\n"
        f"{file_server.url('/a.txt')}\n"
        "\n"
        f"{file_server.url('/b.bin')}\n"
        "  out=renamed.bin\n"
        "  dir=sub\n"
        f"{file_server.url('/missing')}\n"
        "not-a-url\n"
    )
    out_dir = tmp_path / "out"
    report = tmp_path / "report.jsonl"

    code, stdout, stderr = await run_cli(
        str(url_list), "-d", str(out_dir), "-j", "4", "--report", str(report)
    )

    assert code == 1
    assert (out_dir / "a.txt").read_bytes() == b"A" * 10
    assert (out_dir / "sub" / "renamed.bin").read_bytes() == b"B" * 2000
    records = [json.loads(line) for line in report.read_text().splitlines()]
    assert len(records) == 4
    assert all(set(r) == {"url", "path", "status", "bytes", "attempts", "error"} for r in records)
    by_status = sorted(r["status"] for r in records)
    assert by_status == ["failed", "failed", "ok", "ok"]
    bad = next(r for r in records if r["url"] == "not-a-url")
    assert f"{url_list}:8" in bad["error"]
    # Not a terminal: no redrawing, one line per failure and one summary line.
    assert stdout == ""
    lines = stderr.strip().splitlines()
    assert sum(line.startswith("FAILED") for line in lines) == 2
    assert "2 ok, 0 skipped, 2 failed" in lines[-1]
    assert "Traceback" not in stderr


async def test_rerun_skips_everything_and_exits_0(file_server: FileServer, tmp_path: Path) -> None:
    file_server.add("/a", b"a")
    file_server.add("/b", b"b")
    url_list = tmp_path / "urls.txt"
    url_list.write_text(f"{file_server.url('/a')}\n{file_server.url('/b')}\n")
    out_dir = tmp_path / "out"
    assert (await run_cli(str(url_list), "-d", str(out_dir), "-q"))[0] == 0
    sent = len(file_server.requests)
    code, _, stderr = await run_cli(str(url_list), "-d", str(out_dir))
    assert code == 0
    assert len(file_server.requests) == sent  # nothing requested again
    assert "0 ok, 2 skipped, 0 failed" in stderr


async def test_stdin_and_direct_urls_are_sources(file_server: FileServer, tmp_path: Path) -> None:
    file_server.add("/one", b"1")
    file_server.add("/two", b"2")
    code, _, _ = await run_cli(
        "-", file_server.url("/two"), "-d", str(tmp_path), "-q", stdin=f"{file_server.url('/one')}\n".encode()
    )
    assert code == 0
    assert (tmp_path / "one").read_bytes() == b"1"
    assert (tmp_path / "two").read_bytes() == b"2"


async def test_header_option_is_sent(file_server: FileServer, tmp_path: Path) -> None:
    file_server.add("/h", b"h")
    code, _, _ = await run_cli(file_server.url("/h"), "-d", str(tmp_path), "-q", "--header", "X-Token: abc")
    assert code == 0
    assert file_server.requests[0].headers["X-Token"] == "abc"


@pytest.mark.parametrize(
    "args",
    [
        ["--no-such-option", "x"],
        [],
        ["missing-list.txt"],
        ["-j", "0", "http://127.0.0.1:1/"],
        ["--limit-rate", "fast", "http://127.0.0.1:1/"],
        ["--header", "no colon", "http://127.0.0.1:1/"],
    ],
)
async def test_usage_errors_are_one_line_and_exit_2(args: list[str], tmp_path: Path) -> None:
    code, stdout, stderr = await run_cli(*args, cwd=tmp_path)
    assert code == 2
    assert stdout == ""
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith("asyncdl: ")
    assert "Traceback" not in stderr


async def test_password_never_reaches_output_or_report(file_server: FileServer, tmp_path: Path) -> None:
    file_server.add("/secret", status=403)
    url = file_server.url("/secret").replace("http://", "http://user:hunter2@")
    report = tmp_path / "r.jsonl"
    code, stdout, stderr = await run_cli(url, "-d", str(tmp_path / "o"), "--report", str(report))
    assert code == 1
    assert "hunter2" not in stdout + stderr + report.read_text()
    assert "user:***@" in report.read_text()


def test_python_m_and_console_script_share_main() -> None:
    from asyncdl import __main__ as _  # noqa: F401 - importing runs nothing without __name__ == "__main__"
    from asyncdl._cli import main

    assert callable(main)
    parser = download_parser()
    args = parser.parse_args(["urls.txt"])
    assert (args.jobs, args.retries, args.timeout, args.dir) == (16, 5, 30.0, ".")


def test_version_matches_package() -> None:
    with pytest.raises(SystemExit) as exit_info:
        download_parser().parse_args(["--version"])
    assert exit_info.value.code == 0
    assert asyncdl.__version__


async def test_an_output_directory_that_cannot_be_made_is_a_usage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    code, _, stderr = await run_cli("http://127.0.0.1:1/x", "-d", str(blocker / "sub"))
    assert code == 2
    assert "cannot create output directory" in stderr
    assert len(stderr.strip().splitlines()) == 1


async def test_unwritable_report_is_a_usage_error(tmp_path: Path) -> None:
    code, _, stderr = await run_cli(
        "http://127.0.0.1:1/x", "-d", str(tmp_path), "--report", str(tmp_path / "no-such-dir" / "r.jsonl")
    )
    assert code == 2
    assert "cannot write report" in stderr
    assert len(stderr.strip().splitlines()) == 1
