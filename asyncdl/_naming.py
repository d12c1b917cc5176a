"""Pure naming: URL / ``out=`` / Content-Disposition -> a safe file name inside the destination.

Invariants every function here keeps, whatever the URL, the list file or the server says:

* a name is exactly one path component: no ``/``, ``\\``, NUL or other control character, never ``.``,
  ``..`` or empty, at most 255 bytes of UTF-8 (the usual file-system limit);
* a name never starts with :data:`TEMP_PREFIX`, which is reserved for our temporary files, so that
  a download can never overwrite, or be mistaken for, another download's partial data;
* a subdirectory is always the destination itself or below it.

Nothing here touches the disk: the caller decides, this module only computes.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from array import array
from pathlib import Path
from urllib.parse import unquote, unquote_to_bytes, urlsplit

from ._urls import PLAIN_URL_START

DEFAULT_NAME = "index.html"
TEMP_PREFIX = ".asyncdl"

# Most file systems (ext4, APFS, NTFS in UTF-16 units) cap one component at 255 bytes.
MAX_NAME_BYTES = 255
# An extension longer than this is not worth keeping when a name must be shortened.
_MAX_KEPT_EXT_BYTES = 32
# Characters of the target name kept in a temporary name; the byte cap keeps the whole temporary name
# below MAX_NAME_BYTES even for 4-byte characters.
_TEMP_STEM_MAX_CHARS = 80
_TEMP_STEM_MAX_BYTES = 160
_TEMP_HASH_CHARS = 12

# Compound extensions that a collision suffix must not split (archive.1.tar.gz, not archive.tar.1.gz).
_MULTI_PART_EXTENSIONS = (".tar.gz", ".tar.bz2", ".tar.xz", ".tar.zst", ".tar.lz", ".tar.lzma", ".tar.z")

# Charsets RFC 8187 (utf-8, mandatory) and RFC 5987 (iso-8859-1) allow in filename*.
_blake2b = hashlib.blake2b

_EXT_VALUE_CHARSETS = {"utf-8": "utf-8", "iso-8859-1": "iso-8859-1", "us-ascii": "ascii"}


def _is_unsafe_char(ch: str) -> bool:
    # Cc: NUL and the other C0/C1 controls (terminal escapes, newlines that would break the report);
    # Cs: lone surrogates, which cannot be encoded to a UTF-8 file name at all.
    return ch in "/\\" or unicodedata.category(ch) in ("Cc", "Cs")


# Most names are plain: one regex search (C speed) says so before any per-character work.
_MAYBE_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _replace_unsafe_chars(text: str) -> str:
    if not _MAYBE_UNSAFE.search(text):
        return text
    return "".join("_" if _is_unsafe_char(ch) else ch for ch in text)


def _truncate_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` that fits in ``max_bytes`` of UTF-8, never splitting a character."""
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", errors="ignore")


def split_extension(name: str) -> tuple[str, str]:
    """``(stem, ext)`` with ``stem + ext == name``.

    A known compound extension (``.tar.gz``) stays whole; otherwise the extension starts at the last
    dot. Leading dots belong to the stem (``.bashrc`` has no extension), and so does a trailing dot.
    """
    lowered = name.lower()
    body_start = len(name) - len(name.lstrip("."))
    for ext in _MULTI_PART_EXTENSIONS:
        if lowered.endswith(ext) and len(name) - len(ext) > body_start:
            return name[: -len(ext)], name[-len(ext) :]
    dot = name.rfind(".")
    if dot < body_start or dot == len(name) - 1:
        return name, ""
    return name[:dot], name[dot:]


