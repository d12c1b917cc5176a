"""The URL list parser: format rules, line numbers, laziness, and property tests."""

from __future__ import annotations

import io
import string
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncdl._models import CHECKSUM_ALGORITHMS, BadEntry, Checksum, Request
from asyncdl._urllist import parse_lines

SHA256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
SHA1 = "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3"
MD5 = "098f6bcd4621d373cade4e832627b4f6"
SHA512 = "ee26b0dd4af7e749aa1a8ee3c10ae9923f618980772e473f8819a5d4940e0db27ac185f8a0e1d5f84f88bc887fd67b143732c304cc5fa9ad8e6f57f50028a8ff"  # noqa: E501


def parse(text: str, source: str = "urls.txt") -> list[Request | BadEntry]:
    return list(parse_lines(io.StringIO(text), source=source))


def parse_warned(text: str, source: str = "urls.txt") -> tuple[list[Request | BadEntry], list[str]]:
    warnings: list[str] = []
    items = list(parse_lines(io.StringIO(text), source=source, warn=warnings.append))
    return items, warnings


def only_bad(items: list[Request | BadEntry]) -> BadEntry:
    assert len(items) == 1
    assert isinstance(items[0], BadEntry)
    return items[0]


# --- plain lists -----------------------------------------------------------------------------------


def test_one_url_a_line() -> None:
    items = parse("https://example.org/a\nhttp://example.org/b\n")
    assert items == [Request("https://example.org/a"), Request("http://example.org/b")]
    assert [item.source for item in items] == ["urls.txt:1", "urls.txt:2"]


def test_lines_without_endings_and_any_iterable() -> None:
    items = list(parse_lines(("https://a.example/1", "https://a.example/2"), source="<stdin>"))
    assert items == [Request("https://a.example/1"), Request("https://a.example/2")]
    assert [item.source for item in items] == ["<stdin>:1", "<stdin>:2"]


def test_empty_input() -> None:
    assert parse("") == []
    assert parse("\n\n   \n# only a comment\n") == []


def test_blank_and_comment_lines_are_ignored_but_counted() -> None:
    text = "# header\n\n   \n\t\nhttps://example.org/a\n  # indented comment\n#https://example.org/x\nhttps://example.org/b\n"
    items = parse(text)
    assert items == [Request("https://example.org/a"), Request("https://example.org/b")]
    assert [item.source for item in items] == ["urls.txt:5", "urls.txt:8"]


def test_trailing_whitespace_on_url_line_is_ignored() -> None:
    items = parse("https://example.org/a   \t \nhttps://example.org/b\r\n")
    assert items == [Request("https://example.org/a"), Request("https://example.org/b")]


def test_crlf_input() -> None:
    text = (
        "# list\r\nhttps://example.org/a\r\n  out=a.bin\r\n\r\nhttps://example.org/b\thttps://m.example/b\r\n"
    )
    items = parse(text)
    assert items == [
        Request("https://example.org/a", out="a.bin"),
        Request("https://example.org/b", mirrors=("https://m.example/b",)),
    ]
    assert [item.source for item in items] == ["urls.txt:2", "urls.txt:5"]


def test_crlf_lines_given_one_by_one() -> None:
    lines = ["https://example.org/a\r\n", "  dir=sub\r\n", "https://example.org/b\r\n"]
    items = list(parse_lines(lines, source="l"))
    assert items == [Request("https://example.org/a", dir="sub"), Request("https://example.org/b")]


def test_bom_on_first_line_is_stripped() -> None:
    items = parse("\ufeffhttps://example.org/a\nhttps://example.org/b\n")
    assert items == [Request("https://example.org/a"), Request("https://example.org/b")]
    assert items[0].source == "urls.txt:1"


def test_bom_before_a_comment_and_before_an_option() -> None:
    assert parse("\ufeff# comment\nhttps://example.org/a\n") == [Request("https://example.org/a")]
    # An option line before the first download is ignored, as aria2c does.
    assert parse("\ufeff  out=x\nhttps://example.org/a\n") == [Request("https://example.org/a")]


def test_bom_later_is_not_stripped() -> None:
    items = parse("https://example.org/a\n\ufeffhttps://example.org/b\n")
    assert items[0] == Request("https://example.org/a")
    assert isinstance(items[1], BadEntry)
    assert items[1].source == "urls.txt:2"


