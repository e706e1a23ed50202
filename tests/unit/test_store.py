"""The node's database (services/storedb.py), driven directly: no processes."""

from __future__ import annotations

import hashlib
import itertools
import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

import nacl.signing
import pytest

from tazcom.common import envelope, rpc, status
from tazcom.common.errors import RequestFailed
from tazcom.common.keys import DOMAIN_ENVELOPE
from tazcom.common.schema import Record
from tazcom.services.runtime import FatalError
from tazcom.services.storedb import Store, db_failure

ALICE = b"\xaa" * 32
BOB = b"\xbb" * 32
CAROL = b"\xcc" * 32
DAY_MS = 86400 * 1000
NOW = 1_700_000_000.0
NOW_MS = int(NOW * 1000)
_counter = itertools.count(1)


def mid(n: int) -> bytes:
    return hashlib.blake2b(n.to_bytes(8, "big"), digest_size=16).digest()


def mk(**kw) -> rpc.StoredMessage:
    """A stored message with a fresh id; any field can be overridden."""
    n = next(_counter)
    fields = dict(id=mid(n), kind=1, origin=ALICE, seq=n, ts=NOW_MS, signed=b"env%d" % n,
                  sig=bytes(64), text=f"hello {n}")
    fields.update(kw)
    return rpc.StoredMessage(**fields)


def profile_msg(sk: nacl.signing.SigningKey, nick: str, ts: int, *, seq: int = 1,
                hops: int = 1, enc: bytes = b"\x07" * 32) -> rpc.StoredMessage:
    origin = bytes(sk.verify_key)
    signed = envelope.signed_bytes(kind=envelope.KIND_PROFILE, origin=origin, seq=seq, ts=ts,
                                   to=None, body=envelope.profile_body(nick, enc))
    sig = sk.sign(DOMAIN_ENVELOPE + signed).signature
    envelope.verify(envelope.parse(signed, sig))  # a real, valid profile envelope
    return rpc.StoredMessage(id=envelope.message_id(signed), kind=envelope.KIND_PROFILE,
                             origin=origin, seq=seq, ts=ts, signed=signed, sig=sig, hops=hops)


def valid(reply: Record) -> Record:
    """The reply survives the wire: it validates against its own schema."""
    assert type(reply).from_dict(reply.to_dict()) == reply
    return reply


def put(store: Store, *items: rpc.StoredMessage) -> list[rpc.PutOutcome]:
    return list(valid(store.put(rpc.StorePut(items=items))).results)


def rows(path: Path, sql: str = "SELECT * FROM messages", args: tuple = ()) -> list:
    """Read the file through a second connection, as another process would."""
    with sqlite3.connect(path) as db:
        return db.execute(sql, args).fetchall()


def status_of(store: Store, msg_id: bytes) -> tuple[str, str]:
    return rows(store.path, "SELECT status, reason FROM messages WHERE id = ?", (msg_id,))[0]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "home" / "store.sqlite"


@pytest.fixture
def store(path: Path):
    s = Store(path, clock=lambda: NOW)
    yield s
    s.close()


# -- put ----------------------------------------------------------------------------------


def test_put_same_id_twice_keeps_the_first(store: Store) -> None:
    m = mk(text="first")
    assert put(store, m) == [rpc.PutOutcome(id=m.id, new=True)]
    again = rpc.StoredMessage(**{**m.__dict__, "text": "second", "hops": 5})
    assert put(store, again) == [rpc.PutOutcome(id=m.id, new=False)]
    assert rows(store.path, "SELECT text, hops FROM messages") == [("first", 0)]


def test_put_again_as_held_does_not_hold(store: Store) -> None:
    m = mk(kind=2, to=BOB)
    put(store, m)
    put(store, rpc.StoredMessage(**{**m.__dict__, "held": True}))
    assert rows(store.path, "SELECT held FROM messages") == [(0,)]