def sanitize_name(name: str) -> str:
    """``name`` made into one path component that is safe inside any directory.

    Separators and control characters become ``_``; surrounding white space goes; an empty name,
    ``.`` or ``..`` becomes :data:`DEFAULT_NAME`; a name starting with :data:`TEMP_PREFIX` (in any
    case) gets a ``_`` in front; a name over 255 bytes of UTF-8 is shortened in its stem, keeping a
    short extension. Ordinary dotfiles stay as they are. Idempotent.
    """
    # Strip first: tabs and newlines at the ends are white space to drop, not characters to keep as "_".
    name = _replace_unsafe_chars(name.strip())
    if name in ("", ".", ".."):
        return DEFAULT_NAME
    # Case-insensitive, because on macOS and Windows ".ASYNCDL-x" is the same file as ".asyncdl-x".
    if name.lower().startswith(TEMP_PREFIX):
        name = "_" + name
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        stem, ext = split_extension(name)
        ext_bytes = len(ext.encode("utf-8"))
        if ext and ext_bytes <= _MAX_KEPT_EXT_BYTES:
            name = _truncate_utf8(stem, MAX_NAME_BYTES - ext_bytes) + ext
        else:
            name = _truncate_utf8(name, MAX_NAME_BYTES)
        # Cutting may leave white space at the end, or (for a name of dots and blanks) only dots.
        name = name.rstrip()
        if name in ("", ".", ".."):
            return DEFAULT_NAME
    return name


# The path of an http(s) URL, as urlsplit finds it, in one match: the netloc ends at the first of
# "/?#", the path at the first of "?#". URLs with TAB, CR or LF (which urlsplit removes first) or
# brackets (IPv6 literals, which urlsplit checks) go the long way.
_PLAIN_URL_PATH = re.compile(r"[hH][tT][tT][pP][sS]?://[^/?#\[\]\t\r\n]*(/[^?#\t\r\n]*)?(?:[?#]|\Z)")


def name_from_url(url: str) -> str:
    """The sanitised, percent-decoded last segment of the URL's path; :data:`DEFAULT_NAME` if none.

    Query and fragment are ignored. A segment that decodes to ``/`` or ``..`` (``%2F``, ``%2e%2e``)
    still gives one safe component.
    """
    match = _PLAIN_URL_PATH.match(url)
    if match is not None:
        path = match.group(1) or ""
    else:
        try:
            path = urlsplit(url).path
        except ValueError:
            # An unparsable URL (a bad IPv6 literal) fails elsewhere; the name just must not crash.
            return DEFAULT_NAME
    if not path or path.endswith("/"):
        return DEFAULT_NAME
    segment = path.rpartition("/")[2]
    if "%" in segment:
        segment = unquote(segment, encoding="utf-8", errors="replace")
    return sanitize_name(segment)


# A plain URL (see is_plain_url) and the last segment of its path, in one match: either a segment that
# sanitize_name keeps as it is (printable ASCII without a separator, "%" or a leading dot, at most
# 255 characters) or any other. A plain URL has no white space, so its path ends at the first "?#".
_KEPT_SEGMENT_FIRST = r"[\x21\x22\x24\x26-\x2d\x30-\x3e\x40-\x5b\x5d-\x7e]"
_KEPT_SEGMENT_REST = r"[\x21\x22\x24\x26-\x2e\x30-\x3e\x40-\x5b\x5d-\x7e]{0,254}"
_PLAIN_URL_NAME = re.compile(
    PLAIN_URL_START
    + rf"(?:/(?:[^?#\s]*/)?(?:({_KEPT_SEGMENT_FIRST}{_KEPT_SEGMENT_REST})|([^/?#\s]*)))?(?:[?#]\S*)?\Z"
)


def plain_url_name(url: str) -> str | None:
    """``name_from_url(url)`` when ``is_plain_url(url)``, else None: both in one regex match."""
    match = _PLAIN_URL_NAME.match(url)
    if match is None:
        return None
    kept, segment = match.groups()
    if kept is not None:
        return kept
    if not segment:
        return DEFAULT_NAME
    if "%" in segment:
        segment = unquote(segment, encoding="utf-8", errors="replace")
    return sanitize_name(segment)


def _read_quoted(value: str, start: int) -> tuple[str, int]:
    """The quoted-string starting at ``value[start] == '"'``: (unescaped text, index after it)."""
    out: list[str] = []
    i = start + 1
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            out.append(value[i + 1])
            i += 2
            continue
        if ch == '"':
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    # Unterminated: be lenient and take the rest, as browsers do.
    return "".join(out), i