# --- mirrors ---------------------------------------------------------------------------------------


def test_tab_separated_urls_are_mirrors() -> None:
    (item,) = parse("https://a.example/f\thttps://b.example/f\thttp://c.example/f\n")
    assert item == Request("https://a.example/f", mirrors=("https://b.example/f", "http://c.example/f"))
    assert isinstance(item, Request)
    assert item.urls == ("https://a.example/f", "https://b.example/f", "http://c.example/f")


def test_empty_tab_fields_are_dropped() -> None:
    (item,) = parse("https://a.example/f\t\thttps://b.example/f\t\n")
    assert item == Request("https://a.example/f", mirrors=("https://b.example/f",))


def test_one_bad_mirror_makes_the_line_bad() -> None:
    text = "https://a.example/f\tftp://b.example/f\n  out=f\nhttps://ok.example/g\n"
    bad, good = parse(text)
    assert isinstance(bad, BadEntry)
    assert bad.url == "https://a.example/f\tftp://b.example/f"
    assert bad.source == "urls.txt:1"
    assert bad.message == (
        "urls.txt:1: not an http:// or https:// URL: " + repr("https://a.example/f\tftp://b.example/f")
    )
    assert good == Request("https://ok.example/g")


def test_space_separated_urls_are_one_bad_url() -> None:
    bad = only_bad(parse("https://a.example/f https://b.example/f\n"))
    assert bad.message == ("urls.txt:1: URL contains white space: 'https://a.example/f https://b.example/f'")


# --- options ---------------------------------------------------------------------------------------


def test_all_options() -> None:
    text = (
        "https://example.org/file.iso\n"
        "  out=renamed.iso\n"
        "\tdir=images/2024\n"
        "  checksum=sha-256=" + SHA256.upper() + "\n"
        "  header=Authorization: Bearer abc\n"
        "  header=X-Trace:  1 \n"
        "  header=X-Empty:\n"
    )
    (item,) = parse(text)
    assert item == Request(
        "https://example.org/file.iso",
        out="renamed.iso",
        dir="images/2024",
        checksum=Checksum("sha256", SHA256),
        headers=(("Authorization", "Bearer abc"), ("X-Trace", "1"), ("X-Empty", "")),
    )
    assert item.source == "urls.txt:1"


@pytest.mark.parametrize(
    ("spec", "algorithm", "digest"),
    [
        ("sha-256", "sha256", SHA256),
        ("sha-1", "sha1", SHA1),
        ("sha-512", "sha512", SHA512),
        ("md5", "md5", MD5),
    ],
)
def test_checksum_algorithms(spec: str, algorithm: str, digest: str) -> None:
    (item,) = parse(f"https://example.org/f\n  checksum={spec}={digest}\n")
    assert isinstance(item, Request)
    assert item.checksum == Checksum(algorithm, digest)


def test_option_key_and_value_are_stripped_and_value_may_hold_equals() -> None:
    (item,) = parse("https://example.org/f\n   out =  a=b.txt  \n")
    assert item == Request("https://example.org/f", out="a=b.txt")


def test_options_survive_blank_lines_and_comments_in_between() -> None:
    text = "https://example.org/f\n\n  # the name\n  out=f.bin\n\n  dir=d\nhttps://example.org/g\n"
    assert parse(text) == [
        Request("https://example.org/f", out="f.bin", dir="d"),
        Request("https://example.org/g"),
    ]


def test_headers_keep_their_order_and_repeats() -> None:
    (item,) = parse("https://example.org/f\n  header=Cookie: a=1\n  header=X-A: 1\n  header=Cookie: b=2\n")
    assert isinstance(item, Request)
    assert item.headers == (("Cookie", "a=1"), ("X-A", "1"), ("Cookie", "b=2"))


