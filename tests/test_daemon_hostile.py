"""What a careless or hostile JSON-RPC client sends the daemon: aria2's answer, never a crash."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from asyncdl import Downloader
from asyncdl._daemon import Daemon, DaemonConfig

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
