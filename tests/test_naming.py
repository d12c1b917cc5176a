"""Tests for asyncdl._naming: safe names, Content-Disposition, subdirectories, collisions."""

from __future__ import annotations

import random
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncdl._naming import (
    DEFAULT_NAME,
    TEMP_PREFIX,
    NameRegistry,
    name_from_content_disposition,
    name_from_url,
    safe_subdir,
    sanitize_name,
    split_extension,
    temp_name,
)

# tmp_path is function-scoped; it is only used as a fixed base directory, never written to.
PROPERTY = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Text biased towards what attacks a file name: separators, dots, encoded traversal, controls, unicode.
NASTY_PIECES = st.sampled_from(
    [
        "/",
        "\\",
        ".",
        "..",
        "../",
        "..\\",
        "%2e%2e%2f",
        "%2F",
        "%00",
        "\x00",
        "\n",
        "\x1b",
        "\x7f",
        "\x85",
        " ",
        "\t",
        TEMP_PREFIX,
        ".ASYNCDL",
        "C:",
        "~",
        "é",
        "€",
        "😀",
        "\u202e",
        "a",
        ".tar.gz",
        "'",
        '"',
        ";",
    ]
)
NASTY_TEXT = st.one_of(
    st.text(),
    st.lists(st.one_of(NASTY_PIECES, st.text(max_size=3)), max_size=12).map("".join),
    # Long names exercise the 255-byte cut, with multi-byte characters straddling the limit.
    st.tuples(
        st.text(alphabet="a€😀. /", min_size=200, max_size=400), st.sampled_from(["", ".pdf", ".tar.gz"])
    ).map("".join),
)


def assert_safe_component(dest: Path, name: str) -> None:
    assert name
    assert name not in (".", "..")
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert not any(ord(ch) < 32 or 0x7F <= ord(ch) <= 0x9F for ch in name)
    assert name == name.strip()
    assert not name.lower().startswith(TEMP_PREFIX)
    assert len(name.encode("utf-8")) <= 255
    assert Path(name).parts == (name,)
    resolved = (dest / name).resolve()
    assert resolved.parent == dest.resolve()


# --- sanitize_name ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("", DEFAULT_NAME),
        ("   ", DEFAULT_NAME),
        (".", DEFAULT_NAME),
        ("..", DEFAULT_NAME),
        (" .. ", DEFAULT_NAME),
        ("../etc/passwd", ".._etc_passwd"),
        ("a\\b", "a_b"),
        ("a\x00b\nc\x1bd\x7f", "a_b_c_d_"),
        ("  padded name.txt \t", "padded name.txt"),
        (".bashrc", ".bashrc"),
        ("...", "..."),
        (".asyncdl-x.part", "_.asyncdl-x.part"),
        (".ASYNCDL-x.part", "_.ASYNCDL-x.part"),
        (".asyncdlish", "_.asyncdlish"),
        ("..asyncdl", "..asyncdl"),
        ("café €.txt", "café €.txt"),
    ],
)
def test_sanitize_name_examples(raw: str, expected: str) -> None:
    assert sanitize_name(raw) == expected


def test_sanitize_name_truncates_stem_and_keeps_short_extension() -> None:
    name = sanitize_name("x" * 300 + ".tar.gz")
    assert len(name.encode("utf-8")) == 255
    assert name.endswith("x.tar.gz")


def test_sanitize_name_truncates_multibyte_on_a_character_boundary() -> None:
    name = sanitize_name("€" * 100 + ".pdf")  # 304 bytes
    assert name.endswith(".pdf")
    assert len(name.encode("utf-8")) <= 255
    assert set(name[:-4]) == {"€"}


def test_sanitize_name_long_extension_is_not_kept() -> None:
    name = sanitize_name("a." + "b" * 300)
    assert name == "a." + "b" * 253


def test_sanitize_name_truncation_never_leaves_a_dot_name() -> None:
    # The cut would leave ". . . ." plus trailing blanks; stripped, that must not become "." or "..".
    assert sanitize_name("." + " " * 300 + "x") == DEFAULT_NAME


@given(raw=NASTY_TEXT)
@PROPERTY
def test_sanitize_name_is_one_safe_component(tmp_path: Path, raw: str) -> None:
    assert_safe_component(tmp_path, sanitize_name(raw))


@given(raw=NASTY_TEXT)
@settings(max_examples=150, deadline=None)
def test_sanitize_name_is_idempotent(raw: str) -> None:
    once = sanitize_name(raw)
    assert sanitize_name(once) == once