def test_header_value_may_contain_colons() -> None:
    (item,) = parse("https://example.org/f\n  header=Referer: https://example.org:8443/x\n")
    assert isinstance(item, Request)
    assert item.headers == (("Referer", "https://example.org:8443/x"),)


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("out", "urls.txt:4: option line without '=': 'out'"),
        ("split=x", "urls.txt:4: split= must be a whole number of at least 1: 'x'"),
        ("split=0", "urls.txt:4: split= must be a whole number of at least 1: '0'"),
        (
            "max-connection-per-server=-1",
            "urls.txt:4: max-connection-per-server= must be a whole number of at least 1: '-1'",
        ),
        ("max-tries=many", "urls.txt:4: max-tries= must be a whole number of at least 0: 'many'"),
        (
            "max-download-limit=fast",
            "urls.txt:4: max-download-limit= must be a rate such as 500K or 2M, not 'fast'",
        ),
        (
            "lowest-speed-limit=1Q",
            "urls.txt:4: lowest-speed-limit= must be a rate such as 500K or 2M, not '1Q'",
        ),
        ("allow-overwrite=yes", "urls.txt:4: allow-overwrite= must be true or false, not 'yes'"),
        ("referer=", "urls.txt:4: referer= needs a value"),
        ("user-agent=a\x00b", "urls.txt:4: user-agent= contains a control character"),
        ("checksum=sha-256", "urls.txt:4: bad checksum: checksum must look like sha-256=HEX, not 'sha-256'"),
        ("checksum=sha-256=abc", "urls.txt:4: bad checksum: checksum for sha-256 must be 64 hex digits"),
        ("checksum=crc32=abcd", "urls.txt:4: bad checksum: unsupported checksum algorithm 'crc32'"),
        ("header=Authorization Bearer x", "urls.txt:4: header= must look like 'Name: value'"),
        ("header=: v", "urls.txt:4: bad header name ''"),
        ("header=Bad Name: v", "urls.txt:4: bad header name 'Bad Name'"),
        ("header=X-A: a\x00b", "urls.txt:4: value of header 'X-A' contains a control character"),
        ("out=", "urls.txt:4: out= needs a value"),
        ("dir=  ", "urls.txt:4: dir= needs a value"),
        ("out=a\x1bb", "urls.txt:4: out= contains a control character: 'a\\x1bb'"),
    ],
)
def test_bad_option_fails_its_download_naming_the_option_line(option: str, expected: str) -> None:
    text = f"https://example.org/first\n\nhttps://example.org/f\n  {option}\n  out=ok\nhttps://example.org/next\n"
    first, bad, after = parse(text)
    assert first == Request("https://example.org/first")
    assert isinstance(bad, BadEntry)
    assert bad.message == expected
    assert bad.url == "https://example.org/f"
    assert bad.source == "urls.txt:3"
    assert after == Request("https://example.org/next")


@pytest.mark.parametrize("key", ["out", "dir", "checksum"])
def test_single_options_may_not_repeat(key: str) -> None:
    value = f"md5={MD5}" if key == "checksum" else "x"
    bad = only_bad(parse(f"https://example.org/f\n  {key}={value}\n  {key}={value}\n"))
    assert bad.message == f"urls.txt:3: {key}= given twice for one download"


def test_first_bad_option_is_reported_later_ones_are_consumed() -> None:
    text = "https://example.org/f\n  out=a\n  split=x\n  out\n  header=x\nhttps://example.org/g\n"
    bad, good = parse(text)
    assert isinstance(bad, BadEntry)
    assert bad.message.startswith("urls.txt:3: split= must be")
    assert good == Request("https://example.org/g")
    assert good.source == "urls.txt:6"


def test_unknown_options_are_reported_once_per_key_and_ignored() -> None:
    text = (
        "https://example.org/f\n"
        "  pause=true\n"
        "  out=f.bin\n"
        "  OUT=x\n"
        "https://example.org/g\n"
        "  pause=false\n"
        "  bt-tracker=http://t.example/announce?secret=1\n"
        "  just words\n"
        "  more words\n"
    )
    items, warnings = parse_warned(text)
    assert items == [Request("https://example.org/f", out="f.bin"), Request("https://example.org/g")]
    assert warnings == [
        "urls.txt:2: unknown option 'pause' ignored",
        "urls.txt:4: unknown option 'OUT' ignored",
        "urls.txt:7: unknown option 'bt-tracker' ignored",
        "urls.txt:8: unknown option \"(a line without '=')\" ignored",
    ]


def test_each_source_reports_its_own_unknown_keys() -> None:
    _, first = parse_warned("https://example.org/f\n  pause=true\n", source="a.txt")
    _, second = parse_warned("https://example.org/f\n  pause=true\n", source="b.txt")
    assert first == ["a.txt:2: unknown option 'pause' ignored"]
    assert second == ["b.txt:2: unknown option 'pause' ignored"]


