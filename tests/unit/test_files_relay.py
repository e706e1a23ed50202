"""A relay's decisions (common/filerelay.py): serve what it has, fetch the rest upstream
once per chunk with merged waiters, bound what is pending, expire it, check what comes
back, and drop and count what nobody asked for."""

from __future__ import annotations

import os

from tazcom.common import filewire
from tazcom.common.download import WANT_TIMEOUT, WINDOW
from tazcom.common.filerelay import (
    NEIGHBOUR_PENDING,
    RELAY_PENDING,
    Dropped,
    Relay,
    SendChunk,
    SendNone,
    SendWant,
    Serve,
    Store,
)
from tazcom.common.filetree import FileRef, build, chunk_of
from tazcom.common.filewire import Chunk, NoneMsg, Want

C = 8
ORIGIN, UP, N1, N2 = b"O" * 32, b"U" * 32, b"1" * 32, b"2" * 32
DATA = os.urandom(100 * C)
TREE = build(DATA, C)
FID = TREE.file_id
FILE = FileRef(FID, len(DATA), C)


def chunk(i: int, data: bytes | None = None) -> Chunk:
    return Chunk(FID, i, chunk_of(DATA, i, C) if data is None else data, tuple(TREE.proof(i)))


def want(r: Relay, n: bytes, indices: tuple[int, ...], now: float = 0.0, *,
         has: frozenset[int] = frozenset(), upstream: bytes | None = UP) -> list[object]:
    return list(r.on_want(n, Want(FID, ORIGIN, 0, indices), now, file=FILE,
                          has=has.__contains__, upstream=upstream))


def test_serves_what_it_has_and_fetches_the_rest_once() -> None:
    r = Relay()
    out = want(r, N1, (0, 1, 2), has=frozenset({1}))
    assert out == [Serve(N1, FID, (1,)), SendWant(UP, Want(FID, ORIGIN, 0, (0, 2)))]
    # a second neighbour wanting the same chunks is merged: no new upstream want
    assert want(r, N2, (0, 2, 3)) == [SendWant(UP, Want(FID, ORIGIN, 0, (3,)))]
    assert want(r, N1, (0,)) == []  # asked again by the same neighbour: still one waiter
    out = r.on_chunk(UP, chunk(0), 1.0)
    assert out == [Store(chunk(0), TREE.leaf(0), TREE.size), SendChunk(N1, chunk(0)),
                   SendChunk(N2, chunk(0))]
    assert r.on_chunk(UP, chunk(0), 1.0) == [Dropped(UP, FID, 0, "unwanted")]
    assert r.unsolicited[UP] == 1


def test_no_route_unknown_file_or_past_the_end_is_none() -> None:
    r = Relay()
    assert want(r, N1, (0,), upstream=None) == [SendNone(N1, NoneMsg(FID, (0,)))]
    assert want(r, UP, (0,)) == [SendNone(UP, NoneMsg(FID, (0,)))]  # never ask it back
    want(r, N1, (7,))
    # a route loop: UP asks us for a chunk we are waiting for from UP
    assert want(r, UP, (7,), upstream=N2) == [SendNone(UP, NoneMsg(FID, (7,)))]
    assert r.pending[(FID, 7)].waiters == {N1}
    assert want(r, N1, (99, 100)) == [SendWant(UP, Want(FID, ORIGIN, 0, (99,))),
                                      SendNone(N1, NoneMsg(FID, (100,)))]
    other = Want(bytes(32), ORIGIN, 0, (1, 2))
    assert r.on_want(N1, other, 0.0, file=None, has=lambda i: True, upstream=UP) == [
        SendNone(N1, NoneMsg(bytes(32), (1, 2)))]
    assert r.on_want(N1, other, 0.0, file=FILE, has=lambda i: True, upstream=UP) == [
        SendNone(N1, NoneMsg(bytes(32), (1, 2)))]  # a FileRef of another file