def test_sanitize_name_replaces_lone_surrogates() -> None:
    assert sanitize_name("a\udcffb") == "a_b"


# --- name_from_url -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://example.org/files/a.iso", "a.iso"),
        ("https://example.org/files/a.iso?sig=1&x=/y#frag/z", "a.iso"),
        ("https://example.org/files/a%20b%E2%82%AC.txt", "a b€.txt"),
        ("https://example.org/files/%FF.bin", "\ufffd.bin"),
        ("https://example.org", DEFAULT_NAME),
        ("https://example.org/", DEFAULT_NAME),
        ("https://example.org/dir/", DEFAULT_NAME),
        ("https://example.org/?q=a.txt", DEFAULT_NAME),
        ("https://example.org/a/..", DEFAULT_NAME),
        ("https://example.org/a/%2e%2e", DEFAULT_NAME),
        ("https://example.org/a/..%2F..%2Fetc%2Fpasswd", ".._.._etc_passwd"),
        ("https://example.org/a/%2e%2e%2f", ".._"),
        ("https://example.org/x/%00evil%0Ax%0A", "_evil_x"),
        ("https://example.org/x/.asyncdl-a-123.part", "_.asyncdl-a-123.part"),
        ("http://[::1/broken", DEFAULT_NAME),
    ],
)
def test_name_from_url_examples(url: str, expected: str) -> None:
    assert name_from_url(url) == expected


@given(path=NASTY_TEXT)
@PROPERTY
def test_name_from_url_is_one_safe_component(tmp_path: Path, path: str) -> None:
    assert_safe_component(tmp_path, name_from_url("https://example.org/" + path))


# --- name_from_content_disposition -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("attachment", None),
        ("inline", None),
        ("attachment; filename=plain.txt", "plain.txt"),
        ('attachment; filename="a b.pdf"', "a b.pdf"),
        ('attachment; FILENAME="upper.pdf"', "upper.pdf"),
        ('attachment; filename="semi;colon.txt"; size=3', "semi;colon.txt"),
        (r'attachment; filename="quo\"te\d.txt"', 'quo"ted.txt'),
        # An escaped backslash is still a directory separator once unescaped.
        (r'attachment; filename="dir\\name.txt"', "name.txt"),
        ('attachment; filename="unterminated.txt', "unterminated.txt"),
        ("attachment; filename*=UTF-8''a%20b%E2%82%AC.pdf", "a b€.pdf"),
        ("attachment; filename=\"fallback.pdf\"; filename*=UTF-8''preferred.pdf", "preferred.pdf"),
        ("attachment; filename*=UTF-8''preferred.pdf; filename=\"fallback.pdf\"", "preferred.pdf"),
        ("attachment; filename*=utf-8'en'lower.pdf", "lower.pdf"),
        ("attachment; filename*=iso-8859-1''caf%E9.txt", "café.txt"),
        ("attachment; filename*=ISO-8859-1'de'%FCber.txt", "über.txt"),
        ("attachment; filename*=\"UTF-8''quoted-ext.txt\"", "quoted-ext.txt"),
        # An unknown charset or a malformed filename* falls back to filename.
        ("attachment; filename*=KOI8-R''x.txt; filename=\"fb.txt\"", "fb.txt"),
        ('attachment; filename*=no-quotes.txt; filename="fb.txt"', "fb.txt"),
        ("attachment; filename*=KOI8-R''x.txt", None),
        # Traversal and absolute paths keep only the base name.
        ('attachment; filename="../../etc/passwd"', "passwd"),
        ('attachment; filename="/etc/passwd"', "passwd"),
        (r'attachment; filename="..\\..\\windows\\win.ini"', "win.ini"),
        ("attachment; filename*=UTF-8''..%2F..%2Fx", "x"),
        ("attachment; filename*=UTF-8''..%5C..%5Cx", "x"),
        ("attachment; filename*=UTF-8''%2Fetc%2Fpasswd", "passwd"),
        # Nothing usable left.
        ('attachment; filename=".."', None),
        ('attachment; filename="dir/"', None),
        ('attachment; filename=""', None),
        ("attachment; filename*=UTF-8''..", None),
        ('attachment; filename="  "', None),
        # What remains is still sanitised.
        ('attachment; filename=".asyncdl-x-0123.part"', "_.asyncdl-x-0123.part"),
        ("attachment; filename*=UTF-8''a%00b%0Ac.txt", "a_b_c.txt"),
        # A missing disposition type is tolerated.
        ('filename="bare.txt"', "bare.txt"),
    ],
)
def test_name_from_content_disposition_examples(header: str | None, expected: str | None) -> None:
    assert name_from_content_disposition(header) == expected


