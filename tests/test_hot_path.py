"""The per-download code a long list runs a million times: fast paths give what the general code gives."""

from __future__ import annotations

import dataclasses
import inspect
import io
import json
import pickle
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncdl._download import plain_name, plan_download
from asyncdl._models import Checksum, Request, Result, Status, has_options, plain_request
from asyncdl._naming import NameRegistry, _KeySet, name_from_url, plain_url_name
from asyncdl._progress import Progress
from asyncdl._report import ReportWriter
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


# --- values: requests, results, progress -----------------------------------------------------------

SHA256_EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

# Values each class keeps as given, one per field, in field order.
KEPT_VALUES = {
    Request: (
        "u",
        ("m",),
        "o",
        "d",
        Checksum("sha256", SHA256_EMPTY),
        (("N", "v"),),
        "s",
        2,
        "ua",
        "https://r.example/",
        ("user", "pw"),
        100,
        True,
        3,
        50,
    ),
    Result: ("u", "p", Status.OK, 1, 2, "e", Request("u"), 3, 4),
}


@pytest.mark.parametrize("cls", [Request, Result])
def test_written_out_init_has_the_dataclass_signature(cls: type) -> None:
    params = list(inspect.signature(cls).parameters.values())
    fields = dataclasses.fields(cls)
    assert [p.name for p in params] == [f.name for f in fields]
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)
    for param, field in zip(params, fields, strict=True):
        default = inspect.Parameter.empty if field.default is dataclasses.MISSING else field.default
        assert param.default == default
    # Every field is set, by position as by keyword.
    values = dict(zip((f.name for f in fields), KEPT_VALUES[cls], strict=True))
    assert vars(cls(**values)) == vars(cls(*values.values())) == values


def test_request_converts_what_it_accepts() -> None:
    request = Request(
        "http://h/a",
        mirrors=["http://m/a"],
        headers={"X-A": "1"},
        checksum=f"sha-256={SHA256_EMPTY.upper()}",
        source="l:1",
    )
    assert request.mirrors == ("http://m/a",)
    assert request.headers == (("X-A", "1"),)
    assert request.checksum == Checksum("sha256", SHA256_EMPTY)
    assert Request("http://h/a", headers=[("X-A", 1)]).headers == (("X-A", "1"),)  # type: ignore[list-item]
    assert Request("http://h/a", headers={}).headers == ()
    plain = Request("http://h/a")
    assert (plain.mirrors, plain.out, plain.dir, plain.checksum, plain.headers, plain.source) == (
        (),
        None,
        None,
        None,
        (),
        None,
    )
    assert plain == Request("http://h/a", source="elsewhere")  # source does not compare
    assert hash(plain) == hash(Request("http://h/a", source="x"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        plain.url = "http://h/b"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(request)) == request
    assert dataclasses.replace(request, out="b").out == "b"
    assert dataclasses.replace(request, out="b").mirrors == ("http://m/a",)


def test_result_keeps_what_it_is_given() -> None:
    request = Request("http://h/a")
    result = Result("http://h/a", "/d/a", Status.OK, 3, 1, None, request, 2, 7)
    assert result == Result(
        url="http://h/a", path="/d/a", status=Status.OK, bytes=3, attempts=1, request=None, worker=2, shard=7
    )
    assert result.request is request
    assert repr(result) == (
        "Result(url='http://h/a', path='/d/a', status=<Status.OK: 'ok'>, bytes=3, attempts=1, error=None, "
        "worker=2, shard=7)"
    )
    assert Result("u", None, Status.FAILED).to_record() == {
        "url": "u",
        "path": None,
        "status": "failed",
        "bytes": 0,
        "attempts": 0,
        "error": None,
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.bytes = 4  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(result)) == result
    assert dataclasses.replace(result, error="e").error == "e"


def test_plain_request_is_the_request_of_a_url() -> None:
    made = plain_request("http://h/a", "list:3")
    assert type(made) is Request
    assert vars(made) == vars(Request("http://h/a", source="list:3"))
    # The per-download options (after source) are stored only when given: they read as defaults.
    stored = [f.name for f in dataclasses.fields(Request)]
    assert list(vars(made)) == stored[: stored.index("source") + 1]
    assert all(getattr(made, name) is None for name in stored[stored.index("source") + 1 :])
    assert pickle.loads(pickle.dumps(made)) == made
    assert dataclasses.replace(made, connections=2).connections == 2
    assert not has_options(made)
    assert not has_options(Request("http://h/a", out="x", connections=None))
    assert not has_options(dataclasses.replace(Request("http://h/a"), out="y"))
    for option, value in zip(stored[stored.index("source") + 1 :], KEPT_VALUES[Request][7:], strict=True):
        assert has_options(Request("http://h/a", **{option: value})), option
    assert repr(made) == repr(Request("http://h/a", source="list:3"))


def test_progress_counts_each_status_and_result_ok() -> None:
    progress = Progress()
    key = progress.start("http://h/a", "a")
    progress.begin(key, done=0, total=None)
    progress.advance(key, 5)
    progress.finish(key, Result("http://h/a", "/d/a", Status.OK, 5))
    for status in (Status.SKIPPED, Status.FAILED, Status.FAILED):
        progress.finish(None, Result("http://h/b", None, status))
    snap = progress.snapshot()
    assert (snap.ok, snap.skipped, snap.failed, snap.bytes_total) == (1, 1, 2, 5)
    assert [Result("u", None, s).ok for s in Status] == [True, True, False]


# --- the report -------------------------------------------------------------------------------------

any_text = st.text(st.characters(codec="utf-8"), max_size=30)
maybe_text = st.none() | any_text | st.sampled_from(["", 'a "quoted" \\ line\nend', "naïve ✓ \x00\x1f\x7f"])
whole = st.integers(min_value=-(2**70), max_value=2**70)


@st.composite
def results(draw: st.DrawFn) -> Result:
    worker = draw(st.none() | st.integers(0, 99) | st.just(True))
    return Result(
        draw(any_text),
        draw(maybe_text),
        draw(st.sampled_from(list(Status))),
        draw(whole | st.sampled_from([True, False])),
        draw(whole),
        draw(maybe_text),
        None,
        worker,
        None if worker is None else draw(st.none() | whole),
    )


@given(st.lists(results(), max_size=5), st.booleans())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_report_lines_are_the_json_of_the_records(tmp_path: Path, items: list[Result], extra: bool) -> None:
    path = tmp_path / "r.jsonl"
    with ReportWriter(path) as report:
        for result in items:
            report.write(result, **({"note": "x"} if extra else {}))
    expected = "".join(
        json.dumps({**r.to_record(), **({"note": "x"} if extra else {})}, ensure_ascii=False) + "\n"
        for r in items
    )
    assert path.read_text(encoding="utf-8") == expected


def test_report_line_of_a_ray_run() -> None:
    buffer = io.StringIO()
    writer = ReportWriter.__new__(ReportWriter)
    writer._file = buffer
    writer.write(Result("http://u:***@h/a", "/d/a", Status.SKIPPED, 0, 0, None, None, 1, 2))
    writer.write(Result("http://h/b", None, Status.FAILED, error='bad "x"'))
    assert buffer.getvalue() == (
        '{"url": "http://u:***@h/a", "path": "/d/a", "status": "skipped", "bytes": 0, "attempts": 0, '
        '"error": null, "worker": 1, "shard": 2}\n'
        '{"url": "http://h/b", "path": null, "status": "failed", "bytes": 0, "attempts": 0, '
        '"error": "bad \\"x\\""}\n'
    )
