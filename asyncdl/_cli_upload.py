"""`asyncdl upload`: the command line of streaming uploads."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TextIO

from ._exceptions import UsageError


def upload_main(
    argv: Sequence[str], *, run: Callable[[Callable[[], Coroutine[Any, Any, int]]], int], stderr: TextIO
) -> int:
    raise UsageError("upload is not available in this build")