def test_pending_is_bounded_in_all_and_per_neighbour() -> None:
    big = os.urandom(400 * C)
    tree = build(big, C)
    ref = FileRef(tree.file_id, len(big), C)
    r = Relay()
    nones = 0
    for k in range(0, 320, 64):
        n = bytes([k // 64 + 1]) * 32
        for out in r.on_want(n, Want(tree.file_id, ORIGIN, 0, tuple(range(k, k + 64))), 0.0,
                             file=ref, has=lambda i: False, upstream=UP):
            if isinstance(out, SendNone):
                nones += len(out.msg.indices)
    assert len(r.pending) == RELAY_PENDING and nones == 320 - RELAY_PENDING
    r2 = Relay()
    asked = 0
    for k in range(0, 192, 64):
        for out in r2.on_want(N1, Want(tree.file_id, ORIGIN, 0, tuple(range(k, k + 64))), 0.0,
                              file=ref, has=lambda i: False, upstream=UP):
            if isinstance(out, SendWant):
                asked += len(out.msg.indices)
    assert asked == NEIGHBOUR_PENDING == 4 * WINDOW
    # another neighbour joins a chunk N1 waits for only within its own bound: N2 is free
    assert r2.on_want(N2, Want(tree.file_id, ORIGIN, 0, (0,)), 0.0, file=ref,
                      has=lambda i: False, upstream=UP) == []
    assert r2.waiting[N2] == 1


def test_pending_expires_with_none_to_every_waiter_in_messages_of_at_most_64() -> None:
    big = os.urandom(200 * C)
    tree = build(big, C)
    ref = FileRef(tree.file_id, len(big), C)
    r = Relay()
    for k in (0, 64):
        r.on_want(N1, Want(tree.file_id, ORIGIN, 0, tuple(range(k, k + 64))), 0.0, file=ref,
                  has=lambda i: False, upstream=UP)
    r.on_want(N2, Want(tree.file_id, ORIGIN, 0, (5,)), 1.0, file=ref, has=lambda i: False,
              upstream=UP)
    assert r.timer(WANT_TIMEOUT - 0.01) == []
    assert r.next_deadline() == WANT_TIMEOUT
    out = r.timer(WANT_TIMEOUT)
    assert all(isinstance(a, SendNone) for a in out)
    got: dict[bytes, list[int]] = {}
    for a in out:
        assert isinstance(a, SendNone)
        assert filewire.decode(filewire.encode(a.msg)) == a.msg  # each a valid message
        got.setdefault(a.neighbour, []).extend(a.msg.indices)
    assert sorted(got[N1]) == list(range(128)) and got[N2] == [5]
    assert r.pending == {} and not r.waiting
    assert r.next_deadline() is None


def test_a_bad_chunk_from_upstream_is_dropped_counted_and_waiters_told_none() -> None:
    r = Relay()
    want(r, N1, (3,))
    want(r, N2, (3,))
    c = chunk(3)
    bad = Chunk(FID, 3, c.data[:-1] + b"!", c.proof)
    assert r.on_chunk(UP, bad, 1.0) == [Dropped(UP, FID, 3, "bad_proof"),
                                        SendNone(N1, NoneMsg(FID, (3,))),
                                        SendNone(N2, NoneMsg(FID, (3,)))]
    assert r.bad[UP] == 1 and r.pending == {}


def test_chunks_from_others_than_the_upstream_asked_are_unwanted() -> None:
    r = Relay()
    want(r, N1, (3,))
    assert r.on_chunk(N2, chunk(3), 1.0) == [Dropped(N2, FID, 3, "unwanted")]
    assert r.on_chunk(UP, chunk(4), 1.0) == [Dropped(UP, FID, 4, "unwanted")]
    assert r.unsolicited == {N2: 1, UP: 1}
    assert r.expects(UP, FID, 3) and not r.expects(N2, FID, 3)
    assert r.on_chunk(UP, chunk(3), 1.0)[1] == SendChunk(N1, chunk(3))


def test_a_leaf_from_the_nodes_own_download_skips_the_second_check() -> None:
    r = Relay()
    want(r, N1, (3,))
    assert r.on_chunk(UP, chunk(3), 1.0, leaf=b"L" * 32) == [
        Store(chunk(3), b"L" * 32, TREE.size), SendChunk(N1, chunk(3))]


def test_none_from_upstream_is_passed_to_waiters() -> None:
    r = Relay()
    want(r, N1, (1, 2))
    assert r.on_none(N2, NoneMsg(FID, (1,)), 1.0) == []  # not whom we asked
    assert r.on_none(UP, NoneMsg(FID, (1, 9)), 1.0) == [SendNone(N1, NoneMsg(FID, (1,)))]
    assert list(r.pending) == [(FID, 2)]


def test_a_lost_link_releases_what_it_waited_for_and_what_we_asked_of_it() -> None:
    r = Relay()
    want(r, N1, (1, 2))
    want(r, N2, (2,))
    assert r.drop_neighbour(N1) == []
    assert r.waiting == {N2: 1}
    # the chunk N1 alone wanted still comes and is cached, sent to nobody
    assert r.on_chunk(UP, chunk(1), 1.0) == [Store(chunk(1), TREE.leaf(1), TREE.size)]
    assert r.drop_neighbour(UP) == [SendNone(N2, NoneMsg(FID, (2,)))]
    assert r.pending == {} and not r.waiting
