"""A receiver's download (common/download.py): the window, the choice of source, re-asking
after silence or ``none``, refusing unwanted, duplicate and bad chunks, progress, and
resuming from a persisted bitmap."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tazcom.common.download import (
    BAD_SKIP,
    LATE,
    SCAN,
    SKIP,
    WANT_TIMEOUT,
    WINDOW,
    Ask,
    Download,
)
from tazcom.common.errors import LocalProtocolError
from tazcom.common.filetree import build, chunk_of

C = 8
A, B, X = b"A" * 32, b"B" * 32, b"X" * 32


class File:
    def __init__(self, size: int, chunk_size: int = C) -> None:
        self.data = os.urandom(size)
        self.chunk_size = chunk_size
        self.tree = build(self.data, chunk_size)

    def download(self, have: bytes | None = None) -> Download:
        return Download(self.tree.file_id, len(self.data), self.chunk_size, have)

    def chunk(self, i: int) -> tuple[int, bytes, list[bytes]]:
        return i, chunk_of(self.data, i, self.chunk_size), self.tree.proof(i)


def asked(asks: list[Ask]) -> dict[bytes, tuple[int, ...]]:
    return {a.source: a.indices for a in asks}


def test_the_window_bounds_what_is_asked_lowest_first_from_the_preferred_source() -> None:
    f = File(100 * C)
    d = f.download()
    asks = d.wants(0.0, [A, B])
    assert asked(asks) == {A: tuple(range(WINDOW))}
    assert d.outstanding == WINDOW
    assert d.wants(1.0, [A, B]) == []  # full: nothing more until answers
    for i in range(3):
        assert d.on_chunk(*f.chunk(i), A, 1.0).ok
    assert asked(d.wants(1.0, [A, B])) == {A: (WINDOW, WINDOW + 1, WINDOW + 2)}
    assert d.progress == 3 * C and d.verified == 3


def test_silence_moves_a_chunk_to_the_next_source_and_a_late_answer_is_taken() -> None:
    f = File(4 * C)
    d = f.download()
    assert asked(d.wants(0.0, [A, B])) == {A: (0, 1, 2, 3)}
    assert d.on_chunk(*f.chunk(0), A, 1.0).ok
    assert d.wants(WANT_TIMEOUT - 0.1, [A, B]) == []
    assert d.next_deadline() == WANT_TIMEOUT
    assert asked(d.wants(WANT_TIMEOUT, [A, B])) == {B: (1, 2, 3)}
    # A answers late, within LATE of its ask: as good as any chunk
    assert d.on_chunk(*f.chunk(1), A, WANT_TIMEOUT + 1).ok
    assert d.on_chunk(*f.chunk(1), B, WANT_TIMEOUT + 1).reason == "duplicate"
    # after LATE, an answer to the old want is unwanted
    assert d.on_chunk(*f.chunk(2), A, LATE + 0.1).reason == "unwanted"
    assert d.on_chunk(*f.chunk(2), B, LATE + 0.1).ok


def test_none_moves_a_chunk_to_the_next_source_and_back_after_the_skip() -> None:
    f = File(3 * C)
    d = f.download()
    d.wants(0.0, [A, B])
    assert d.on_none(A, [0, 1, 7], 0.5) == [0, 1]
    assert asked(d.wants(0.5, [A, B])) == {B: (0, 1)}
    assert d.on_none(B, [0], 0.6) == [0]
    assert d.wants(0.6, [A, B]) == []  # both skipped for chunk 0
    assert d.on_chunk(*f.chunk(0), A, 0.7).reason == "unwanted"  # A said none: not asked
    assert d.on_none(X, [1, 2], 1.0) == []  # X was not asked: no effect
    assert d.outstanding == 2
    assert d.on_chunk(*f.chunk(1), B, 1.0).ok and d.on_chunk(*f.chunk(2), A, 1.0).ok
    assert asked(d.wants(0.5 + SKIP, [A, B])) == {A: (0,)}


def test_a_bad_chunk_is_refused_and_its_source_skipped_for_that_chunk() -> None:
    f = File(2 * C + 3)
    d = f.download()
    d.wants(0.0, [A, B])
    assert d.on_chunk(*f.chunk(0), A, 0.5).ok and d.on_chunk(*f.chunk(1), A, 0.5).ok
    i, data, proof = f.chunk(2)
    assert d.on_chunk(i, data[:-1] + b"?", proof, A, 1.0).reason == "bad_proof"
    assert d.on_chunk(i, data, proof, A, 1.0).reason == "unwanted"  # its want is gone
    assert asked(d.wants(1.0, [A, B])) == {B: (2,)}
    assert d.on_chunk(i, data, proof[:-1], B, 1.0).reason == "bad_proof"
    assert d.wants(1.0 + SKIP, [A, B]) == []  # both lied about chunk 2: BAD_SKIP
    assert asked(d.wants(1.0 + BAD_SKIP, [A, B])) == {A: (2,)}
    assert d.on_chunk(*f.chunk(2), A, 70.0).ok
    assert d.done and d.progress == 2 * C + 3


def test_unwanted_duplicate_and_out_of_range_chunks() -> None:
    f = File(5 * C)
    d = f.download()
    assert d.on_chunk(*f.chunk(0), A, 0.0).reason == "unwanted"  # nothing asked yet
    d.wants(0.0, [A])
    assert d.on_chunk(*f.chunk(0), B, 0.0).reason == "unwanted"  # asked of A, not B
    assert d.on_chunk(*f.chunk(0), A, 0.0).ok
    assert d.on_chunk(*f.chunk(0), A, 0.0).reason == "duplicate"
    assert d.on_chunk(5, b"", [], A, 0.0).reason == "unwanted"
    assert d.on_chunk(-1, b"", [], A, 0.0).reason == "unwanted"
    assert d.verified == 1


def test_a_chunk_from_another_file_is_refused() -> None:
    f, g = File(4 * C), File(4 * C)
    d = f.download()
    d.wants(0.0, [A])
    assert d.on_chunk(*g.chunk(1), A, 0.0).reason == "bad_proof"


@pytest.mark.parametrize("size", [0, 1, C, C + 1, 7 * C + 5, 16 * C])
def test_a_whole_file_in_any_order_gives_exact_progress_and_done(size: int) -> None:
    f = File(size)
    d = f.download()
    out = bytearray(size)
    asks = d.wants(0.0, [A])
    order = sorted(asks[0].indices, key=lambda i: (i * 7) % 11)
    while not d.done:
        for i in order:
            v = d.on_chunk(*f.chunk(i), A, 0.0)
            assert v.ok and v.offset == i * C and v.leaf == f.tree.leaf(i)
            out[v.offset:v.offset + len(f.chunk(i)[1])] = f.chunk(i)[1]
        order = [i for a in d.wants(0.0, [A]) for i in a.indices]
    assert bytes(out) == f.data and d.progress == size
    assert d.have == b"\xff" * (d.count // 8) + (bytes([(1 << d.count % 8) - 1])
                                                 if d.count % 8 else b"")
    assert d.wants(1.0, [A]) == [] and d.outstanding == 0


def test_resume_asks_only_for_what_is_missing() -> None:
    f = File(20 * C + 1)
    d = f.download()
    d.wants(0.0, [A])
    for i in (0, 1, 2, 5, 20):
        assert d.on_chunk(*f.chunk(i), A, 0.0).ok
    saved = d.have
    again = f.download(saved)  # a restart: new object, same bitmap
    assert again.verified == 5 and again.progress == 4 * C + 1
    assert asked(again.wants(0.0, [B])) == {B: (3, 4, *range(6, 20))}
    for i in (3, 4, *range(6, 20)):
        assert again.on_chunk(*f.chunk(i), B, 0.0).ok
    assert again.done and again.progress == len(f.data)


def test_a_bitmap_that_does_not_fit_the_file_is_refused() -> None:
    f = File(10 * C)  # 10 chunks: 2 bytes, 6 bits unused
    with pytest.raises(LocalProtocolError):
        f.download(b"\x00")
    with pytest.raises(LocalProtocolError):
        f.download(b"\x00\x00\x00")
    with pytest.raises(LocalProtocolError):
        f.download(b"\x00\x04")  # bit 10: past the last chunk
    assert f.download(b"\xff\x03").done


def test_no_source_or_all_skipped_asks_nothing_and_says_when_to_look_again() -> None:
    f = File(3 * C)
    d = f.download()
    assert d.wants(0.0, []) == [] and d.next_deadline() is None
    d.wants(0.0, [A])
    d.on_none(A, [0, 1, 2], 1.0)
    assert d.wants(1.0, [A]) == []
    assert d.next_deadline() == 1.0 + SKIP


def test_a_lost_link_frees_its_wants_at_once() -> None:
    f = File(3 * C)
    d = f.download()
    d.wants(0.0, [A, B])
    assert d.drop_source(A) == [0, 1, 2]
    assert asked(d.wants(0.1, [B])) == {B: (0, 1, 2)}


def test_a_stalled_download_looks_at_a_bounded_number_of_chunks() -> None:
    f = File(1000, chunk_size=1)
    d = f.download()
    d.wants(0.0, [A])
    d.on_none(A, range(WINDOW), 0.0)
    asks = d.wants(0.0, [A])
    assert asked(asks) == {A: tuple(range(WINDOW, 2 * WINDOW))}
    for k in range(2, 10):
        d.on_none(A, asks[0].indices, 0.0)
        asks = d.wants(0.0, [A])
        if k * WINDOW >= SCAN:
            assert asks == []  # SCAN missing chunks looked at: the rest waits
            break
        assert asked(asks) == {A: tuple(range(k * WINDOW, (k + 1) * WINDOW))}


def test_skip_and_late_tables_are_forgotten() -> None:
    f = File(3 * C)
    d = f.download()
    d.wants(0.0, [A, B])
    d.timer(WANT_TIMEOUT)
    d.wants(WANT_TIMEOUT, [A, B])
    d.on_none(B, [0, 1, 2], WANT_TIMEOUT)
    d.timer(100.0)
    assert d._skip == {} and d._late == {}


@settings(max_examples=100, deadline=None, derandomize=True)
@given(size=st.integers(0, 120), chunk_size=st.integers(1, 16),
       events=st.lists(st.tuples(st.sampled_from(["good", "bad", "none", "tick", "restart"]),
                                 st.integers(0, 200), st.sampled_from([A, B, X])),
                       max_size=120))
def test_any_order_of_answers_keeps_the_state_exact(
        size: int, chunk_size: int, events: list[tuple[str, int, bytes]]) -> None:
    """Chunks in any order, duplicated, unasked, bad, ``none``s, timeouts and restarts:
    what is taken is exactly the original chunks, ``have`` and ``progress`` say exactly
    that, and the window holds."""
    f = File(size, chunk_size)
    d = f.download()
    taken: set[int] = set()
    now = 0.0
    for kind, n, source in events:
        d.wants(now, [A, B])
        assert d.outstanding <= WINDOW
        i = n % d.count
        if kind == "good":
            v = d.on_chunk(*f.chunk(i), source, now)
            if v.ok:
                assert i not in taken
                taken.add(i)
            else:
                assert v.reason == ("duplicate" if i in taken else "unwanted")
        elif kind == "bad":
            _, data, proof = f.chunk(i)
            assert not d.on_chunk(i, data + b"!", proof, source, now).ok
        elif kind == "none":
            d.on_none(source, [i], now)
        elif kind == "tick":
            now += n / 20
        else:
            d = f.download(d.have)
        assert d.verified == len(taken) and d.done == (len(taken) == d.count)
        assert d.progress == sum(len(f.chunk(k)[1]) for k in taken)
        assert {k for k in range(d.count) if d.has(k)} == taken
