"""Segmented downloads (-x): pieces over several connections, written at their offsets."""

from __future__ import annotations

import json
import os
from pathlib import Path

from faultserver import FaultServer
from httpserver import FileServer

from asyncdl import RetryPolicy, Status, download_many
from asyncdl._naming import temp_name
from asyncdl._segments import PIECE_SIZE

FAST_RETRY = RetryPolicy(retries=3, backoff_base_s=0.001, backoff_max_s=0.002)


def ranges_asked(server: FileServer, path: str) -> list[str]:
    return [seen.headers.get("Range", "") for seen in server.requests_for(path)]


async def test_large_file_comes_in_pieces_over_several_connections(
    file_server: FileServer, tmp_path: Path
) -> None:
    body = os.urandom(5 * PIECE_SIZE + 12345)
    file_server.add("/big.bin", body)
    file_server.gate = 4  # the pieces after the first must really be in flight at once
    file_server.gate_skip = 1
    (result,) = await download_many([file_server.url("/big.bin")], tmp_path, connections=4)
    assert result.status is Status.OK, result.error
    assert (tmp_path / "big.bin").read_bytes() == body
    asked = ranges_asked(file_server, "/big.bin")
    # The first request asks for the first piece only (no HEAD), then every other piece once.
    assert asked[0] == f"bytes=0-{PIECE_SIZE - 1}"
    assert sorted(asked) == sorted(
        f"bytes={start}-{min(start + PIECE_SIZE, len(body)) - 1}" for start in range(0, len(body), PIECE_SIZE)
    )
    assert file_server.max_in_flight == 4
    assert all(seen.headers.get("If-Range") for seen in file_server.requests_for("/big.bin")[1:])
    assert os.listdir(tmp_path) == ["big.bin"]


async def test_small_file_with_connections_is_one_request(file_server: FileServer, tmp_path: Path) -> None:
    file_server.add("/small", b"tiny")
    (result,) = await download_many([file_server.url("/small")], tmp_path, connections=8)
    assert result.status is Status.OK
    assert (tmp_path / "small").read_bytes() == b"tiny"
    assert len(file_server.requests) == 1


async def test_server_without_ranges_gets_one_connection(file_server: FileServer, tmp_path: Path) -> None:
    body = os.urandom(3 * PIECE_SIZE)
    file_server.add("/plain", body, ranges=False)
    (result,) = await download_many([file_server.url("/plain")], tmp_path, connections=4)
    assert result.status is Status.OK
    assert (tmp_path / "plain").read_bytes() == body
    assert len(file_server.requests) == 1


async def test_failed_pieces_are_fetched_again(fault_server: FaultServer, tmp_path: Path) -> None:
    body = os.urandom(4 * PIECE_SIZE)
    # The first three requests are reset after 1000 bytes of body: the first piece's (the whole
    # attempt fails and the next one resumes the pre-sized file), then two later pieces (re-queued).
    fault_server.route("/f", body=body, reset_after=1000, fail_times=3)
    (result,) = await download_many(
        [fault_server.url("/f")], tmp_path, connections=2, retry_policy=FAST_RETRY
    )
    assert result.status is Status.OK, result.error
    assert (tmp_path / "f").read_bytes() == body
    assert result.attempts == 2
    ranges = [r.header("Range") for r in fault_server.requests_for("/f")]
    assert len(ranges) == 4 + 3
    assert sorted(set(ranges)) == sorted(
        f"bytes={i * PIECE_SIZE}-{(i + 1) * PIECE_SIZE - 1}" for i in range(4)
    )


async def test_interrupted_segmented_file_resumes_only_missing_pieces(
    file_server: FileServer, tmp_path: Path
) -> None:
    body = os.urandom(4 * PIECE_SIZE)
    file_server.add("/r.bin", body)
    # A run that stopped after pieces 0 and 2: the pre-sized temporary file and its metadata.
    url = file_server.url("/r.bin")
    temp = tmp_path / temp_name("r.bin", f"{url}\nr.bin")  # where a run keeps this download's bytes
    partial = bytearray(len(body))
    for index in (0, 2):
        partial[index * PIECE_SIZE : (index + 1) * PIECE_SIZE] = body[
            index * PIECE_SIZE : (index + 1) * PIECE_SIZE
        ]
    temp.write_bytes(bytes(partial))
    etag = file_server.routes["/r.bin"].etag
    meta = {
        "version": 1,
        "url": file_server.url("/r.bin"),
        "etag": etag,
        "last_modified": None,
        "size": len(body),
        "pieces": {"piece_size": PIECE_SIZE, "done": [0, 2]},
    }
    temp.with_name(temp.name + ".meta").write_text(json.dumps(meta))

    (result,) = await download_many([file_server.url("/r.bin")], tmp_path, connections=3)

    assert result.status is Status.OK, result.error
    assert (tmp_path / "r.bin").read_bytes() == body
    assert sorted(ranges_asked(file_server, "/r.bin")) == sorted(
        f"bytes={i * PIECE_SIZE}-{(i + 1) * PIECE_SIZE - 1}" for i in (1, 3)
    )
    assert os.listdir(tmp_path) == ["r.bin"]


async def test_file_that_changes_between_pieces_restarts(fault_server: FaultServer, tmp_path: Path) -> None:
    old, new = os.urandom(3 * PIECE_SIZE), os.urandom(3 * PIECE_SIZE)
    # The first request sees the old version; every later one the new (its If-Range no longer matches).
    fault_server.route("/v", bodies=[old, new], etags=["one", "two"])
    (result,) = await download_many(
        [fault_server.url("/v")], tmp_path, connections=2, retry_policy=FAST_RETRY
    )
    assert result.status is Status.OK, result.error
    assert (tmp_path / "v").read_bytes() == new
