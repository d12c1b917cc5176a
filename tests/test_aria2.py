"""aria2's JSON-RPC wire shapes (asyncdl._aria2), as pure functions tested with plain values."""

from __future__ import annotations

import itertools
import re

import pytest

from asyncdl import Checksum
from asyncdl._aria2 import (
    RpcError,
    SessionEntry,
    View,
    bitfield,
    check_gid,
    error_code_of,
    file_entries,
    format_session,
    global_stat,
    keys_param,
    move_position,
    new_gid,
    option_strings,
    paginate,
    param,
    parse_session,
    rate_option,
    relative_dir,
    request_from,
    split_token,
    status_dict,
    uri_entries,
)

GID = re.compile(r"[0-9a-f]{16}")


def test_new_gid_is_16_hex_digits_and_avoids_taken_ones() -> None:
    draws = iter(["0" * 16, "00000000000000ab", "00000000000000cd"])
    taken = {"00000000000000ab"}
    gid = new_gid(taken.__contains__, token_hex=lambda n: next(draws))
    assert gid == "00000000000000cd"  # all zeros is not a GID; a taken one is drawn again
    assert GID.fullmatch(new_gid(lambda g: False))


def test_check_gid_in_aria2s_words() -> None:
    assert check_gid("2089B05ECCA3D829") == "2089b05ecca3d829"
    with pytest.raises(RpcError, match=re.escape("Invalid GID zz") + "$"):
        check_gid("zz")
    with pytest.raises(RpcError, match=re.escape("Invalid GID 0123456789abcdef0") + "$"):
        check_gid("0123456789abcdef0")
    with pytest.raises(RpcError, match=re.escape("GID 2089 is not found") + "$"):
        check_gid("2089")
    with pytest.raises(RpcError) as info:
        check_gid(12)
    assert info.value.code == 1


def test_token_is_taken_from_the_first_parameter_only() -> None:
    assert split_token(["token:abc", ["http://x/"]]) == ("abc", [["http://x/"]])
    assert split_token([["http://x/"], "token:abc"]) == (None, [["http://x/"], "token:abc"])
    assert split_token([]) == (None, [])


def test_param_checks_presence_and_type() -> None:
    assert param([1, "a"], 1, str) == "a"
    assert param([], 0, dict, required=False) is None
    with pytest.raises(RpcError, match=re.escape("The parameter at 1 is required but missing.")):
        param([1], 1, int)
    with pytest.raises(RpcError, match=re.escape("The parameter at 0 has wrong type.")):
        param([True], 0, int)  # JSON true is not a number
    assert keys_param([["gid", "status", 3]], 0) == frozenset({"gid", "status"})
    assert keys_param([[]], 0) is None


def test_paginate_as_aria2_with_negative_offsets() -> None:
    items = list(range(10))
    assert paginate(items, 0, 3) == [0, 1, 2]
    assert paginate(items, 8, 5) == [8, 9]
    assert paginate(items, 10, 5) == []
    assert paginate(items, 0, 0) == []
    # A negative offset counts from the end and the answer comes back in reverse order.
    assert paginate(items, -1, 3) == [9, 8, 7]
    assert paginate(items, -3, 2) == [7, 6]
    assert paginate(items, -1, 100) == list(reversed(items))
    assert paginate(items, -11, 2) == []


@pytest.mark.parametrize(
    ("current", "pos", "how", "dest"),
    [
        (3, 0, "POS_SET", 0),
        (3, 99, "POS_SET", 4),
        (3, -1, "POS_SET", 0),
        (1, 2, "POS_CUR", 3),
        (1, -5, "POS_CUR", 0),
        (1, 9, "POS_CUR", 4),
        (0, 0, "POS_END", 4),
        (0, -2, "POS_END", 2),
        (0, 3, "POS_END", 4),
    ],
)
def test_move_position_follows_aria2(current: int, pos: int, how: str, dest: int) -> None:
    assert move_position(5, current, pos, how) == dest


