"""Flags people type from habit (wget, curl, aria2c), through the real command against local servers.

-i, -U, --referer, --load-cookies (two loopback hosts, http and https), --ca-certificate,
--no-check-certificate, -c and --save-session (after failures and after Ctrl-C, then re-run from it).
"""

from __future__ import annotations

import signal
import ssl
from pathlib import Path

import pytest
from aiohttp import web
from clirun import finish, run_cli, start_cli
from faultserver import FaultServer
from httpserver import FileServer
from test_tls import self_signed, tls_server  # noqa: F401 - the fixture is used by name

from asyncdl import Downloader, Status, UsageError, download_many
from asyncdl._cli import main

FAR_FUTURE = 4102444800  # 2100-01-01
COOKIES_HEADER = "# Netscape HTTP Cookie File\n"


def cookie_names(header: str | None) -> set[str]:
    if not header:
        return set()
    return {part.split("=", 1)[0].strip() for part in header.split(";")}


def cookie_file(path: Path, *lines: tuple[str, ...]) -> Path:
    path.write_text(COOKIES_HEADER + "".join("\t".join(fields) + "\n" for fields in lines))
    return path


# --- -i, -U, --referer, -c -------------------------------------------------------------------------


async def test_input_files_are_sources_and_repeat(file_server: FileServer, tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        file_server.add(f"/{name}", name.encode())
    (tmp_path / "one.txt").write_text(file_server.url("/a") + "\n")
    (tmp_path / "two.txt").write_text(file_server.url("/b") + "\n")
    out = tmp_path / "out"

    code, err = await run_cli(
        file_server.url("/c"), "-i", str(tmp_path / "one.txt"), "--input-file", str(tmp_path / "two.txt"),
        "-d", str(out), "-c", "-q",
    )  # fmt: skip

    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "c"]