def _parse_parameters(value: str) -> list[tuple[str, str]]:
    """``name=value`` pairs of a header like Content-Disposition (names lower-cased, in order).

    Bare tokens (the disposition type) are skipped; values may be tokens or quoted strings, and a
    quoted string may contain ``;``.
    """
    params: list[tuple[str, str]] = []
    i, n = 0, len(value)
    while i < n:
        if value[i] in "; \t":
            i += 1
            continue
        j = i
        while j < n and value[j] not in "=;":
            j += 1
        if j >= n or value[j] == ";":
            i = j  # a bare token such as "attachment"
            continue
        key = value[i:j].strip().lower()
        i = j + 1
        while i < n and value[i] in " \t":
            i += 1
        if i < n and value[i] == '"':
            text, i = _read_quoted(value, i)
            # Skip anything between the closing quote and the next parameter.
            while i < n and value[i] != ";":
                i += 1
        else:
            j = value.find(";", i)
            j = n if j < 0 else j
            text = value[i:j].strip()
            i = j
        params.append((key, text))
    return params


def _decode_ext_value(text: str) -> str | None:
    """An RFC 8187 ``charset'lang'pct-encoded`` value decoded, or None when malformed."""
    charset, sep1, rest = text.partition("'")
    _lang, sep2, encoded = rest.partition("'")
    if not (sep1 and sep2):
        return None
    codec = _EXT_VALUE_CHARSETS.get(charset.strip().lower())
    if codec is None:
        return None
    return unquote_to_bytes(encoded).decode(codec, errors="replace")


def name_from_content_disposition(value: str | None) -> str | None:
    """The sanitised base name a Content-Disposition header value suggests, or None.

    ``filename*`` (RFC 6266 / 8187, utf-8 or iso-8859-1) wins over ``filename``; any directory part
    (``/`` or ``\\``) is dropped. None when there is no header or no usable file name in it.
    """
    if not value:
        return None
    params = _parse_parameters(value)
    candidates: list[str] = []
    for key, text in params:
        if key == "filename*":
            decoded = _decode_ext_value(text)
            if decoded is not None:
                candidates.append(decoded)
                break
    candidates.extend(text for key, text in params if key == "filename")
    for candidate in candidates:
        base = candidate.replace("\\", "/").rpartition("/")[2]
        if base.strip() not in ("", ".", ".."):
            return sanitize_name(base)
    return None


def safe_subdir(dest: Path, subdir: str | None) -> Path:
    """``dest`` joined with the ``dir=`` option, never escaping ``dest``.

    Both ``/`` and ``\\`` separate components; empty, ``.`` and ``..`` components are dropped (so an
    absolute path becomes relative) and each remaining one is sanitised. Pure path arithmetic.
    """
    if not subdir:
        return dest
    result = dest
    for component in subdir.replace("\\", "/").split("/"):
        if component.strip() in ("", ".", ".."):
            continue
        result = result / sanitize_name(component)
    return result


def temp_name(name: str, key: str) -> str:
    """The hidden temporary file name for target ``name``: ``.asyncdl-{stem}-{hash}.part``.

    ``stem`` is ``name`` cut to 80 characters (and 160 bytes, so the whole stays under the 255-byte
    limit); ``hash`` is the first 12 hex digits of sha256(``key``). The caller's key (URL plus target
    name) makes the name stable across runs, which is what lets a later run find and resume it.
    """
    stem = _truncate_utf8(_replace_unsafe_chars(name[:_TEMP_STEM_MAX_CHARS]), _TEMP_STEM_MAX_BYTES)
    digest = hashlib.sha256(key.encode("utf-8", errors="surrogatepass")).hexdigest()
    return f"{TEMP_PREFIX}-{stem}-{digest[:_TEMP_HASH_CHARS]}.part"