def test_move_position_with_a_bad_mode() -> None:
    with pytest.raises(RpcError, match=re.escape("Illegal argument.") + "$"):
        move_position(5, 0, 0, "POS_ANY")


VIEW = View(
    gid="2089b05ecca3d829",
    status="active",
    dir="/srv/dl",
    path="/srv/dl/a.iso",
    uris=("http://a.example/a.iso", "http://b.example/a.iso"),
    total=1048576,
    completed=524288,
    speed=1000,
    connections=1,
)


def test_status_dict_sends_numbers_as_strings() -> None:
    status = status_dict(VIEW)
    assert status["gid"] == "2089b05ecca3d829"
    assert status["status"] == "active"
    assert status["totalLength"] == "1048576"
    assert status["completedLength"] == "524288"
    assert status["downloadSpeed"] == "1000"
    assert status["connections"] == "1"
    assert status["dir"] == "/srv/dl"
    assert (status["pieceLength"], status["numPieces"], status["bitfield"]) == ("1048576", "1", "00")
    assert "errorCode" not in status  # only stopped downloads carry one
    numbers = {k: v for k, v in status.items() if k not in ("gid", "status", "dir", "files")}
    assert all(isinstance(v, str) and v.isdigit() for v in numbers.values())
    (one,) = status["files"]
    assert one == {
        "index": "1",
        "path": "/srv/dl/a.iso",
        "length": "1048576",
        "completedLength": "524288",
        "selected": "true",
        "uris": [
            {"uri": "http://a.example/a.iso", "status": "used"},
            {"uri": "http://b.example/a.iso", "status": "waiting"},
        ],
    }
    assert file_entries(VIEW) == status["files"]
    assert uri_entries(VIEW) == one["uris"]


def test_bitfield_counts_pieces_done_from_the_start() -> None:
    mib = 1024 * 1024
    assert bitfield(10 * mib, 3 * mib + 5) == "e000"  # 3 of 10 pieces: 11100000 00000000
    assert bitfield(10 * mib, 10 * mib) == "ffc0"
    assert bitfield(300_000, 300_000) == "80"  # aria2's answer for a complete 300,000-byte file
    assert bitfield(8 * mib, 8 * mib - 1) == "fe"


def test_keys_filter_sends_only_what_was_asked() -> None:
    assert status_dict(VIEW, frozenset({"gid", "status"})) == {"gid": VIEW.gid, "status": "active"}
    assert set(status_dict(VIEW, frozenset({"files", "nonsense"}))) == {"files"}


def test_stopped_download_carries_error_code_and_message() -> None:
    failed = View(
        gid="00000000000000ff",
        status="error",
        dir="/d",
        path="",
        uris=("http://x/",),
        error_code="3",
        error_message="HTTP 404 Not Found",
    )
    status = status_dict(failed, frozenset({"status", "errorCode", "errorMessage"}))
    assert status == {"status": "error", "errorCode": "3", "errorMessage": "HTTP 404 Not Found"}


def test_error_codes_follow_aria2s_table() -> None:
    assert error_code_of("HTTP 404 Not Found: http://x/") == "3"
    assert error_code_of("HTTP 500 Internal Server Error") == "22"
    assert error_code_of("checksum mismatch (sha256)") == "32"
    assert error_code_of("stalled: no data for the stall timeout") == "2"
    assert error_code_of("connection refused by http://x") == "6"
    assert error_code_of("something else") == "1"


def test_global_stat_shape() -> None:
    assert global_stat(speed=5, active=1, waiting=2, stopped=3, stopped_total=4) == {
        "downloadSpeed": "5",
        "uploadSpeed": "0",
        "numActive": "1",
        "numWaiting": "2",
        "numStopped": "3",
        "numStoppedTotal": "4",
    }


def test_options_become_strings() -> None:
    assert option_strings({"split": 4, "pause": True, "header": ["A: b", "C: d"], 3: "x", "o": None}) == {
        "split": "4",
        "pause": "true",
        "header": ["A: b", "C: d"],
    }