def test_unknown_option_value_is_not_echoed() -> None:
    _, warnings = parse_warned("https://example.org/f\n  rpc-secret=hunter2\n")
    assert warnings == ["urls.txt:2: unknown option 'rpc-secret' ignored"]


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["split=4"], {"connections": 4}),
        (["max-connection-per-server=3"], {"connections": 3}),
        (["split=8", "max-connection-per-server=2"], {"connections": 2}),
        (["max-connection-per-server=5", "split=3"], {"connections": 3}),
        (["referer=https://example.org/page"], {"referer": "https://example.org/page"}),
        (["user-agent=Wget/1.21 (linux)"], {"user_agent": "Wget/1.21 (linux)"}),
        (["http-user=alice", "http-passwd=s3 cret=x"], {"auth": ("alice", "s3 cret=x")}),
        (["http-user=alice"], {"auth": ("alice", "")}),
        (["max-download-limit=500K"], {"limit_rate": 500 * 1024}),
        (["max-download-limit=0"], {}),
        (["allow-overwrite=true"], {"overwrite": True}),
        (["allow-overwrite=false"], {"overwrite": False}),
        (["max-tries=3"], {"max_tries": 3}),
        (["max-tries=0"], {"max_tries": 0}),
        (["lowest-speed-limit=10K"], {"lowest_speed_limit": 10 * 1024}),
        (["lowest-speed-limit=0"], {}),
    ],
)
def test_aria2_keys_become_request_options(lines: list[str], expected: dict[str, object]) -> None:
    text = "https://example.org/f\n" + "".join(f"  {line}\n" for line in lines)
    items, warnings = parse_warned(text)
    assert items == [Request("https://example.org/f", **expected)]  # type: ignore[arg-type]
    assert warnings == []


def test_password_of_http_passwd_is_never_in_a_message() -> None:
    bad = only_bad(parse("https://example.org/f\n  http-passwd=hunter2\n  http-passwd=hunter2\n"))
    assert bad.message == "urls.txt:3: http-passwd= given twice for one download"
    alone = only_bad(parse("https://example.org/f\n  http-passwd=hunter2\n"))
    assert alone.message == "urls.txt:1: http-passwd= needs http-user="
    assert "hunter2" not in repr(Request("https://example.org/f", auth=("u", "hunter2")))


def test_header_without_colon_is_not_echoed() -> None:
    bad = only_bad(parse("https://example.org/f\n  header=Bearer s3cret-token\n"))
    assert "s3cret" not in bad.message


def test_an_indented_url_is_not_a_download_and_is_reported_once() -> None:
    text = "https://example.org/a\n  https://example.org/b\n  https://example.org/c\n"
    items, warnings = parse_warned(text)
    assert items == [Request("https://example.org/a")]
    assert warnings == [
        "urls.txt:2: indented URL 'https://example.org/b' ignored: a download's URL starts at column 0, "
        "indented lines hold key=value options (reported once)"
    ]


def test_indented_url_with_a_query_gets_the_hint_too() -> None:
    items, warnings = parse_warned("https://example.org/a\n  https://u:pw@example.org/b?x=1\n")
    assert items == [Request("https://example.org/a")]
    (warning,) = warnings
    assert warning.startswith("urls.txt:2: indented URL 'https://u:***@example.org/b?x=1' ignored")


def test_option_lines_before_the_first_download_are_ignored() -> None:
    text = "# list\n  out=a.bin\n\tdir=x\n  pause=true\nhttps://example.org/f\n  out=f\n"
    assert parse_warned(text) == ([Request("https://example.org/f", out="f")], [])


def test_an_indented_list_downloads_nothing_and_says_why() -> None:
    items, warnings = parse_warned("  https://example.org/a\n  https://example.org/b\n")
    assert items == []
    assert len(warnings) == 1
    assert warnings[0].startswith("urls.txt:1: indented URL 'https://example.org/a' ignored")


# --- bad URL lines ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("example.org/file", "not an http:// or https:// URL"),
        ("ftp://example.org/file", "not an http:// or https:// URL"),
        ("https:///path", "URL has no host"),
        ("http://example.org:99999/", "not a valid URL (Port out of range 0-65535)"),
        ("http://[::1/", "not a valid URL (Invalid IPv6 URL)"),
        ("hello world", "not an http:// or https:// URL"),
    ],
)
def test_bad_url_line(line: str, problem: str) -> None:
    text = f"https://example.org/a\n\n{line}   \n  out=ignored\n  whatever\nhttps://example.org/b\n"
    first, bad, last = parse(text, source="list.txt")
    assert first == Request("https://example.org/a")
    assert bad == BadEntry(url=line, message=f"list.txt:3: {problem}: {line!r}", source="list.txt:3")
    assert last == Request("https://example.org/b")
    assert last.source == "list.txt:6"


