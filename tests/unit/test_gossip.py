"""Relay decisions: seen-set, window, targets, delayed relays, rate limits, distances, catch-up."""

from __future__ import annotations

import os
import random

import pytest

from tazcom.common import catchup, codec, gossip, routing
from tazcom.common.envelope import KIND_DM, KIND_PROFILE, KIND_RECEIPT, KIND_ROOM
from tazcom.common.errors import RemoteProtocolError, SchemaError

A, B, C, D, E = (bytes([i]) * 32 for i in range(1, 6))


def test_seen_set_bounds_by_count_and_age() -> None:
    s = gossip.SeenSet(capacity=3, horizon=10)
    assert s.add(b"1", 0) and not s.add(b"1", 1)
    for i in (b"2", b"3", b"4"):
        s.add(i, 2)
    assert b"1" not in s and len(s) == 3
    assert s.expire(12.5) == 3 and len(s) == 0


def test_window() -> None:
    now = 1_000_000.0
    assert gossip.window(int(now * 1000), now) is None
    assert gossip.window(int(now * 1000) - gossip.MAX_AGE_MS - 1, now) == "too_old"
    assert gossip.window(int(now * 1000) + gossip.MAX_FUTURE_MS + 1, now) == "too_new"


@pytest.mark.parametrize(
    ("kind", "to", "origin", "came_from", "links", "expected"),
    [
        (KIND_ROOM, None, A, B, [B, C, D], [C, D]),         # flood, not back
        (KIND_ROOM, None, A, B, [A, B, C], [C]),            # not to the origin either
        (KIND_ROOM, None, A, None, [B, C], [B, C]),         # our own: everyone
        (KIND_PROFILE, None, A, B, [B], []),                # nowhere else to go
        (KIND_DM, C, A, B, [B, C, D], [C]),                 # recipient is a neighbour
        (KIND_DM, C, A, C, [B, C, D], []),                  # ...and it sent it to us
        (KIND_DM, E, A, B, [B, C, D], [C, D]),              # recipient far: flood
        (KIND_RECEIPT, A, C, B, [A, B], [A]),
    ],
)
def test_relay_targets(kind: int, to: bytes | None, origin: bytes, came_from: bytes | None,
                       links: list[bytes], expected: list[bytes]) -> None:
    assert gossip.relay_targets(kind=kind, to=to, origin=origin, came_from=came_from,
                                links=links) == expected


def test_relay_queue_delays_only_with_choices_and_cancels_on_duplicates() -> None:
    q = gossip.RelayQueue(max_delay=0.01, rng=random.Random(1))
    assert q.schedule(b"one", [B], now=0, distance=1) is None  # one target: at once
    due = q.schedule(b"m", [B, C, D], now=0, distance=2, payload="entry")
    assert due is not None and 0 <= due <= 0.01
    q.heard_from(b"m", C, hops=3)  # C holds it at 3: ours would give it 3 too
    assert q.due(0.02) == [(b"m", sorted([B, D]), "entry")]
    q.schedule(b"x", [B, C], now=0, distance=1)
    q.heard_from(b"x", B, hops=1)
    q.heard_from(b"x", C, hops=0)
    assert len(q) == 0 and q.next_deadline() is None


def test_a_copy_heard_from_farther_away_does_not_cancel_our_shorter_one() -> None:
    q = gossip.RelayQueue(max_delay=0.01, rng=random.Random(1))
    q.schedule(b"m", [B, C], now=0, distance=2, payload="at 2")
    q.heard_from(b"m", C, hops=5)  # C got it the long way: ours brings it to 3
    q.schedule(b"m", [D], now=0, distance=1, payload="at 1")  # a shorter path, still waiting
    assert q.due(1) == [(b"m", sorted([B, C, D]), "at 1")]


@pytest.mark.parametrize("limit", [1, 2, 8, 16])
def test_hop_counting_a_copy_crosses_exactly_the_limit(limit: int) -> None:
    """Along a line, each node accepts what its neighbour relays; count the links crossed."""
    hops, crossed = 0, 0  # the origin sends hops 0
    while gossip.accepts(hops, limit):
        crossed += 1
        distance = hops + 1
        if not gossip.relays(distance, limit):
            break
        hops = distance
    assert crossed == limit
    assert gossip.relays(0, limit) and not gossip.accepts(limit, limit)
    assert gossip.shorter_path(5, 3) and not gossip.shorter_path(4, 3)
    assert not gossip.shorter_path(None, 0)