def test_request_from_options() -> None:
    request = request_from(
        ["http://a.example/f", "http://b.example/f"],
        {
            "out": "f.bin",
            "dir": "sub/inner",
            "checksum": "sha-256=" + "ab" * 32,
            "header": ["X-A: 1"],
            "referer": "http://r.example/",
            "user-agent": "UA/1",
            "split": "4",  # known to aria2, ignored here
        },
        "/srv/dl",
    )
    assert request.url == "http://a.example/f"
    assert request.mirrors == ("http://b.example/f",)
    assert request.out == "f.bin"
    assert request.dir == "sub/inner"
    assert request.checksum == Checksum("sha256", "ab" * 32)
    assert request.headers == (("X-A", "1"),)
    assert (request.referer, request.user_agent, request.connections) == ("http://r.example/", "UA/1", 4)
    assert request.source is None


def test_request_options_are_checked_as_in_a_list_file() -> None:
    with pytest.raises(RpcError, match="split= must be a whole number"):
        request_from(["http://a.example/f"], {"split": "many"}, "/srv")
    with pytest.raises(RpcError, match="bad checksum"):
        request_from(["http://a.example/f"], {"checksum": "sha-256=zz"}, "/srv")
    with pytest.raises(RpcError, match="line break"):
        request_from(["http://a.example/f"], {"out": "a\n dir=/etc"}, "/srv")
    with pytest.raises(RpcError, match="ftp"):
        request_from(["ftp://a.example/f"], {}, "/srv")
    capped = request_from(["http://a.example/f"], {"max-download-limit": "100K", "pause": "true"}, "/srv")
    assert capped.limit_rate == 100 * 1024


def test_request_without_uris_is_aria2s_error() -> None:
    with pytest.raises(RpcError, match=re.escape("URI is not provided.") + "$"):
        request_from([], {}, "/srv")


@pytest.mark.parametrize("bad", ["../x", "sub/../../x", "/etc", "/srv/dl2", "/srv/dl/../other"])
def test_dir_never_leaves_the_root(bad: str) -> None:
    with pytest.raises(RpcError, match="outside the download directory"):
        relative_dir("/srv/dl", bad)


def test_dir_inside_the_root_is_taken() -> None:
    assert relative_dir("/srv/dl", "/srv/dl") is None
    assert relative_dir("/srv/dl", "/srv/dl/music/") == "music"
    assert relative_dir("/srv/dl", "music/./jazz") == "music/jazz"
    assert relative_dir("/srv/dl", "a/../b") == "b"


def test_rates_in_aria2s_syntax() -> None:
    assert rate_option({"max-overall-download-limit": "0"}, "max-overall-download-limit") == 0
    assert rate_option({"r": "500K"}, "r") == 500 * 1024
    assert rate_option({"r": "2M"}, "r") == 2 * 1024 * 1024
    assert rate_option({}, "r") is None
    with pytest.raises(RpcError):
        rate_option({"r": "fast"}, "r")


def test_session_file_round_trip_keeps_gid_and_pause() -> None:
    entries = [
        SessionEntry(["http://a.example/x", "http://b.example/x"], {"gid": "00000000000000aa", "out": "x"}),
        SessionEntry(
            ["http://c.example/y"], {"gid": "00000000000000bb", "pause": "true", "header": ["A: 1", "B: 2"]}
        ),
    ]
    text = format_session(entries)
    assert text == (
        "http://a.example/x\thttp://b.example/x\n gid=00000000000000aa\n out=x\n"
        "http://c.example/y\n gid=00000000000000bb\n pause=true\n header=A: 1\n header=B: 2\n"
    )
    assert parse_session(text) == entries


def test_parse_session_ignores_comments_and_orphan_options() -> None:
    text = " out=orphan\n# comment\n\nhttp://x.example/a\n  dir=d\n"
    assert parse_session(text) == [SessionEntry(["http://x.example/a"], {"dir": "d"})]


def test_gids_do_not_repeat_over_many_draws() -> None:
    seen: set[str] = set()
    for _ in itertools.repeat(None, 2000):
        seen.add(new_gid(seen.__contains__))
    assert len(seen) == 2000