def test_put_same_client_id_returns_the_original(store: Store) -> None:
    a = mk(own=True, status="queued", client_id=b"c" * 16)
    b = mk(own=True, status="queued", client_id=b"c" * 16)
    assert put(store, a) == [rpc.PutOutcome(id=a.id, new=True)]
    assert put(store, b) == [rpc.PutOutcome(id=a.id, new=False)]
    assert rows(store.path, "SELECT id FROM messages") == [(a.id,)]


def test_put_duplicates_within_a_batch(store: Store) -> None:
    a = mk(own=True, client_id=b"k" * 8)
    same_client = mk(own=True, client_id=b"k" * 8)
    other = mk()
    assert put(store, a, a, same_client, other, other) == [
        rpc.PutOutcome(id=a.id, new=True),
        rpc.PutOutcome(id=a.id, new=False),
        rpc.PutOutcome(id=a.id, new=False),
        rpc.PutOutcome(id=other.id, new=True),
        rpc.PutOutcome(id=other.id, new=False),
    ]
    assert sorted(rows(store.path, "SELECT id FROM messages")) == sorted([(a.id,), (other.id,)])


def test_put_stores_every_field(store: Store) -> None:
    m = mk(kind=2, to=BOB, conv=BOB, hops=3, status="sent", reason="r", own=True, held=True,
           client_id=b"x" * 32, text="dm")
    put(store, m)
    (row,) = rows(store.path, 'SELECT id, kind, origin, seq, ts, "to", signed, sig, hops, conv, '
                              "text, status, reason, own, held, client_id, received_at "
                              "FROM messages")
    assert row == (m.id, 2, ALICE, m.seq, m.ts, BOB, m.signed, m.sig, 3, BOB, "dm", "sent", "r",
                   1, 1, b"x" * 32, NOW)


def test_put_is_committed_before_it_returns(store: Store, path: Path) -> None:
    items = [mk() for _ in range(10)]
    put(store, *items)
    # another connection sees the rows at once (nothing left in an open transaction)
    assert len(rows(path)) == 10
    store.close()
    reopened = Store(path)
    try:
        got = reopened.get(rpc.StoreGet(ids=tuple(m.id for m in items)))
        assert [e.id for e in got.items] == [m.id for m in items]
    finally:
        reopened.close()


def test_put_256_items_timing(store: Store) -> None:
    batches = [tuple(mk(signed=os.urandom(300)) for _ in range(256)) for _ in range(5)]
    times = []
    for batch in batches:
        t0 = time.perf_counter()
        store.put(rpc.StorePut(items=batch))
        times.append(time.perf_counter() - t0)
    print(f"\nput() of 256 items: best {min(times) * 1000:.2f} ms, "
          f"median {sorted(times)[2] * 1000:.2f} ms, worst {max(times) * 1000:.2f} ms")
    assert store.count() == 5 * 256


# -- status -------------------------------------------------------------------------------

#: docs/protocol.md, "Delivery status": failed ends the climb, but a receipt after it is
#: proof of delivery, so delivered still replaces it; delivered is final (common.status).
ORDER = ["", "queued", "sent", "relayed", "failed", "delivered"]
STATUSES = ORDER


def expected_after(old: str, new: str) -> str:
    return new if ORDER.index(new) > ORDER.index(old) else old


def test_the_store_follows_the_one_rule() -> None:
    assert all(status.advance(old, new) == (expected_after(old, new) != old)
               for old in STATUSES for new in STATUSES)


@pytest.mark.parametrize("old", STATUSES)
@pytest.mark.parametrize("new", STATUSES)
def test_status_only_moves_forward(store: Store, old: str, new: str) -> None:
    m = mk(own=True, status=old, reason="before")
    put(store, m)
    valid(store.set_status(rpc.StoreSetStatus(
        updates=(rpc.StatusUpdate(id=m.id, status=new, reason="after"),))))
    want = expected_after(old, new)
    moved = (want, "after") if want != old else (old, "before")
    assert status_of(store, m.id) == moved


