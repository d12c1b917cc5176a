"""Range planning for segmented downloads (pure)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncdl._segments import PieceMap, plan_pieces


@given(total=st.integers(0, 10**10), piece=st.integers(1, 10**9))
def test_pieces_cover_the_file_exactly_once(total: int, piece: int) -> None:
    if total // piece > 20_000:
        return  # keep examples small
    ranges = plan_pieces(total, piece)
    assert sum(end - start for start, end in ranges) == total
    assert all(0 < end - start <= piece for start, end in ranges)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    if ranges:
        assert ranges[0][0] == 0 and ranges[-1][1] == total


def test_plan_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        plan_pieces(10, 0)


def test_piece_map_round_trips_through_metadata() -> None:
    pieces = PieceMap(10 * 1024 + 1, 1024)
    assert len(pieces.pending()) == 11
    pieces.mark_done(0)
    pieces.mark_done(10)
    assert pieces.bytes_done() == 1025
    again = PieceMap.from_json(pieces.total, pieces.to_json())
    assert again is not None
    assert again.done == {0, 10} and again.pending() == list(range(1, 10))
    assert not again.is_complete()
    assert PieceMap.from_json(100, {"piece_size": "x"}) is None
    assert PieceMap.from_json(100, None) is None