def test_shorter_paths_matter_only_when_the_mesh_is_large_against_the_limit() -> None:
    assert not gossip.reach_matters(3, eccentricity=4, limit=8)  # 3 + 4 + 1 links: all in
    assert gossip.reach_matters(4, eccentricity=4, limit=8)
    q = gossip.RelayQueue(max_delay=0.01, rng=random.Random(1))
    q.schedule(b"m", [B, C], now=0, distance=1, payload="at 1")
    q.heard_from(b"m", C, hops=4, closer_matters=False)  # far, but it reaches all anyway
    assert q.due(1) == [(b"m", [B], "at 1")]


def test_token_buckets() -> None:
    b = gossip.Buckets(rate=10, burst=5, capacity=2)
    assert all(b.take(A, 0) for _ in range(5))
    assert not b.take(A, 0)
    assert b.take(A, 0.11)
    assert b.take(B, 0) and b.take(C, 0)  # evicts A's bucket; bounded memory


def test_distances_need_both_ends() -> None:
    me = b"\x00" * 32
    # me - A - B - C ; C lists D but D does not list C
    links_of = {A: frozenset({me, B}), B: frozenset({A, C}), C: frozenset({B, D}),
                D: frozenset()}
    assert gossip.distances(me, {A}, links_of) == {A: 1, B: 2, C: 3}
    # B's new profile drops C: C is gone, though C still lists B
    links_of[B] = frozenset({A})
    assert gossip.distances(me, {A}, links_of) == {A: 1, B: 2}
    assert gossip.distances(me, set(), links_of) == {}


def test_sync_index_and_set_difference() -> None:
    mine, theirs = catchup.SyncIndex(), catchup.SyncIndex()
    shared = [(os.urandom(16), 1_000 + i * 1_000_000) for i in range(50)]
    for i, ts in shared:
        mine.add(i, ts)
        theirs.add(i, ts)
    assert catchup.differing(mine.summary(), theirs.summary()) == []
    only_mine = os.urandom(16)
    mine.add(only_mine, 5 * catchup.BUCKET_MS + 7, to=B)
    only_theirs = os.urandom(16)
    theirs.add(only_theirs, 9 * catchup.BUCKET_MS)
    diff = catchup.differing(mine.summary(), theirs.summary())
    assert diff == [5, 9]
    assert catchup.lacking(mine, 5, theirs.ids_in(5)) == [only_mine]
    assert catchup.lacking(theirs, 9, mine.ids_in(9)) == [only_theirs]
    assert catchup.lacking(mine, 9, theirs.ids_in(9)) == []
    assert mine.recipient(only_mine) == B
    mine.remove(only_mine)
    mine.add(only_theirs, 9 * catchup.BUCKET_MS)
    assert catchup.differing(mine.summary(), theirs.summary()) == []
    old = [i for i, ts in shared if ts < 3 * catchup.BUCKET_MS]
    dropped = mine.expire(3 * catchup.BUCKET_MS, keep=old[:1])
    assert sorted(dropped) == sorted(old[1:]) and len(mine) == 51 - len(old) + 1


def test_router_messages_round_trip_and_reject_junk() -> None:
    entries = [(0, b"signed", b"s" * 64), (3, b"x" * 100, b"t" * 64)]
    assert routing.decode(routing.encode_envs(entries)) == routing.Envs(entries)
    ids = [os.urandom(16) for _ in range(3)]
    assert routing.decode(routing.encode_custody(ids)) == routing.Custody(ids)
    buckets = [(1, 2, b"d" * 16)]
    assert routing.decode(routing.encode_summary(buckets)) == routing.SummaryMsg(buckets)
    assert routing.decode(routing.encode_ids(7, ids)) == routing.IdsMsg(7, ids)
    pack = codec.pack  # what the encoders refuse to build, packed by hand
    for junk in [b"", b"\xc1", pack([1, []]), pack([0, []]), pack([0, [[17, b"s", b"s" * 64]]]),
                 pack([0, [[0, b"s", b"s" * 63]]]), pack([3, -1, []]),
                 pack([2, [[1, 2, b"short"]]]), b"\x92\x09\x90", pack([1, [b"x" * 15]])]:
        with pytest.raises(RemoteProtocolError):
            routing.decode(junk)
    with pytest.raises(SchemaError):  # an invalid message cannot be built
        routing.encode_envs([(17, b"s", b"s" * 64)])