def test_bad_url_options_are_consumed_silently() -> None:
    bad = only_bad(parse("nope\n  out=x\n  junk\n  checksum=bad\n"))
    assert bad.message == "urls.txt:1: not an http:// or https:// URL: 'nope'"


def test_password_never_in_bad_url_message() -> None:
    text = (
        "ftp://alice:hunter2@example.org/f\n"
        "http://bob:pa55word@example.org:notaport/f\n"
        "https://ok.example/f\thttp://carol:letmein@[::1/x\n"
        "https://ok.example/f\n  header=X: y\n  https://dave:opensesame@example.org/\n"
        "  https://erin:topsecret@example.org/\n"
        "https://ok.example/g\n  header=X y\n"
    )
    items, warnings = parse_warned(text)
    messages = [item.message for item in items if isinstance(item, BadEntry)]
    assert len(items) == 5
    assert len(messages) == 4
    assert len(warnings) == 1
    for secret in ("hunter2", "pa55word", "letmein", "opensesame", "topsecret"):
        assert not any(secret in message for message in [*messages, *warnings]), secret
    assert messages[0] == "urls.txt:1: not an http:// or https:// URL: 'ftp://alice:***@example.org/f'"
    assert "carol:***@" in messages[2]
    # The BadEntry keeps the text as written (a report redacts it later), only the message is cleaned.
    assert isinstance(items[0], BadEntry)
    assert items[0].url == "ftp://alice:hunter2@example.org/f"


def test_orphan_option_with_password_is_redacted() -> None:
    items, warnings = parse_warned("  https://u:sesame@example.org/x\n")
    assert items == []
    assert len(warnings) == 1
    assert "sesame" not in warnings[0]


def test_password_of_a_url_without_scheme_is_redacted() -> None:
    bad = only_bad(parse("alice:hunter2@example.org/f\n"))
    assert "hunter2" not in bad.message
    assert bad.message == "urls.txt:1: not an http:// or https:// URL: 'alice:***@example.org/f'"


def test_user_without_password_is_kept() -> None:
    bad = only_bad(parse("ftp://alice@example.org/f\n"))
    assert "alice@example.org" in bad.message


# --- an aria2c input file --------------------------------------------------------------------------

ARIA2C_EXAMPLE = f"""\
# Generated for aria2c -i; asyncdl reads it too.
https://releases.example.org/debian-12.iso\thttps://mirror1.example.net/debian-12.iso\thttps://mirror2.example.com/pub/debian-12.iso
  dir=iso
  out=debian.iso
  checksum=sha-256={SHA256}

http://files.example.org/report.pdf
  header=Cookie: session=abc
  header=Referer: https://files.example.org/
# the next line is broken on purpose
htps://typo.example.org/x
  out=x
https://api.example.org/v1/export?format=csv&id=7
 out=export.csv
"""


def test_aria2c_example_file() -> None:
    items = parse(ARIA2C_EXAMPLE, source="downloads.aria2")
    assert items == [
        Request(
            "https://releases.example.org/debian-12.iso",
            mirrors=(
                "https://mirror1.example.net/debian-12.iso",
                "https://mirror2.example.com/pub/debian-12.iso",
            ),
            dir="iso",
            out="debian.iso",
            checksum=Checksum("sha256", SHA256),
        ),
        Request(
            "http://files.example.org/report.pdf",
            headers=(("Cookie", "session=abc"), ("Referer", "https://files.example.org/")),
        ),
        BadEntry(
            url="htps://typo.example.org/x",
            message="downloads.aria2:11: not an http:// or https:// URL: 'htps://typo.example.org/x'",
            source="downloads.aria2:11",
        ),
        Request("https://api.example.org/v1/export?format=csv&id=7", out="export.csv"),
    ]
    assert [item.source for item in items] == [
        "downloads.aria2:2",
        "downloads.aria2:7",
        "downloads.aria2:11",
        "downloads.aria2:13",
    ]


# --- laziness --------------------------------------------------------------------------------------