HEADER_VALUES = st.one_of(
    st.text(),
    st.builds(
        lambda kind, raw, quoted: f"{kind}; filename={chr(34) + raw + chr(34) if quoted else raw}",
        st.sampled_from(["attachment", "inline", ""]),
        NASTY_TEXT,
        st.booleans(),
    ),
    st.builds(
        lambda charset, raw: f"attachment; filename*={charset}''{raw}",
        st.sampled_from(["UTF-8", "utf-8", "iso-8859-1", "bogus"]),
        NASTY_TEXT,
    ),
)


@given(header=HEADER_VALUES)
@PROPERTY
def test_name_from_content_disposition_is_one_safe_component(tmp_path: Path, header: str) -> None:
    name = name_from_content_disposition(header)
    if name is not None:
        assert_safe_component(tmp_path, name)


# --- safe_subdir -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subdir", "parts"),
    [
        (None, ()),
        ("", ()),
        ("a", ("a",)),
        ("a/b", ("a", "b")),
        ("a\\b", ("a", "b")),
        ("/abs/path", ("abs", "path")),
        ("../../up", ("up",)),
        ("a/../b", ("a", "b")),
        ("./a//b/.", ("a", "b")),
        ("..", ()),
        ("a/.asyncdl-dir", ("a", "_.asyncdl-dir")),
        ("a\x00b", ("a_b",)),
    ],
)
def test_safe_subdir_examples(subdir: str | None, parts: tuple[str, ...]) -> None:
    dest = Path("/srv/out")
    assert safe_subdir(dest, subdir) == dest.joinpath(*parts)


@given(subdir=st.one_of(st.none(), NASTY_TEXT))
@PROPERTY
def test_safe_subdir_never_escapes_dest(tmp_path: Path, subdir: str | None) -> None:
    result = safe_subdir(tmp_path, subdir)
    base = tmp_path.resolve()
    resolved = result.resolve()
    assert resolved == base or base in resolved.parents
    assert list(tmp_path.iterdir()) == []  # pure path arithmetic: nothing was created


# --- temp_name ---------------------------------------------------------------------------------------------


def test_temp_name_shape_and_stability() -> None:
    name = temp_name("a.iso", "https://example.org/a.iso\0a.iso")
    assert name.startswith(f"{TEMP_PREFIX}-a.iso-")
    assert name.endswith(".part")
    digest = name[len(f"{TEMP_PREFIX}-a.iso-") : -len(".part")]
    assert len(digest) == 12
    assert all(c in "0123456789abcdef" for c in digest)
    assert temp_name("a.iso", "https://example.org/a.iso\0a.iso") == name
    assert temp_name("a.iso", "https://example.org/b/a.iso\0a.iso") != name


def test_temp_name_truncates_long_names() -> None:
    name = temp_name("x" * 500, "k")
    assert name.startswith(f"{TEMP_PREFIX}-{'x' * 80}-")
    assert len(name) == len(TEMP_PREFIX) + 1 + 80 + 1 + 12 + len(".part")


@given(name=NASTY_TEXT, key=st.text())
@PROPERTY
def test_temp_name_is_one_hidden_component(tmp_path: Path, name: str, key: str) -> None:
    temp = temp_name(sanitize_name(name), key)
    assert temp.startswith(TEMP_PREFIX)
    assert "/" not in temp and "\\" not in temp
    assert len(temp.encode("utf-8")) <= 255
    assert (tmp_path / temp).resolve().parent == tmp_path.resolve()


# --- split_extension and NameRegistry ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "stem", "ext"),
    [
        ("a.txt", "a", ".txt"),
        ("archive.tar.gz", "archive", ".tar.gz"),
        ("Archive.TAR.XZ", "Archive", ".TAR.XZ"),
        ("v1.2.tar.bz2", "v1.2", ".tar.bz2"),
        ("a.b.c", "a.b", ".c"),
        ("noext", "noext", ""),
        (".bashrc", ".bashrc", ""),
        (".config.json", ".config", ".json"),
        ("trailing.", "trailing.", ""),
        ("...", "...", ""),
    ],
)
def test_split_extension(name: str, stem: str, ext: str) -> None:
    assert split_extension(name) == (stem, ext)


def test_registry_suffixes_collisions() -> None:
    reg = NameRegistry()
    out = Path("out")
    assert [reg.claim(out, "a.txt") for _ in range(3)] == ["a.txt", "a.1.txt", "a.2.txt"]
    assert [reg.claim(out, "archive.tar.gz") for _ in range(2)] == ["archive.tar.gz", "archive.1.tar.gz"]
    assert [reg.claim(out, "README") for _ in range(2)] == ["README", "README.1"]
    assert [reg.claim(out, ".bashrc") for _ in range(2)] == [".bashrc", ".bashrc.1"]