def _with_suffix(name: str, number: int) -> str:
    """``stem.N.ext``, cut in the stem if needed so that it stays within the byte limit."""
    stem, ext = split_extension(name)
    if len(ext.encode("utf-8")) > _MAX_KEPT_EXT_BYTES:
        stem, ext = name, ""
    tail = f".{number}{ext}"
    return _truncate_utf8(stem, MAX_NAME_BYTES - len(tail.encode("utf-8"))) + tail


class _KeySet:
    """A set of 64-bit keys in one array of slots (open addressing, linear probing, at most half full).

    8 to 16 bytes per key instead of about 75 in a set of bytes objects: what keeps a run of
    millions of names small. Key 0 marks an empty slot, so keys are made non-zero by the caller.
    """

    def __init__(self) -> None:
        self._slots = array("Q", bytes(8 * 1024))
        self._mask = 1023
        self._count = 0
        self._limit = 512  # at most half full

    def add(self, key: int) -> bool:
        """Add ``key``; False when it was there already."""
        slots, mask = self._slots, self._mask
        index = key & mask
        found = slots[index]
        while found:
            if found == key:
                return False
            index = (index + 1) & mask
            found = slots[index]
        slots[index] = key
        self._count += 1
        if self._count > self._limit:
            self._grow()
        return True

    def __contains__(self, key: int) -> bool:
        slots, mask = self._slots, self._mask
        index = key & mask
        while True:
            found = slots[index]
            if found == key:
                return True
            if found == 0:
                return False
            index = (index + 1) & mask

    def __len__(self) -> int:
        return self._count

    def _grow(self) -> None:
        old = self._slots
        slots = self._slots = array("Q", bytes(16 * len(old)))
        mask = self._mask = len(slots) - 1
        self._limit = len(slots) // 2
        # The keys are distinct: each goes into the first free slot from its place, no comparing.
        for key in filter(None, old):
            index = key & mask
            while slots[index]:
                index = (index + 1) & mask
            slots[index] = key


class NameRegistry:
    """Per-run collision avoidance: two downloads never get the same (directory, name).

    The first claim of a pair gets ``name``; later ones get ``stem.1.ext``, ``stem.2.ext``, ...,
    skipping any name already claimed (so a suffixed name never collides with a later literal
    ``stem.1.ext`` either). Deterministic for a given order of claims; no disk access.

    Memory: a run may claim millions of names, so only a 64-bit hash of each claimed path is kept,
    in one array of slots (8 to 16 bytes a name: 17 MiB for a million, against some 75 MiB in a set of
    bytes objects; a claim costs some 0.3 µs more: about 1.4 µs in all), plus a next-suffix counter
    for names that actually collided. A hash collision (about 1 in 10^7 for ten million names) can
    only cost a needless suffix, never an overwrite.
    """

    def __init__(self) -> None:
        self._claimed = _KeySet()
        self._next_suffix: dict[int, int] = {}
        # The directory of the last claim and its hash state: a run claims most names in one directory.
        self._directory: Path | None = None
        self._hashed_directory = _blake2b(digest_size=8)

    def _key(self, directory: Path, name: str) -> int:
        """The 64-bit key of (directory, name): blake2b of ``directory NUL name`` in UTF-8, never 0."""
        if directory is not self._directory:
            data = f"{os.fspath(directory)}\0".encode("utf-8", errors="surrogatepass")
            self._hashed_directory = _blake2b(data, digest_size=8)
            self._directory = directory
        hasher = self._hashed_directory.copy()
        hasher.update(name.encode("utf-8", errors="surrogatepass"))
        return int.from_bytes(hasher.digest(), "little") or 1

    def claim(self, directory: Path, name: str) -> str:
        """Claim ``name`` in ``directory``; returns the name to use (``name`` or a suffixed one)."""
        key = self._key(directory, name)
        if self._claimed.add(key):
            return name
        number = self._next_suffix.get(key, 1)
        while True:
            candidate = _with_suffix(name, number)
            number += 1
            candidate_key = self._key(directory, candidate)
            if self._claimed.add(candidate_key):
                break
        self._next_suffix[key] = number
        return candidate