def test_status_sequence_and_unknown_ids(store: Store) -> None:
    m = mk(own=True, status="queued")
    put(store, m)
    steps = [("sent", "sent"), ("queued", "sent"), ("relayed", "relayed"), ("sent", "relayed"),
             ("failed", "failed"), ("relayed", "failed"), ("delivered", "delivered"),
             ("failed", "delivered"), ("queued", "delivered")]
    for new, want in steps:
        store.set_status(rpc.StoreSetStatus(updates=(
            rpc.StatusUpdate(id=m.id, status=new), rpc.StatusUpdate(id=mid(999999), status=new))))
        assert status_of(store, m.id)[0] == want
    assert store.count() == 1


def test_release(store: Store) -> None:
    a, b = mk(kind=2, to=BOB, held=True), mk(kind=2, to=BOB, held=True)
    put(store, a, b)
    valid(store.release(rpc.StoreRelease(ids=(a.id, mid(424242)))))
    assert dict(rows(store.path, "SELECT id, held FROM messages")) == {a.id: 0, b.id: 1}


# -- reads --------------------------------------------------------------------------------


def test_get_in_request_order_skipping_missing(store: Store) -> None:
    a, b, c = mk(hops=1), mk(hops=2), mk(hops=3)
    put(store, a, b, c)
    got = valid(store.get(rpc.StoreGet(ids=(c.id, mid(777777), a.id, b.id))))
    assert got.items == tuple(rpc.WireEnvelope(id=m.id, signed=m.signed, sig=m.sig, hops=m.hops)
                              for m in (c, a, b))


def test_get_many_ids(store: Store) -> None:
    items = [mk() for _ in range(1200)]
    for i in range(0, 1200, 400):
        put(store, *items[i:i + 400])
    want = [m.id for m in reversed(items)]
    assert [e.id for e in store.get(rpc.StoreGet(ids=tuple(want))).items] == want


def test_history_room_and_dm_are_separate(store: Store) -> None:
    room = [mk(ts=NOW_MS + i) for i in range(3)]
    dm_bob = [mk(kind=2, to=BOB, conv=BOB, ts=NOW_MS + i, text=None if i == 0 else "hi")
              for i in range(2)]
    dm_carol = mk(kind=2, to=CAROL, conv=CAROL)
    relayed = mk(kind=2, origin=CAROL, to=BOB, text=None)  # a DM we only relay: no conv
    receipt = mk(kind=3, to=BOB, text=None)
    put(store, *room, *dm_bob, dm_carol, relayed, receipt)
    hist = valid(store.history(rpc.StoreHistory()))
    assert [e.id for e in hist.messages] == [m.id for m in room]
    assert hist.messages[0] == rpc.HistoryEntry(id=room[0].id, kind=1, origin=ALICE, to=None,
                                                ts=room[0].ts, text=room[0].text, status="",
                                                received=NOW_MS)
    bob = store.history(rpc.StoreHistory(conv=BOB)).messages
    assert [e.id for e in bob] == [m.id for m in dm_bob]
    assert bob[0].text is None and bob[1].text == "hi" and bob[1].to == BOB
    assert [e.id for e in store.history(rpc.StoreHistory(conv=CAROL)).messages] == [dm_carol.id]
    assert store.history(rpc.StoreHistory(conv=ALICE)).messages == ()


