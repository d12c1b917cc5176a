"""What a careless user types or passes: one clear message, and never a secret echoed."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest

from asyncdl import Request, download_many
from asyncdl._cli import download_parser
from asyncdl._cli_daemon import daemon_parser
from asyncdl._exceptions import UsageError


@pytest.mark.parametrize(
    "text",
    [
        "Authorization Bearer SECRET-1",
        "Authorization: SECRET-1\rX-Injected: 1",
        "Authorization: SECRET-1\nX: 1",
    ],
    ids=["no-colon", "carriage-return", "line-feed"],
)
@pytest.mark.parametrize("parser", [download_parser, daemon_parser], ids=["download", "daemon"])
def test_a_bad_header_is_refused_without_echoing_it(
    text: str, parser: Callable[[], argparse.ArgumentParser]
) -> None:
    with pytest.raises(UsageError, match="argument --header") as refused:
        parser().parse_args(["--header", text, "-d", "out", "http://127.0.0.1:9/x"])
    assert "SECRET-1" not in str(refused.value)


@pytest.mark.parametrize("value", ["SECRET-1\r\nX-Injected: 1", "SECRET-1\n", "SECRET-1\x00"])
async def test_a_header_with_a_line_break_is_a_usage_error_of_the_library_too(
    value: str, tmp_path: Path
) -> None:
    with pytest.raises(UsageError, match="'Authorization'") as refused:
        await download_many(["http://127.0.0.1:9/x"], dest=tmp_path, headers={"Authorization": value})
    assert "SECRET-1" not in str(refused.value)
    with pytest.raises(UsageError, match="'Authorization'"):
        Request("http://127.0.0.1:9/x", headers=[("Authorization", value)])