class CountingLines:
    """A million-line input that counts how many lines were pulled, and can refuse to give more."""

    def __init__(self, lines: Iterator[str], *, limit: int | None = None) -> None:
        self._lines = lines
        self.pulled = 0
        self.limit = limit

    def __iter__(self) -> Iterator[str]:
        for line in self._lines:
            if self.limit is not None and self.pulled >= self.limit:
                raise AssertionError(f"parser read line {self.pulled + 1}, limit was {self.limit}")
            self.pulled += 1
            yield line


def million_urls() -> Iterator[str]:
    return (f"https://example.org/{i}\n" for i in range(1_000_000))


def test_first_request_is_yielded_after_reading_exactly_two_lines() -> None:
    feed = CountingLines(million_urls(), limit=2)
    items = parse_lines(feed, source="big")
    assert feed.pulled == 0  # a generator: nothing is read before the first next()
    first = next(items)
    assert first == Request("https://example.org/0")
    # Line 2 had to be read to know that line 1 has no options; line 3 was not touched.
    assert feed.pulled == 2
    feed.limit = 3
    assert next(items) == Request("https://example.org/1")
    assert feed.pulled == 3


def test_reads_one_line_ahead_all_the_way() -> None:
    feed = CountingLines(million_urls())
    items = parse_lines(feed, source="big")
    for n in range(1, 1001):
        item = next(items)
        assert item.source == f"big:{n}"
        assert feed.pulled == n + 1


def test_options_are_read_up_to_the_next_url_and_no_further() -> None:
    def lines() -> Iterator[str]:
        yield "https://example.org/a"
        yield "  out=a"
        yield ""
        yield "# comment"
        yield "  dir=d"
        yield "https://example.org/b"
        raise AssertionError("read past the line that ends the first download")

    items = parse_lines(lines(), source="s")
    assert next(items) == Request("https://example.org/a", out="a", dir="d")


def test_bad_entries_are_lazy_too() -> None:
    feed = CountingLines(iter(["nope\n", "https://example.org/a\n", *million_urls()]), limit=2)
    items = parse_lines(feed, source="s")
    assert isinstance(next(items), BadEntry)
    assert feed.pulled == 2


def test_orphan_options_are_skipped_without_reading_ahead() -> None:
    feed = CountingLines(iter(["  out=x\n", "https://example.org/a\n", *million_urls()]), limit=3)
    assert next(parse_lines(feed, source="s")) == Request("https://example.org/a")
    assert feed.pulled == 3


def test_last_download_is_yielded_at_end_of_input() -> None:
    assert parse("https://example.org/a\n  out=a") == [Request("https://example.org/a", out="a")]


# --- properties ------------------------------------------------------------------------------------

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Characters that make up list lines, with the separators and special cases overweighted.
list_chars = st.one_of(
    st.sampled_from(["\n", "\r", "\t", " ", "#", "=", ":", "@", "/", "\ufeff", "\x00", "[", "]", "%"]),
    st.sampled_from(["http://", "https://", "ftp://", "u:p@", "out=", "dir=", "checksum=", "header="]),
    st.sampled_from(["sha-256=", "md5=" + MD5, "sha-1=" + SHA1, "X-A: b", "example.org", ":80", ":x"]),
    st.characters(),
)
list_text = st.lists(list_chars, max_size=60).map("".join)


@FAST
@given(list_text)
def test_any_text_never_raises(text: str) -> None:
    for source_lines in (io.StringIO(text), text.splitlines(keepends=True), text.split("\n")):
        for item in parse_lines(source_lines, source="fuzz"):
            assert isinstance(item, (Request, BadEntry))
            assert item.source is not None
            assert item.source.startswith("fuzz:")


@FAST
@given(st.lists(st.text(max_size=30), max_size=8))
def test_any_lines_never_raise(lines: list[str]) -> None:
    for item in parse_lines(lines, source="fuzz"):
        assert isinstance(item, (Request, BadEntry))