class Clock:
    """A clock the test moves (seconds)."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_history_orders_by_arrival_not_by_claimed_time(path: Path) -> None:
    clock = Clock()
    store = Store(path, clock=clock)
    honest_early = mk(ts=NOW_MS, text="early")
    liar = mk(origin=CAROL, ts=NOW_MS + 9 * 60_000, text="claims 9 minutes ahead")
    put(store, honest_early)
    clock.now += 1
    put(store, liar)
    clock.now += 1
    honest_late = mk(ts=NOW_MS + 2000, text="late")
    put(store, honest_late)
    got = store.history(rpc.StoreHistory()).messages
    assert [e.text for e in got] == ["early", "claims 9 minutes ahead", "late"]
    assert [e.received for e in got] == [NOW_MS, NOW_MS + 1000, NOW_MS + 2000]
    assert got[1].ts == NOW_MS + 9 * 60_000  # the claim is kept, as the claim
    # the newest by arrival: the honest message made after the liar's
    assert [e.text for e in store.history(rpc.StoreHistory(limit=1)).messages] == ["late"]
    store.close()


def test_history_limit_before_and_ties(path: Path) -> None:
    clock = Clock()
    store = Store(path, clock=clock)
    # batches arrive at distinct times; inside a batch, insertion order; claimed ts ignored
    batches = [[mk(ts=NOW_MS + t) for t in (5, 1, 3)], [mk(ts=NOW_MS - 7)],
               [mk(ts=NOW_MS + 60_000), mk(ts=NOW_MS), mk(ts=NOW_MS + 2)]]
    for batch in batches:
        put(store, *batch)
        clock.now += 0.010
    full = [m.id for batch in batches for m in batch]
    assert [e.id for e in store.history(rpc.StoreHistory(limit=100)).messages] == full
    # the newest `limit`, oldest first
    assert [e.id for e in store.history(rpc.StoreHistory(limit=2)).messages] == full[-2:]
    # page backwards with `before`: received time, unix ms
    page = store.history(rpc.StoreHistory(limit=2, before=NOW_MS + 20)).messages
    assert [e.id for e in page] == full[2:4]
    assert store.history(rpc.StoreHistory(before=NOW_MS)).messages == ()
    # with before_id: exact inside a batch (one received time)
    page = store.history(rpc.StoreHistory(limit=2, before_id=full[5])).messages
    assert [e.id for e in page] == full[3:5]
    # an unknown before_id: `before` decides
    page = store.history(rpc.StoreHistory(before=NOW_MS + 10, before_id=mid(10**6))).messages
    assert [e.id for e in page] == full[:3]
    store.close()


def test_history_paging(store: Store) -> None:
    # one batch, one received time: paging by before_id loses and repeats nothing
    msgs = [mk(kind=2, to=BOB, conv=BOB, ts=NOW_MS - 1000 * i) for i in range(25)]
    put(store, *msgs)
    seen: list[bytes] = []
    before_id = None
    while True:
        page = store.history(rpc.StoreHistory(conv=BOB, limit=7, before_id=before_id,
                                              before=NOW_MS + 1)).messages
        if not page:
            break
        assert len(page) == min(7, 25 - len(seen))
        seen = [e.id for e in page] + seen
        before_id = page[0].id
    assert seen == [m.id for m in msgs]


def test_history_reply_fits_a_client(store: Store) -> None:
    from tazcom.services.busclient import MAX_REPLY_BYTES

    big = [mk(text="é" * 2000) for _ in range(2500)]  # 4,000 bytes of text each
    for i in range(0, len(big), 500):
        put(store, *big[i:i + 500])
    got = store.history(rpc.StoreHistory(limit=10000))
    assert 1000 < len(got.messages) < 2500
    assert [e.id for e in got.messages] == [m.id for m in big[-len(got.messages):]]
    assert len(rpc.encode_reply(1, got)) < MAX_REPLY_BYTES
    one = store.history(rpc.StoreHistory(limit=1, before_id=big[1].id)).messages
    assert [e.id for e in one] == [big[0].id]


def test_put_batch_is_one_transaction(store: Store) -> None:
    good = mk()
    broken = mk()  # a record with a bad field cannot be built: break one to fail the INSERT
    broken.__dict__["signed"] = None  # NOT NULL violation
    with pytest.raises(sqlite3.IntegrityError):
        store.put(rpc.StorePut(items=(good, broken)))
    assert store.count() == 0
    assert put(store, good) == [rpc.PutOutcome(id=good.id, new=True)]  # still usable


def test_sync_set(store: Store) -> None:
    since = NOW_MS - DAY_MS
    old_room = mk(ts=since - 1)
    new_room = mk(ts=since + 10)
    edge_room = mk(ts=since)
    held_old_dm = mk(kind=2, to=BOB, ts=since - 5 * DAY_MS, held=True, text=None)
    released_dm = mk(kind=2, to=BOB, ts=since + 5, text=None)  # not held: not offered
    held_receipt = mk(kind=3, to=BOB, ts=since - DAY_MS, held=True, text=None)
    held_old_room = mk(ts=since - 2, held=True)
    sk_a, sk_b, sk_c = (nacl.signing.SigningKey.generate() for _ in range(3))
    prof_a_old = profile_msg(sk_a, "alice", since + 1, seq=1)
    prof_a_new = profile_msg(sk_a, "alice2", since + 2, seq=2)
    prof_b_stale = profile_msg(sk_b, "bob", since - 1)  # newest of b, but before since
    prof_b_older = profile_msg(sk_b, "bob0", since - 100, seq=0)
    prof_c = profile_msg(sk_c, "carol", since + 3)
    put(store, old_room, new_room, edge_room, held_old_dm, released_dm, held_receipt,
        held_old_room, prof_a_old, prof_a_new, prof_b_stale, prof_b_older, prof_c)
    got = valid(store.sync_set(rpc.StoreSyncSet(since=since))).items
    assert sorted(i.id for i in got) == sorted(m.id for m in (
        new_room, edge_room, held_old_dm, held_receipt, held_old_room, prof_a_new, prof_c))
    assert [i.ts for i in got] == sorted((i.ts for i in got), reverse=True)  # newest first
    by_id = {i.id: i for i in got}
    assert by_id[held_old_dm.id] == rpc.SyncItem(id=held_old_dm.id, ts=held_old_dm.ts, kind=2,
                                                 to=BOB, held=True)
    assert by_id[new_room.id] == rpc.SyncItem(id=new_room.id, ts=new_room.ts, kind=1)


def test_outbox(store: Store) -> None:
    pending = [mk(own=True, status=s, ts=NOW_MS - i, kind=2, to=BOB, conv=BOB)
               for i, s in enumerate(["relayed", "sent", "queued"])]
    done = [mk(own=True, status=s) for s in ("delivered", "failed", "")]
    not_own = mk(status="queued")
    put(store, *pending, *done, not_own)
    got = valid(store.outbox(rpc.StoreOutbox())).items
    assert [o.id for o in got] == [m.id for m in reversed(pending)]  # oldest first
    first = pending[2]
    assert got[0] == rpc.OwnMessage(id=first.id, kind=2, to=BOB, ts=first.ts, status="queued",
                                    text=first.text, signed=first.signed, sig=first.sig)


def test_profiles(store: Store) -> None:
    sk_a, sk_b = nacl.signing.SigningKey.generate(), nacl.signing.SigningKey.generate()
    a_old = profile_msg(sk_a, "alice", NOW_MS - 10, seq=1, enc=b"\x01" * 32)
    a_new = profile_msg(sk_a, "Alice ✓", NOW_MS, seq=2, hops=3, enc=b"\x02" * 32)
    b = profile_msg(sk_b, "bob", NOW_MS - 5, hops=2, enc=b"\x03" * 32)
    # a newest row that does not parse is skipped (nothing else of that origin is shown)
    junk = mk(kind=4, origin=CAROL, ts=NOW_MS, text=None, signed=b"\xc1not msgpack")
    put(store, a_new, a_old, b, junk)
    got = valid(store.profiles(rpc.StoreProfiles())).items
    assert sorted(got, key=lambda p: p.nickname) == sorted([
        rpc.ProfileInfo(key=bytes(sk_a.verify_key), nickname="Alice ✓", enc_key=b"\x02" * 32,
                        ts=NOW_MS, hops=3),
        rpc.ProfileInfo(key=bytes(sk_b.verify_key), nickname="bob", enc_key=b"\x03" * 32,
                        ts=NOW_MS - 5, hops=2),
    ], key=lambda p: p.nickname)


def test_reserve_seq_never_repeats(path: Path) -> None:
    s = Store(path)
    assert valid(s.reserve_seq(rpc.StoreReserveSeq(count=1))) == rpc.SeqBlock(first=1)
    assert s.reserve_seq(rpc.StoreReserveSeq(count=10)).first == 2
    assert s.reserve_seq(rpc.StoreReserveSeq(count=5)).first == 12
    s.close()
    s = Store(path)
    try:
        assert s.reserve_seq(rpc.StoreReserveSeq(count=1)).first == 17
        assert s.reserve_seq(rpc.StoreReserveSeq(count=1_000_000)).first == 18
        assert s.reserve_seq(rpc.StoreReserveSeq(count=1)).first == 1_000_018
    finally:
        s.close()


def test_recent_ids(path: Path) -> None:
    clock = [1000.0]
    s = Store(path, clock=lambda: clock[0])
    try:
        old = mk()
        put(s, old)
        clock[0] = 2000.0
        first, second = mk(), mk()
        put(s, first, second)
        clock[0] = 3000.0
        newest = mk()
        put(s, newest)
        assert valid(s.recent_ids(rpc.StoreRecentIds(since=2000.0))).ids == \
            (newest.id, second.id, first.id)
        assert s.recent_ids(rpc.StoreRecentIds(since=0, limit=2)).ids == (newest.id, second.id)
        assert s.recent_ids(rpc.StoreRecentIds(since=3000.5)).ids == ()
    finally:
        s.close()


# -- maintenance --------------------------------------------------------------------------


def test_maintain_expires_and_releases(store: Store) -> None:
    old_ts = NOW_MS - 7 * DAY_MS - 1
    young_ts = NOW_MS - 7 * DAY_MS + 60_000
    old_held = mk(kind=2, to=BOB, ts=old_ts, held=True, text=None)
    young_held = mk(kind=2, to=BOB, ts=young_ts, held=True, text=None)
    old_dm = mk(kind=2, to=BOB, conv=BOB, ts=old_ts, own=True, status="sent", held=True)
    old_room = mk(ts=old_ts, own=True, status="queued")
    old_delivered = mk(kind=2, to=BOB, conv=BOB, ts=old_ts, own=True, status="delivered")
    young_own = mk(kind=2, to=BOB, conv=BOB, ts=young_ts, own=True, status="relayed")
    put(store, old_held, young_held, old_dm, old_room, old_delivered, young_own)
    expired = store.maintain(NOW)
    reason = "expired: not delivered within 7 days"
    assert sorted(expired) == sorted([(old_dm.id, BOB, reason), (old_room.id, None, reason)])
    held = dict(rows(store.path, "SELECT id, held FROM messages"))
    assert held[old_held.id] == 0 and held[old_dm.id] == 0 and held[young_held.id] == 1
    assert status_of(store, old_dm.id) == ("failed", reason)
    assert status_of(store, old_delivered.id) == ("delivered", "")
    assert status_of(store, young_own.id) == ("relayed", "")
    assert [m.id for m in store.outbox(rpc.StoreOutbox()).items] == [young_own.id]
    assert store.maintain(NOW) == []  # nothing twice
    # history is kept forever
    assert store.count() == 6
    assert store.maintain(NOW + 365 * 86400) == [(young_own.id, BOB, reason)]
    assert store.count() == 6


def test_maintain_prunes_superseded_profiles(store: Store) -> None:
    sk_a, sk_b = nacl.signing.SigningKey.generate(), nacl.signing.SigningKey.generate()
    a1 = profile_msg(sk_a, "a1", NOW_MS - 3 * DAY_MS, seq=1)
    a2 = profile_msg(sk_a, "a2", NOW_MS - 2 * DAY_MS, seq=2)
    a3 = profile_msg(sk_a, "a3", NOW_MS - 3600_000, seq=3)  # superseded, but under 24 h
    a4 = profile_msg(sk_a, "a4", NOW_MS, seq=4)
    b1 = profile_msg(sk_b, "b1", NOW_MS - 30 * DAY_MS)  # old, but b's newest
    room = mk(ts=NOW_MS - 30 * DAY_MS)
    put(store, a1, a2, a3, a4, b1, room)
    store.maintain(NOW)
    left = {r[0] for r in rows(store.path, "SELECT id FROM messages")}
    assert left == {a3.id, a4.id, b1.id, room.id}


# -- the file -----------------------------------------------------------------------------


def test_file_mode_and_pragmas(path: Path) -> None:
    old = os.umask(0)
    try:
        s = Store(path)
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert s._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert s._db.execute("PRAGMA user_version").fetchone()[0] == 1
    finally:
        s.close()


def test_corrupt_file_is_fatal_and_untouched(path: Path) -> None:
    path.parent.mkdir(parents=True)
    data = os.urandom(8192)
    path.write_bytes(data)
    os.chmod(path, 0o600)
    with pytest.raises(FatalError) as err:
        Store(path)
    assert str(path) in err.value.message and "\n" not in err.value.message
    assert path.read_bytes() == data
    assert sorted(p.name for p in path.parent.iterdir()) == ["store.sqlite"]


@pytest.mark.parametrize("setup", [
    "CREATE TABLE accounts (x)",
    "PRAGMA user_version = 7",
    "PRAGMA application_id = 1234",
    "CREATE TABLE messages (id, body); PRAGMA user_version = 1",
])
def test_foreign_database_is_fatal_and_untouched(path: Path, setup: str) -> None:
    path.parent.mkdir(parents=True)
    db = sqlite3.connect(path)
    db.executescript(setup)
    db.close()
    os.chmod(path, 0o600)
    data = path.read_bytes()
    with pytest.raises(FatalError):
        Store(path)
    assert path.read_bytes() == data


def test_reopen_keeps_schema_and_rows(path: Path) -> None:
    s = Store(path)
    put(s, mk())
    s.close()
    s = Store(path)
    try:
        assert s.count() == 1
    finally:
        s.close()


def test_sqlite_errors_in_the_service() -> None:
    where = Path("/x/store.sqlite")
    corrupt = sqlite3.DatabaseError("database disk image is malformed")
    corrupt.sqlite_errorcode = sqlite3.SQLITE_CORRUPT
    assert isinstance(db_failure(corrupt, where), FatalError)
    full = db_failure(sqlite3.OperationalError("database or disk is full"), where)
    assert isinstance(full, RequestFailed) and full.code == "store_error"
    assert db_failure(sqlite3.IntegrityError("NOT NULL"), where) is None  # a bug: crash


def test_two_processes_opening_a_new_store_at_once(tmp_path: Path) -> None:
    # the router and the store service open the same new database at the same moment
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    for round_ in range(8):
        path = tmp_path / f"race{round_}.sqlite"
        start = ctx.Barrier(6)
        procs = [ctx.Process(target=_open_and_close, args=(str(path), start))
                 for _ in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        assert [p.exitcode for p in procs] == [0] * 6


def _open_and_close(path: str, start: Any) -> None:
    start.wait(10)
    Store(Path(path)).close()


def test_the_store_service_only_reads_what_the_router_writes(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    reader = Store(path, reader=True)
    assert reader.history(rpc.StoreHistory()).messages == ()  # not created yet: empty
    assert not path.exists()  # and the reader did not create it
    writer = Store(path)
    room = mk(id=mid(1), text="hello")
    writer.put(rpc.StorePut(items=(room,)))
    assert [m.text for m in reader.history(rpc.StoreHistory()).messages] == ["hello"]
    with pytest.raises(sqlite3.OperationalError):
        reader._db.execute("DELETE FROM messages")
    assert writer.count() == 1
    reader.close()
    writer.close()


def test_a_reader_refuses_a_foreign_database(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE other (x)")
    db.execute("PRAGMA application_id = 42")
    db.commit()
    db.close()
    with pytest.raises(FatalError):
        Store(path, reader=True).history(rpc.StoreHistory())


def test_one_router_batch_is_one_transaction_whatever_its_size(tmp_path: Path) -> None:
    """A router batch (1024 frames of up to 64 envelopes) is committed in one put."""
    store = Store(tmp_path / "store.sqlite")
    items = tuple(mk() for _ in range(3000))
    assert all(o.new for o in put(store, *items))
    assert store.count() == 3000
    store.close()
