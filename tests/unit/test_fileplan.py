"""The download decisions of common/fileplan.py."""

from __future__ import annotations

from tazcom.common import fileplan
from tazcom.common.fileplan import AUTO_BUDGET, AUTO_PER_ORIGIN, BAD_LIMIT, STALL

A, B, C, D = (bytes([i]) * 32 for i in range(1, 5))


def test_sources_go_toward_the_origin_then_the_bringer_then_the_rest_once_each() -> None:
    assert fileplan.sources(C, B, {A, B, C, D}) == [C, B, A, D]
    assert fileplan.sources(None, None, {B, A}) == [A, B]
    assert fileplan.sources(B, B, {A, B}) == [B, A]
    assert fileplan.sources(D, C, {A}) == [A], "only current links are asked"
    assert fileplan.sources(None, None, ()) == []


def test_unasked_files_are_budgeted_per_origin_and_in_all() -> None:
    mib = 1 << 20
    assert fileplan.may_auto_accept([], A, 25 * mib, 25 * mib)
    two = [(A, mib)] * AUTO_PER_ORIGIN
    assert not fileplan.may_auto_accept(two, A, mib, 25 * mib)
    assert fileplan.may_auto_accept(two, B, mib, 25 * mib)
    full = [(B, 25 * mib), (C, 25 * mib), (D, 25 * mib)]
    assert fileplan.may_auto_accept(full, A, 25 * mib, 25 * mib)
    assert not fileplan.may_auto_accept(full, A, 25 * mib + 1, 25 * mib)
    assert AUTO_BUDGET * 25 * mib == 4 * 25 * mib


def test_space_needed_is_what_lands_on_disk() -> None:
    assert fileplan.space_needed(100, 84, dm=True) == 84
    assert fileplan.space_needed(100, 100, dm=False) == 100


def test_a_download_is_given_up_for_lies_or_silence_only() -> None:
    assert fileplan.gives_up(BAD_LIMIT, 0, 0.0) == "bad_manifest"
    assert fileplan.gives_up(BAD_LIMIT, 1, 0.0) is None, "one good chunk: the id is true"
    assert fileplan.gives_up(BAD_LIMIT - 1, 0, 0.0) is None
    assert fileplan.gives_up(0, 5, STALL + 1) == "stalled"
    assert fileplan.gives_up(0, 5, STALL) is None