def usage_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """The one line a usage error prints (``main`` in this process: no interpreter to start)."""
    assert main(list(args)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def test_no_source_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "no SOURCE given" in usage_error(capsys, "-d", str(tmp_path))


async def test_user_agent_and_referer(file_server: FileServer, tmp_path: Path) -> None:
    # Without -U the User-Agent is asyncdl/VERSION: see test_aria2_options (its /plain download).
    file_server.add("/b", b"b")

    code, err = await run_cli(
        file_server.url("/b"), "-d", str(tmp_path / "2"), "-q", "-U", "Mozilla/5.0 (X11)",
        "--referer", "https://example.org/from",
    )  # fmt: skip

    assert code == 0, err
    (b,) = file_server.requests_for("/b")
    assert b.headers["User-Agent"] == "Mozilla/5.0 (X11)"
    assert b.headers["Referer"] == "https://example.org/from"


# --- cookies ---------------------------------------------------------------------------------------


async def test_cookies_go_only_where_domain_path_secure_and_expiry_allow(
    file_server: FileServer, tmp_path: Path
) -> None:
    async with FileServer(host="127.0.0.2") as other:
        for server in (file_server, other):
            server.add("/a", b"a")
            server.add("/private/b", b"b")
        cookies = cookie_file(
            tmp_path / "cookies.txt",
            ("127.0.0.1", "FALSE", "/", "FALSE", "0", "session", "s1"),
            ("127.0.0.1", "FALSE", "/", "FALSE", str(FAR_FUTURE), "host", "h1"),
            ("127.0.0.1", "FALSE", "/private", "FALSE", str(FAR_FUTURE), "priv", "p1"),
            ("127.0.0.1", "FALSE", "/", "TRUE", str(FAR_FUTURE), "secure", "x1"),
            ("127.0.0.1", "FALSE", "/", "FALSE", "1", "expired", "o1"),
            ("#HttpOnly_127.0.0.2", "FALSE", "/", "FALSE", str(FAR_FUTURE), "other", "o2"),
        )
        url_list = tmp_path / "in.txt"
        url_list.write_text(
            "".join(
                f"{server.url(path)}\n  dir={server.host}\n"
                for server in (file_server, other)
                for path in ("/a", "/private/b")
            )
        )

        code, err = await run_cli(str(url_list), "-d", str(tmp_path / "out"), "--load-cookies", str(cookies))

        assert code == 0, err

        def sent(server: FileServer, path: str) -> set[str]:
            (seen,) = server.requests_for(path)
            return cookie_names(seen.headers.get("Cookie"))

        assert sent(file_server, "/a") == {"session", "host"}
        assert sent(file_server, "/private/b") == {"session", "host", "priv"}
        assert sent(other, "/a") == {"other"}
        assert sent(other, "/private/b") == {"other"}


async def test_a_secure_cookie_travels_over_https_only(
    self_signed: ssl.SSLContext,  # noqa: F811
    file_server: FileServer,
    tmp_path: Path,
) -> None:
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        return web.Response(body=b"tls")

    file_server.add("/plain", b"plain")
    cookies = cookie_file(
        tmp_path / "cookies.txt",
        ("127.0.0.1", "FALSE", "/", "TRUE", str(FAR_FUTURE), "secure", "x1"),
        ("127.0.0.1", "FALSE", "/", "FALSE", str(FAR_FUTURE), "plain", "p1"),
    )
    async with tls_server(self_signed, handler) as origin:
        code, err = await run_cli(
            f"{origin}/tls", file_server.url("/plain"), "-d", str(tmp_path / "out"), "-q",
            "--load-cookies", str(cookies), "--ca-certificate", str(tmp_path / "cert.pem"),
        )  # fmt: skip
    assert code == 0, err
    assert [cookie_names(header) for header in seen] == [{"secure", "plain"}]
    (plain,) = file_server.requests_for("/plain")
    assert cookie_names(plain.headers.get("Cookie")) == {"plain"}


@pytest.mark.parametrize(
    ("content", "where"),
    [
        (COOKIES_HEADER + "127.0.0.1\tFALSE\t/\tFALSE\t0\tok\tv\nbroken line\n", ":3: bad cookie line"),
        (COOKIES_HEADER + "\n.example.org\tFALSE\t/\tFALSE\t0\tn\tv\n", ":3: bad cookie line"),
        ("127.0.0.1\tFALSE\t/\tFALSE\t0\tn\tv\n", ":1: not a Netscape cookies file"),
    ],
)
def test_a_malformed_cookies_file_is_a_usage_error_naming_the_line(
    tmp_path: Path, content: str, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cookies = tmp_path / "cookies.txt"
    cookies.write_text(content)
    err = usage_error(
        capsys, "http://127.0.0.1:9/x", "-d", str(tmp_path / "out"), "--load-cookies", str(cookies)
    )
    assert f"{cookies}{where}" in err


async def test_the_library_takes_cookies_too(file_server: FileServer, tmp_path: Path) -> None:
    file_server.add("/a", b"a")
    cookies = cookie_file(tmp_path / "c.txt", ("127.0.0.1", "FALSE", "/", "FALSE", "0", "lib", "1"))
    (result,) = await download_many([file_server.url("/a")], tmp_path / "out", cookies=cookies)
    assert result.status is Status.OK
    assert file_server.requests_for("/a")[0].headers["Cookie"] == "lib=1"
    with pytest.raises(UsageError, match="cannot read cookies file"):
        Downloader(tmp_path, cookies=tmp_path / "missing.txt")


# --- TLS -------------------------------------------------------------------------------------------


async def test_ca_certificate_and_no_check_certificate(
    self_signed: ssl.SSLContext,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=request.path.encode())

    # Refused without --ca-certificate, or with another CA: see the library's test below.
    async with tls_server(self_signed, handler) as origin:
        trusted, trusted_err = await run_cli(
            f"{origin}/a", "-d", str(tmp_path / "1"), "-q", "--ca-certificate", str(tmp_path / "cert.pem")
        )
        unchecked, unchecked_err = await run_cli(
            f"{origin}/b", f"{origin}/c", "-d", str(tmp_path / "2"), "-q", "--no-check-certificate"
        )
    assert trusted == 0, trusted_err
    assert (tmp_path / "1" / "a").read_bytes() == b"/a"
    assert unchecked == 0, unchecked_err
    assert unchecked_err.count("--no-check-certificate") == 1
    assert sorted(p.name for p in (tmp_path / "2").iterdir()) == ["b", "c"]


def make_other_ca(directory: Path) -> Path:
    import subprocess

    cert = directory / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(directory / "key.pem"),
         "-out", str(cert), "-days", "1"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert


@pytest.mark.parametrize("content", [None, "not a certificate\n"])
def test_an_unusable_ca_certificate_is_a_usage_error(
    tmp_path: Path, content: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = tmp_path / "ca.pem"
    if content is not None:
        ca.write_text(content)
    err = usage_error(
        capsys, "https://127.0.0.1:9/x", "-d", str(tmp_path / "out"), "--ca-certificate", str(ca)
    )
    assert str(ca) in err


# --- --save-session --------------------------------------------------------------------------------


async def test_save_session_lists_the_failures_and_a_rerun_retries_exactly_those(
    file_server: FileServer, tmp_path: Path
) -> None:
    file_server.add("/ok", b"ok")
    flaky = file_server.add("/flaky", b"flaky", statuses=[503, 503])
    url_list = tmp_path / "in.txt"
    url_list.write_text(
        f"{file_server.url('/ok')}\n"
        f"{file_server.url('/missing')}\n  out=m.bin\n  referer=https://r.example/\n  pause=true\n"
        "not-a-url\n"
        f"{file_server.url('/flaky')}\n  max-tries=1\n  http-user=u\n  http-passwd=p\n"
    )
    session = tmp_path / "session.txt"
    out = tmp_path / "out"

    code, err = await run_cli(str(url_list), "-d", str(out), "--save-session", str(session), "-q")

    assert code == 1, err
    assert session.read_text() == (
        f"{file_server.url('/missing')}\n  out=m.bin\n  referer=https://r.example/\n"
        f"{file_server.url('/flaky')}\n  http-user=u\n  http-passwd=p\n  max-tries=1\n"
    )
    assert session.stat().st_mode & 0o077 == 0  # it may hold credentials
    file_server.add("/missing", b"found")
    flaky.statuses.clear()
    before = len(file_server.requests_for("/ok"))

    code, err = await run_cli(str(session), "-d", str(out), "--save-session", str(session), "-q")

    assert code == 0, err
    assert (out / "m.bin").read_bytes() == b"found"
    assert (out / "flaky").read_bytes() == b"flaky"
    assert len(file_server.requests_for("/ok")) == before
    assert file_server.requests_for("/missing")[-1].headers["Referer"] == "https://r.example/"
    assert session.read_text() == ""


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_save_session_after_ctrl_c_or_sigterm_lists_what_did_not_finish(
    fault_server: FaultServer, tmp_path: Path, signum: signal.Signals, status: int
) -> None:
    body = bytes(range(256)) * 400
    fault_server.route("/first", body=b"first")
    stalled = fault_server.route("/stalled", body=body, stall_after=1000)
    fault_server.route("/later", body=b"later")
    fault_server.route("/last", body=b"last")
    url_list = tmp_path / "in.txt"
    url_list.write_text(
        f"{fault_server.url('/first')}\n"
        f"{fault_server.url('/stalled')}\n  out=s.bin\n  user-agent=UA/1\n"
        f"{fault_server.url('/later')}\n"
        f"{fault_server.url('/last')}\n  split=2\n"
    )
    session = tmp_path / "session.txt"
    out = tmp_path / "out"

    proc = await start_cli(str(url_list), "-d", str(out), "-j", "1", "--save-session", str(session), "-q")
    await fault_server.wait_for_requests(1, "/stalled")
    proc.send_signal(signum)
    code, err = await finish(proc)

    assert code == status, err
    assert session.read_text() == (
        f"{fault_server.url('/stalled')}\n  out=s.bin\n  user-agent=UA/1\n"
        f"{fault_server.url('/later')}\n"
        f"{fault_server.url('/last')}\n  split=2\n"
    )
    stalled.stall_after = None

    code, err = await run_cli(str(session), "-d", str(out), "--save-session", str(session), "-q")

    assert code == 0, err
    assert (out / "s.bin").read_bytes() == body
    assert fault_server.requests_for("/stalled")[-1].header("Range") == "bytes=1000-"
    assert len(fault_server.requests_for("/first")) == 1
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "first", "last", "later", "s.bin"
    ]  # fmt: skip
    assert session.read_text() == ""


async def test_save_session_keeps_the_name_a_failed_download_got_beside_a_namesake(
    file_server: FileServer, tmp_path: Path
) -> None:
    file_server.add("/x/file", b"first")
    second = file_server.add("/y/file", b"second", statuses=[404])
    session = tmp_path / "session.txt"
    out = tmp_path / "out"

    code, _ = await run_cli(
        file_server.url("/x/file"), file_server.url("/y/file"), "-d", str(out), "--save-session", str(session)
    )

    assert code == 1
    assert session.read_text() == f"{file_server.url('/y/file')}\n  out=file.1\n"
    second.statuses.clear()
    code, err = await run_cli(str(session), "-d", str(out), "--save-session", str(session), "-q")
    assert code == 0, err
    assert (out / "file").read_bytes() == b"first"
    assert (out / "file.1").read_bytes() == b"second"
    assert session.read_text() == ""


async def test_worker_processes_take_cookies_certificates_and_the_session(
    self_signed: ssl.SSLContext,  # noqa: F811
    tmp_path: Path,
) -> None:
    seen: list[tuple[str, str | None, str | None]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("Cookie"), request.headers.get("User-Agent")))
        if request.path == "/gone":
            return web.Response(status=404)
        return web.Response(body=request.path.encode())

    cookies = cookie_file(tmp_path / "c.txt", ("127.0.0.1", "FALSE", "/", "TRUE", "0", "s", "1"))
    session = tmp_path / "session.txt"
    async with tls_server(self_signed, handler) as origin:
        code, err = await run_cli(
            f"{origin}/a", f"{origin}/b", f"{origin}/gone", "-d", str(tmp_path / "out"), "-q",
            "--processes", "2", "--shard-size", "1", "--load-cookies", str(cookies),
            "--ca-certificate", str(tmp_path / "cert.pem"), "-U", "UA/3", "--save-session", str(session),
        )  # fmt: skip
    assert code == 1, err
    assert sorted(seen) == [("/a", "s=1", "UA/3"), ("/b", "s=1", "UA/3"), ("/gone", "s=1", "UA/3")]
    assert session.read_text() == f"{origin}/gone\n"


async def test_the_library_takes_a_ca_certificate_and_verify_false(
    self_signed: ssl.SSLContext,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=b"tls")

    async with tls_server(self_signed, handler) as origin:
        (trusted,) = await download_many(
            [f"{origin}/a"], tmp_path / "1", ca_certificate=tmp_path / "cert.pem"
        )
        (unchecked,) = await download_many([f"{origin}/b"], tmp_path / "2", verify=False)
        (refused,) = await download_many([f"{origin}/c"], tmp_path / "3")
        other = tmp_path / "other"
        other.mkdir()
        (wrong,) = await download_many([f"{origin}/d"], tmp_path / "4", ca_certificate=make_other_ca(other))
    assert (trusted.status, unchecked.status) == (Status.OK, Status.OK)
    assert refused.status is wrong.status is Status.FAILED
    assert "not trusted" in (refused.error or "") and "not trusted" in (wrong.error or "")
    with pytest.raises(UsageError, match="no usable PEM CA certificate"):
        Downloader(tmp_path, ca_certificate=tmp_path / "key.pem")
