"""`asyncdl --help`: options in groups, each with its default, the same set as the README's tables and
the options tables of the contract (CONTRACT.md)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from asyncdl._cli import download_parser

ROOT = Path(__file__).resolve().parent.parent
GROUPS = ["downloading", "network", "output", "many hosts", "scale-out"]
# argparse's own options: not download options, in no table.
META_OPTIONS = {"-h", "--help", "--version"}
# Options that CONTRACT.md's tables do not list (they are in the README's tables all the same).
NOT_IN_CONTRACT = {
    "--processes",  # worker processes on this machine; the contract documents only the Ray scale-out
}


def _contract() -> Path | None:
    """CONTRACT.md: $ASYNCDL_CONTRACT, else beside the checkout (../shared/CONTRACT.md)."""
    named = os.environ.get("ASYNCDL_CONTRACT")
    candidates = [Path(named)] if named else [ROOT.parent / "shared" / "CONTRACT.md"]
    return next((path for path in candidates if path.is_file()), None)


def _help_text() -> str:
    return download_parser().format_help()  # what --help prints


def _help_groups(text: str) -> dict[str, dict[str, str]]:
    """{group title: {option: its help entry}}, read from the help text as a user reads it."""
    groups: dict[str, dict[str, str]] = {}
    entries: dict[str, str] | None = None
    current: list[str] = []
    for line in text.splitlines():
        if re.fullmatch(r"[a-z][\w -]*:", line):
            entries = groups.setdefault(line[:-1], {})
            current = []
        elif entries is not None and re.match(r"  -", line):
            invocation = re.split(r"\s{2,}", line.strip(), maxsplit=1)
            current = [part.split()[0] for part in invocation[0].split(", ")]
            for option in current:
                entries[option] = line
        elif entries is not None and line.startswith("   ") and current:
            for option in current:
                entries[option] += " " + line.strip()
        elif not line.strip():
            current = []
    return groups


def _table_options(markdown: str) -> dict[str, str | None]:
    """{option: the bold heading above its table (None if none)} for every row `| `-...` | ... |`."""
    found: dict[str, str | None] = {}
    heading: str | None = None
    for line in markdown.splitlines():
        if match := re.fullmatch(r"\*\*(.+)\*\*", line.strip()):
            heading = match.group(1)
        elif line.startswith("#"):
            heading = None
        elif match := re.match(r"\| `(-[^`]*)` \|", line):
            for part in match.group(1).split(", "):
                found[part.split()[0]] = heading
    return found


def test_help_lists_the_options_in_groups_each_with_its_default() -> None:
    groups = _help_groups(_help_text())
    shown = [title for title in groups if title in GROUPS]
    # Every group that has options, in this order; no option outside the groups but -h and --version.
    assert shown == [title for title in GROUPS if groups.get(title)], groups.keys()
    assert set(groups.get("options", {})) == {"-h", "--help", "--version"}
    assert {"-d", "--jobs", "--retries", "--overwrite"} <= set(groups["downloading"])
    assert {"--limit-rate", "--header"} <= set(groups["network"])
    assert {"-q", "--report"} <= set(groups["output"])
    assert {"--processes", "--ray", "--workers", "--shard-size"} <= set(groups["scale-out"])
    for title in GROUPS:
        for option, entry in groups.get(title, {}).items():
            assert "default" in entry, f"{option} does not show its default: {entry!r}"
    assert "(default: 16)" in groups["downloading"]["--jobs"]
    assert "(default: off)" in groups["downloading"]["--overwrite"]


def _help_options() -> dict[str, str]:
    """{option: group title} for every option --help shows, but argparse's own."""
    return {
        option: title
        for title, entries in _help_groups(_help_text()).items()
        for option in entries
        if option not in META_OPTIONS
    }


def test_the_readme_tables_hold_the_same_options_in_the_same_groups() -> None:
    in_help = _help_options()
    readme = _table_options((ROOT / "README.md").read_text(encoding="utf-8"))
    # Tables of the command line are under bold group headings; the exit status table has no options.
    in_readme = {option: (heading or "").lower() for option, heading in readme.items()}
    assert in_readme == in_help


def test_every_option_in_help_is_in_the_contracts_tables() -> None:
    contract = _contract()
    if contract is None:
        pytest.skip("CONTRACT.md is not beside this checkout (set ASYNCDL_CONTRACT=PATH)")
    documented = set(_table_options(contract.read_text(encoding="utf-8")))
    in_help = set(_help_options())
    assert in_help - documented == NOT_IN_CONTRACT
    # An exception stays an exception only while the contract does not have it.
    assert not NOT_IN_CONTRACT & documented