def test_registry_directories_are_separate() -> None:
    reg = NameRegistry()
    assert reg.claim(Path("out"), "a.txt") == "a.txt"
    assert reg.claim(Path("out/sub"), "a.txt") == "a.txt"
    assert reg.claim(Path("out"), "a.txt") == "a.1.txt"


def test_registry_suffixed_names_do_not_collide_with_literal_ones() -> None:
    reg = NameRegistry()
    out = Path("out")
    assert reg.claim(out, "a.txt") == "a.txt"
    assert reg.claim(out, "a.1.txt") == "a.1.txt"
    # a.1.txt is taken literally, so the collision skips to a.2.txt ...
    assert reg.claim(out, "a.txt") == "a.2.txt"
    # ... and a later literal a.2.txt is itself suffixed.
    assert reg.claim(out, "a.2.txt") == "a.2.1.txt"
    assert reg.claim(out, "a.txt") == "a.3.txt"


def test_registry_suffix_keeps_the_name_within_255_bytes() -> None:
    reg = NameRegistry()
    long_name = sanitize_name("y" * 300 + ".pdf")
    assert reg.claim(Path("out"), long_name) == long_name
    second = reg.claim(Path("out"), long_name)
    assert second != long_name
    assert second.endswith(".1.pdf")
    assert len(second.encode("utf-8")) <= 255


def test_registry_is_deterministic() -> None:
    claims = ["a.txt", "a.txt", "b", "a.1.txt", "a.txt", "b", "b.1"]
    reg1, reg2 = NameRegistry(), NameRegistry()
    got = [reg1.claim(Path("d"), n) for n in claims]
    assert got == [reg2.claim(Path("d"), n) for n in claims]
    assert got == ["a.txt", "a.1.txt", "b", "a.1.1.txt", "a.2.txt", "b.1", "b.1.1"]


CLAIMS = st.lists(
    st.tuples(
        st.sampled_from(["out", "out/sub"]),
        st.sampled_from(["a.txt", "a.1.txt", "a.2.txt", "a.1.1.txt", "b", "b.1", "x.tar.gz", "x.1.tar.gz"]),
    ),
    max_size=40,
)


@given(claims=CLAIMS)
@settings(max_examples=150, deadline=None)
def test_registry_never_returns_a_path_twice(claims: list[tuple[str, str]]) -> None:
    reg = NameRegistry()
    seen: set[tuple[str, str]] = set()
    for directory, name in claims:
        free = (directory, name) not in seen
        got = reg.claim(Path(directory), name)
        assert (directory, got) not in seen
        # A name nobody holds yet is granted as asked.
        assert (got == name) == free
        seen.add((directory, got))


def test_name_from_url_matches_urlsplit_on_odd_urls() -> None:
    """The one-regex path of name_from_url gives what urlsplit's path gives, whatever the URL."""

    def by_urlsplit(url: str) -> str:
        try:
            path = urlsplit(url).path
        except ValueError:
            return DEFAULT_NAME
        if not path or path.endswith("/"):
            return DEFAULT_NAME
        return sanitize_name(unquote(path.rpartition("/")[2], encoding="utf-8", errors="replace"))

    pieces = [*"ab/?#:@[]%2e.\t\r\n \x00\x01\x1f\x7fé", "http://", "HTTPS://", "//", "%2F", "%2e%2e"]
    starts = [
        "http://",
        "https://",
        "HTTP://",
        "hTtPs://",
        "http\u017f://",
        "http:/",
        "ftp://",
        "",
        " http://",
        "\x00http://",
    ]
    rng = random.Random(7)
    for _ in range(20000):
        url = rng.choice(starts) + "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        assert name_from_url(url) == by_urlsplit(url), repr(url)


def test_registry_keeps_names_apart_across_its_table_growing() -> None:
    from asyncdl._naming import NameRegistry

    registry = NameRegistry()
    directory = Path("/out")
    # Past several doublings of the table: every first claim keeps its name, every second one is suffixed.
    assert all(registry.claim(directory, f"f{i}.bin") == f"f{i}.bin" for i in range(5000))
    assert all(registry.claim(directory, f"f{i}.bin") == f"f{i}.1.bin" for i in range(5000))
    assert registry.claim(directory, "f0.1.bin") == "f0.1.1.bin"
