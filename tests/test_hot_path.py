"""The per-download code a long list runs a million times: fast paths give what the general code gives."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncdl._download import plain_name, plan_download
from asyncdl._models import Request
from asyncdl._naming import NameRegistry, _KeySet, name_from_url, plain_url_name
from asyncdl._urls import is_plain_url

# --- plain URLs and their names -----------------------------------------------------------------------


def test_a_plain_url_has_a_port_below_65536() -> None:
    for port in range(100_000):
        for text in {str(port), f"{port:05d}"}:
            expected = len(text) <= 5 and int(text) < 65536
            assert is_plain_url(f"http://h:{text}/a") is expected, text
            assert is_plain_url(f"http://h:{text}") is expected, text
    for text in ("", "065535", "000000", "123456", "-1", "+1", "\u0661"):
        assert not is_plain_url(f"http://h:{text}/a"), text


def reference_plain_url_name(url: str) -> str | None:
    return name_from_url(url) if is_plain_url(url) else None


URL_PIECES = [
    *"aZ09/?#:@[]%.-_~!$&'()*+,;=\"<>|^`{}\\\t\r\n \x00\x01\x1f\x7f\x85\xa0é✓\ud800",
    "%2F",
    "%2e%2e",
    "%41",
    "%",
    ".asyncdl",
    ".ASYNCDL-x",
    "..",
    "x" * 250,
]
URL_STARTS = [
    "http://h",
    "https://h.example",
    "HTTP://h:8080",
    "http://h:65536",
    "http://[::1]",
    "ftp://h",
    "h",
]


@given(st.sampled_from(URL_STARTS), st.lists(st.sampled_from(URL_PIECES), max_size=12))
@settings(max_examples=3000, deadline=None)
def test_plain_url_name_is_the_name_of_a_plain_url(start: str, pieces: list[str]) -> None:
    url = start + "".join(pieces)
    assert plain_url_name(url) == reference_plain_url_name(url)


@pytest.mark.parametrize(
    "template", ["http://h/{}", "http://h/a/{}b", "http://h/{}?q", "http://h/x{}#f", "http://h/{}/"]
)
def test_plain_url_name_of_every_character(template: str) -> None:
    for code in [*range(0x200), 0x2028, 0x3000, 0xD800, 0xFEFF, 0x10FFFF]:
        url = template.format(chr(code))
        assert plain_url_name(url) == reference_plain_url_name(url), repr(url)


@pytest.mark.parametrize("length", [253, 254, 255, 256, 300])
def test_plain_url_name_of_a_long_segment(length: int) -> None:
    for url in (f"http://h/{'a' * length}", f"http://h/{'a' * (length - 4)}.bin", f"http://h/{'é' * length}"):
        assert plain_url_name(url) == reference_plain_url_name(url)
        assert len(plain_url_name(url).encode()) <= 255  # type: ignore[union-attr]


def test_plain_name_is_what_plan_download_claims(tmp_path: Path) -> None:
    urls = [
        "http://h/a.bin",
        "http://h/b/a.bin",
        "http://h/a.bin?x=1",
        "http://h/",
        "http://h",
        "http://h/%2e%2e",
        "http://h/.asyncdl-x",
        "http://h/a%20b.bin",
        "http://h:99999/a.bin",
        "http://user:pw@h/a.bin",
        "http://[::1]/a.bin",
    ]
    planned, plain = NameRegistry(), NameRegistry()
    for url in urls:
        request = Request(url)
        expected = plan_download(request, tmp_path, planned)
        name = plain_name(request, tmp_path, plain)
        if name is None:
            assert not is_plain_url(url)
            name = plan_download(request, tmp_path, plain).name
        assert name == expected.name
    assert plain_name(Request("http://h/a.bin", out="b"), tmp_path, plain) is None
    assert plain_name(Request("http://h/a.bin", mirrors=("http://m/a.bin",)), tmp_path, plain) is None


def test_key_set_keeps_keys_whose_low_bits_are_the_same() -> None:
    keys = _KeySet()
    # All start at one slot: long runs of probing, across several doublings of the table.
    same_low = [(i << 40) | 5 for i in range(1, 3000)]
    assert all(keys.add(k) for k in same_low)
    assert not any(keys.add(k) for k in same_low)
    assert len(keys) == len(same_low)
    assert all(k in keys for k in same_low)
    assert (3000 << 40) | 5 not in keys
    assert 7 not in keys