SECRET = "Zq7secretZq7"
# A URL with a password, broken in the ways a hand-written list breaks one.
secret_url_lines = st.builds(
    "{prefix}{scheme}{user}:{secret}@{host}{port}/{path}".format,
    prefix=st.sampled_from(["", " ", "\t", "x ", "https://ok.example/f\t", "  header=X: "]),
    scheme=st.sampled_from(["http://", "https://", "ftp://", "", "//", "http:/", "HTTP://", "http ://"]),
    user=st.sampled_from(["u", "", "user.name", "a b"]),
    secret=st.just(SECRET),
    host=st.sampled_from(["example.org", "[::1", "[::1]", "", "ex ample.org"]),
    port=st.sampled_from(["", ":80", ":x", ":99999", ":"]),
    path=st.text(string.ascii_letters + " ?#=", max_size=6),
)


@FAST
@given(st.lists(secret_url_lines, min_size=1, max_size=4), st.sampled_from(["", "https://ok.example/0\n"]))
def test_passwords_never_in_messages(lines: list[str], before: str) -> None:
    text = before + "".join(line + "\n" for line in lines)
    for item in parse_lines(io.StringIO(text), source="fuzz"):
        if isinstance(item, BadEntry):
            assert SECRET not in item.message


hosts = st.builds(
    "{}.{}".format,
    st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=8),
    st.sampled_from(["example", "example.org", "test"]),
)
paths = st.text(string.ascii_letters + string.digits + "-._~/%?&=;,+!$'()*", max_size=20)
urls = st.builds("{}://{}/{}".format, st.sampled_from(["http", "https"]), hosts, paths)
# Values are stripped by the parser and may not hold control characters, so generate them that way.
printable = st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"))
values = st.text(printable, min_size=1, max_size=15).filter(lambda v: v == v.strip() and v != "")
header_names = st.text(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~", min_size=1, max_size=12)
header_values = st.text(printable, max_size=15).filter(lambda v: v == v.strip())


@st.composite
def checksums(draw: st.DrawFn) -> Checksum:
    spec = draw(st.sampled_from(sorted(CHECKSUM_ALGORITHMS)))
    size = {"md5": 16, "sha-1": 20, "sha-224": 28, "sha-256": 32, "sha-384": 48, "sha-512": 64}[spec]
    digest = draw(st.binary(min_size=size, max_size=size)).hex()
    return Checksum(spec, draw(st.sampled_from([digest, digest.upper()])))


requests = st.builds(
    Request,
    urls,
    mirrors=st.lists(urls, max_size=3).map(tuple),
    out=st.none() | values,
    dir=st.none() | values,
    checksum=st.none() | checksums(),
    headers=st.lists(st.tuples(header_names, header_values), max_size=3).map(tuple),
)


def render(request: Request, *, indent: str, newline: str) -> list[str]:
    """The list-format lines for ``request`` (with the key ``checksum`` in the aria2c spelling)."""
    lines = ["\t".join(request.urls)]
    if request.out is not None:
        lines.append(f"{indent}out={request.out}")
    if request.dir is not None:
        lines.append(f"{indent}dir={request.dir}")
    if request.checksum is not None:
        spec = {v: k for k, v in CHECKSUM_ALGORITHMS.items()}[request.checksum.algorithm]
        lines.append(f"{indent}checksum={spec}={request.checksum.hexdigest}")
    lines.extend(f"{indent}header={name}: {value}" for name, value in request.headers)
    return [line + newline for line in lines]


@FAST
@given(
    st.lists(requests, max_size=6),
    st.sampled_from(["  ", "\t", " "]),
    st.sampled_from(["\n", "\r\n"]),
    st.booleans(),
    st.booleans(),
)
def test_round_trip(reqs: list[Request], indent: str, newline: str, comments: bool, bom: bool) -> None:
    lines: list[str] = []
    starts: list[int] = []
    for request in reqs:
        if comments:
            lines.extend(["# next" + newline, newline])
        starts.append(len(lines) + 1)
        lines.extend(render(request, indent=indent, newline=newline))
    if bom and lines:
        lines[0] = "\ufeff" + lines[0]
    parsed = list(parse_lines(lines, source="rt"))
    assert parsed == reqs
    assert [item.source for item in parsed] == [f"rt:{n}" for n in starts]
    # The same text read as a file gives the same result.
    assert list(parse_lines(io.StringIO("".join(lines), newline=""), source="rt")) == reqs


def test_the_readme_names_every_key_the_parser_knows() -> None:
    from pathlib import Path

    from asyncdl._urllist import _KNOWN_KEYS

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("### URL list format", 1)[1].split("\n### ", 1)[0]
    assert [key for key in sorted(_KNOWN_KEYS) if f"`{key}=" not in section] == []
