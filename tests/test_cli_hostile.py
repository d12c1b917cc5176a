"""What a careless user types on the command line: one clear message, and never a secret echoed."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import pytest

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
