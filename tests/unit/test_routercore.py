"""The router core's decisions, through the core only (tests/corenet.py wires cores together).

1. One decision per test: acceptance and its reject codes, commit before show,
   custody, receipts and release, catch-up, shorter paths, the mesh directory,
   DM paths and their fallback, post refusals.
2. Properties (hypothesis) over random interleavings of deliveries, drops,
   duplicates, forged copies, links up and down, restarts, store failures and
   posts: a message is shown at most once, a status never goes back, a DM
   whose recipient is connected is delivered once the mesh settles, the
   seen-set never holds an id whose signature failed.
3. Fuzz: random bytes, msgpack of wrong shapes, mutated router messages, signed
   envelopes with odd contents, odd posts: the core refuses with a reject
   code and never raises.

Known gaps are strict xfails (each says why): they pass once the core does it.
"""

from __future__ import annotations

import random
from dataclasses import replace

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.public import PublicKey, SealedBox

from tazcom.common import envelope, gossip, routing, rpc
from tazcom.common import routercore as rc
from tazcom.common.envelope import KIND_DM, KIND_PROFILE, KIND_RECEIPT, KIND_ROOM
from tazcom.common.errors import RemoteProtocolError
from tazcom.common.events import ChatMessage, ChatStatus, MeshPeer, PeerScore
from tazcom.common.floodlimits import FloodSettings
from tazcom.common.keys import DOMAIN_ENVELOPE
from tests.corenet import OPEN, Identity, Net, Node, Recorder, frame_ids, make_envelope

PEER = bytes(range(32))
PEER2 = bytes(range(1, 33))
#: Every reject code the router core may give for an input (docs/protocol.md §8).
ROUTER_CODES = {"bad_frames", "rate_limited", "bad_encoding", "too_large",
                "bad_router_message", "hop_limit", "bad_envelope", "bad_version", "bad_kind",
                "too_old", "too_new", "bad_signature", "bad_recipient", "cannot_open",
                "bad_author"}
POST_CODES = {"bad_recipient", "no_key", "too_large", "bad_message"}
PROPS = settings(max_examples=120, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


# -- helpers -----------------------------------------------------------------------------------


def now_ms(net: Net) -> int:
    return int(net.now * 1000)


def entry(net: Net, ident: Identity, hops: int = 0, **kw) -> tuple[int, bytes, bytes]:
    kw.setdefault("ts", now_ms(net))
    return (hops, *make_envelope(ident, **kw))


def envs(*entries: tuple[int, bytes, bytes]) -> bytes:
    return routing.encode_envs(list(entries))


def feed(node: Node, *bodies: bytes, link: bytes = PEER) -> Recorder:
    rec = Recorder(node)
    rec.run(node.core.receive([[link, b] for b in bodies], node.net.now, node.net.mono))
    return rec


def reasons(rec: Recorder) -> list[str]:
    return [a.reason for a in rec.of(rc.Rejected)]


def shown(rec: Recorder) -> list[str]:
    return [a.fields["id"] for a in rec.of(rc.Emit) if a.event is ChatMessage]


def statuses(node: Node, msg_id: bytes) -> list[str]:
    return [e.fields["status"] for e in node.emitted
            if e.event is ChatStatus and e.fields["id"] == msg_id.hex()]


def carried(net: Net, msg_id: bytes) -> list[tuple[str, str]]:
    """Every envs frame that carried ``msg_id``: (sender, receiver) nicknames."""
    return [(n.nickname, net.by_key[to].nickname) for n in net.nodes for to, body in n.sent
            if msg_id in frame_ids(body)]


def clear_logs(net: Net) -> None:
    for n in net.nodes:
        n.sent.clear()
        n.emitted.clear()
        n.rejected.clear()


@pytest.fixture
def solo() -> tuple[Net, Node, Identity]:
    """One core, fed by hand from a neighbour PEER; ``alice`` signs what it gets."""
    net = Net(1)
    return net, net.nodes[0], Identity(b"alice")


def settled(n: int, edges: list[tuple[int, int]], **kw) -> Net:
    net = Net(n, **kw)
    net.set_edges(edges)
    net.run_for(1.0)
    assert all(len(x.core.directory) == n - 1 for x in net.nodes)
    clear_logs(net)
    return net


def pair() -> tuple[Net, Node, Node]:
    """Two linked nodes that know each other."""
    net = settled(2, [(0, 1)])
    return net, net.nodes[0], net.nodes[1]


# -- the harness itself --------------------------------------------------------------------------


def test_harness_signs_and_opens_as_the_identity_service() -> None:
    from tazcom.common.keyfile import Secrets
    from tazcom.services.identity import Identity as Service

    ours = Identity(b"x")
    theirs = Service(Secrets(ed25519_seed=ours.ed25519_seed,
                             x25519_secret=ours.x25519_secret), "x")
    # identity signs envelopes only to revoke a delegated key; the harness signs anything
    data = envelope.signed_bytes(kind=envelope.KIND_REVOKE, origin=ours.key, seq=1, ts=5,
                                 to=None, body=envelope.revoke_body(bytes(32), 5), version=2)
    assert theirs.public == ours.key
    assert ours.sign([data]) == [theirs.sign(rpc.Sign(domain=DOMAIN_ENVELOPE, data=data)).sig]
    assert theirs.info(rpc.GetIdentity()).enc_key == ours.enc_key.hex()
    box = envelope.seal_dm(origin=PEER, text="t", recipient_enc_key=ours.enc_key)
    assert ours.open([box, b"junk"]) == [theirs.open(rpc.OpenSealed(boxes=(box,))).items[0],
                                         None]


# -- 1. acceptance -------------------------------------------------------------------------------


def test_a_valid_envelope_is_committed_then_shown(solo) -> None:
    net, me, alice = solo
    e = entry(net, alice, hops=2, body=b"hello room")
    rec = feed(me, envs(e))
    kinds = [type(a).__name__ for a, _ in rec.actions]
    msg_id = envelope.message_id(e[1])
    assert kinds.index("Commit") < kinds.index("Emit")
    [(commit, results)] = [(a, r) for a, r in rec.actions if type(a) is rc.Commit]
    assert results == [rpc.PutOutcome(id=msg_id, new=True)]
    row = commit.items[0]
    assert (row.hops, row.text, row.conv, row.held) == (3, "hello room", None, False)
    [ev] = [a for a in rec.of(rc.Emit) if a.event is ChatMessage]
    assert ev.fields["hops"] == 3 and not ev.fields["own"] and ev.fields["status"] == ""
    assert ev.fields["text"] == "hello room" and ev.fields["origin"] == alice.key.hex()
    assert msg_id in me.core.seen and msg_id in me.core.index
    assert reasons(rec) == [] and net.violations == []


def test_hop_limit_is_checked_first() -> None:
    net = Net(1, settings=rc.RouterSettings(hop_limit=3))
    me, alice = net.nodes[0], Identity(b"alice")
    over = entry(net, alice, hops=3, seq=1)
    at_limit = entry(net, alice, hops=2, seq=2)
    junk_over = (3, b"\xc1 not an envelope", bytes(64))
    rec = feed(me, envs(over, at_limit, junk_over))
    assert reasons(rec) == ["hop_limit", "hop_limit"]
    assert shown(rec) == [envelope.message_id(at_limit[1]).hex()]
    assert me.store.rows[envelope.message_id(at_limit[1])].hops == 3  # held at the limit


def test_a_copy_at_the_hop_limit_is_not_relayed() -> None:
    net = Net(2, settings=rc.RouterSettings(hop_limit=3, relay_delay=0))
    me, other = net.nodes
    net.link((me, other))
    net.run_for(1.0)
    clear_logs(net)
    alice = Identity(b"alice")
    at_limit, below = entry(net, alice, hops=2, seq=1), entry(net, alice, hops=1, seq=2)
    feed(me, envs(at_limit, below))
    assert [frame_ids(b) for _, b in me.sent] == [[envelope.message_id(below[1])]]


@pytest.mark.parametrize(("frame", "code"), [
    ([PEER], "bad_frames"),
    ([PEER, b"x", b"y"], "bad_frames"),
    ([b"short key", routing.encode_custody([bytes(16)])], "bad_frames"),
    ([PEER, "text"], "bad_frames"),
    ([PEER, b"\xc1"], "bad_encoding"),
    ([PEER, b"\x93\x00"], "bad_encoding"),  # truncated
    ([PEER, bytes(routing.MAX_BODY + 1)], "too_large"),
    ([PEER, msgpack.packb([9, []])], "bad_router_message"),
    ([PEER, msgpack.packb([0, []])], "bad_router_message"),  # no envelopes
    ([PEER, msgpack.packb([0, [[0, b"x", bytes(63)]]])], "bad_router_message"),
    ([PEER, msgpack.packb([0, [[17, b"x", bytes(64)]]])], "bad_router_message"),
    ([PEER, msgpack.packb([1, []])], "bad_router_message"),  # empty custody
    ([PEER, msgpack.packb([1, [b"short"]])], "bad_router_message"),
    ([PEER, msgpack.packb([2, [[-1, 1, bytes(16)]]])], "bad_router_message"),
    ([PEER, msgpack.packb([3, -1, []])], "bad_router_message"),
    ([PEER, msgpack.packb("router")], "bad_router_message"),
])
def test_bad_frames_and_router_messages(solo, frame: list, code: str) -> None:
    net, me, _ = solo
    rec = Recorder(me)
    rec.run(me.core.receive([frame], net.now, net.mono))
    assert [type(a) for a, _ in rec.actions
            if not (isinstance(a, rc.Emit) and a.event is PeerScore)] == [rc.Rejected]
    assert reasons(rec) == [code]


def _signed(alice: Identity, fields: list) -> tuple[int, bytes, bytes]:
    signed = msgpack.packb(fields, use_bin_type=True)
    return 0, signed, alice.sign([signed])[0]


@pytest.mark.parametrize(("make", "code"), [
    (lambda k, ts: [3, KIND_ROOM, k, 1, ts, None, b"x"], "bad_version"),
    (lambda k, ts: [1, 9, k, 1, ts, None, b"x"], "bad_kind"),
    (lambda k, ts: [1, KIND_ROOM, k[:31], 1, ts, None, b"x"], "bad_envelope"),
    (lambda k, ts: [1, KIND_ROOM, k, -1, ts, None, b"x"], "bad_envelope"),
    (lambda k, ts: [1, KIND_ROOM, k, 1, ts, k, b"x"], "bad_envelope"),  # room with a recipient
    (lambda k, ts: [1, KIND_DM, k, 1, ts, None, b"x"], "bad_envelope"),  # DM without one
    (lambda k, ts: [1, KIND_ROOM, k, 1, ts, None, b"\xff\xfe"], "bad_envelope"),  # not UTF-8
    (lambda k, ts: [1, KIND_ROOM, k, 1, ts, None, b"x" * 4097], "too_large"),
    (lambda k, ts: [1, KIND_RECEIPT, k, 1, ts, PEER, b"\x90"], "bad_envelope"),
    (lambda k, ts: [1, KIND_PROFILE, k, 1, ts, None, b"\x80"], "bad_envelope"),
    (lambda k, ts: [1, KIND_ROOM, k, 1, ts, None], "bad_envelope"),
    (lambda k, ts: "an envelope", "bad_envelope"),
])
def test_envelope_shape_rejects(solo, make, code: str) -> None:
    net, me, alice = solo
    rec = feed(me, envs(_signed(alice, make(alice.key, now_ms(net)))))
    assert reasons(rec) == [code]
    assert not rec.of(rc.Commit) and len(me.core.seen) == 0


def test_duplicates_are_ignored_silently(solo) -> None:
    net, me, alice = solo
    e = entry(net, alice)
    rec = feed(me, envs(e, e), envs(e))
    rec2 = feed(me, envs(e), link=PEER2)
    assert len(shown(rec)) == 1 and shown(rec2) == []
    assert [len(a.items) for a in rec.of(rc.Commit)] == [1] and not rec2.of(rc.Commit)
    assert reasons(rec) == reasons(rec2) == []
    assert me.core.counts["duplicates"] == 3 and net.violations == []


@pytest.mark.parametrize(("offset_ms", "code"), [
    (-gossip.MAX_AGE_MS - 1000, "too_old"),
    (-gossip.MAX_AGE_MS + 1000, None),
    (gossip.MAX_FUTURE_MS - 1000, None),
    (gossip.MAX_FUTURE_MS + 1000, "too_new"),
])
def test_time_window(solo, offset_ms: int, code: str | None) -> None:
    net, me, alice = solo
    e = entry(net, alice, ts=now_ms(net) + offset_ms)
    rec = feed(me, envs(e))
    assert reasons(rec) == ([code] if code else [])
    assert (envelope.message_id(e[1]) in me.core.seen) == (code is None)


def test_rate_limited_per_link() -> None:
    net = Net(1, settings=rc.RouterSettings(link_rate=1, link_burst=2))
    me, alice = net.nodes[0], Identity(b"alice")
    bodies = [envs(entry(net, alice, seq=i)) for i in range(4)]
    rec = feed(me, *bodies[:3])
    assert reasons(rec) == ["rate_limited"] and len(shown(rec)) == 2
    assert rec.of(rc.Rejected)[0].source.startswith("peer ")
    assert reasons(feed(me, bodies[2], link=PEER2)) == []  # another link has its own bucket
    net.run_for(1.0)  # one token back
    assert reasons(feed(me, bodies[3])) == []


def test_rate_limited_per_origin() -> None:
    net = Net(1, settings=rc.RouterSettings(flood=FloodSettings(room_rate=0.001, room_burst=2)))
    me, alice, bob = net.nodes[0], Identity(b"alice"), Identity(b"bob")
    rec = feed(me, envs(*(entry(net, alice, seq=i) for i in range(3)), entry(net, bob)))
    assert reasons(rec) == ["rate_limited"] and len(shown(rec)) == 3
    assert rec.of(rc.Rejected)[0].source.startswith("origin ")


def test_a_forged_copy_never_marks_the_real_one(solo) -> None:
    net, me, alice = solo
    hops, signed, sig = entry(net, alice)
    msg_id = envelope.message_id(signed)
    for forged_sig in (bytes(64), sig[:-1] + bytes([sig[-1] ^ 1]), Identity(b"eve").sign(
            [signed])[0]):
        rec = feed(me, envs((hops, signed, forged_sig)))
        assert reasons(rec) == ["bad_signature"]
        assert msg_id not in me.core.seen and msg_id not in me.store.rows
    # forged and real in one frame, the forged first: the real one is still accepted
    rec = feed(me, envs((hops, signed, bytes(64)), (hops, signed, sig)))
    assert reasons(rec) == ["bad_signature"] and shown(rec) == [msg_id.hex()]
    assert msg_id in me.core.seen


def test_checks_run_cheap_first(solo) -> None:
    net, me, alice = solo
    old = entry(net, alice, ts=now_ms(net) - gossip.MAX_AGE_MS - 1000)
    assert reasons(feed(me, envs((old[0], old[1], bytes(64))))) == ["too_old"]
    to_self = entry(net, alice, kind=KIND_DM, to=alice.key, body=b"sealed" * 8)
    assert reasons(feed(me, envs((0, to_self[1], bytes(64))))) == ["bad_signature"]
    assert reasons(feed(me, envs(to_self))) == ["bad_recipient"]
    real = entry(net, alice, seq=7)
    feed(me, envs(real))
    # a copy of an accepted id is a duplicate whatever its signature says
    assert reasons(feed(me, envs((0, real[1], bytes(64))))) == []
    # the origin's allowance is spent after its signature: a forged copy spends none
    limited = Net(1, settings=rc.RouterSettings(
        flood=FloodSettings(room_rate=0.001, room_burst=1)))
    lim, forged = limited.nodes[0], entry(limited, alice, seq=1)
    assert reasons(feed(lim, envs((0, forged[1], bytes(64))))) == ["bad_signature"]
    assert reasons(feed(lim, envs(entry(limited, alice, seq=2)))) == []
    assert reasons(feed(lim, envs(entry(limited, alice, seq=3)))) == ["rate_limited"]


def test_bad_recipient_a_dm_to_its_own_origin(solo) -> None:
    net, me, alice = solo
    body = envelope.seal_dm(origin=alice.key, text="me", recipient_enc_key=alice.enc_key)
    rec = feed(me, envs(entry(net, alice, kind=KIND_DM, to=alice.key, body=body)))
    assert reasons(rec) == ["bad_recipient"] and not rec.of(rc.Commit)


def test_a_dm_to_us_that_does_not_open_is_refused(solo) -> None:
    net, me, alice = solo
    junk = entry(net, alice, kind=KIND_DM, to=me.key, body=b"not a sealed box" * 3, seq=1)
    wrong_author = entry(net, alice, kind=KIND_DM, to=me.key, seq=2, body=envelope.seal_dm(
        origin=PEER, text="hi", recipient_enc_key=me.identity.enc_key))
    good = entry(net, alice, kind=KIND_DM, to=me.key, seq=3, body=envelope.seal_dm(
        origin=alice.key, text="hi", recipient_enc_key=me.identity.enc_key))
    rec = feed(me, envs(junk, wrong_author, good))
    assert sorted(reasons(rec)) == ["bad_author", "cannot_open"]
    [ev] = [a for a in rec.of(rc.Emit) if a.event is ChatMessage]
    assert ev.fields["text"] == "hi" and ev.fields["kind"] == "dm"
    # one receipt, for the DM that opened, committed with it and sent back
    [commit] = rec.of(rc.Commit)
    receipts = [m for m in commit.items if m.kind == KIND_RECEIPT]
    assert [envelope.receipt_ids(envelope.parse(r.signed, r.sig).body) for r in receipts] == [
        [envelope.message_id(good[1])]]
    assert envelope.message_id(junk[1]) not in me.core.seen
    assert net.violations == []


def test_one_bad_item_does_not_poison_its_batch(solo) -> None:
    """A malformed entry of an envs is refused by itself, and a DM whose body no sealed
    box can be never reaches Open: the rest of the batch is accepted."""
    net, me, alice = solo
    good = [entry(net, alice, seq=i, body=f"m{i}".encode()) for i in range(3)]
    body = msgpack.packb([0, [list(good[0]), [17, good[1][1], good[1][2]], "junk",
                              list(good[1]), [0, b"x", bytes(63)], list(good[2])]])
    rec = feed(me, body)
    assert reasons(rec) == ["bad_router_message"] * 3
    assert [r.detail.split(":")[0] for r in rec.of(rc.Rejected)] == [
        "Envs.entries[1][0]", "Envs.entries[2]", "Envs.entries[4][2]"]
    assert sorted(shown(rec)) == sorted(envelope.message_id(g[1]).hex() for g in good)
    dms = [entry(net, alice, seq=10 + i, kind=KIND_DM, to=me.key, body=envelope.seal_dm(
        origin=alice.key, text=f"dm{i}", recipient_enc_key=me.identity.enc_key))
        for i in range(2)]
    short = entry(net, alice, seq=20, kind=KIND_DM, to=me.key, body=b"x" * 47)
    rec = feed(me, envs(dms[0], short, dms[1]))
    assert reasons(rec) == ["bad_envelope"]
    assert sorted(e.fields["text"] for e in rec.of(rc.Emit)
                  if e.event is ChatMessage) == ["dm0", "dm1"]


# -- 1. commit before show ---------------------------------------------------------------------


def test_a_row_the_store_had_already_is_not_shown_again(solo) -> None:
    net, me, alice = solo
    e = entry(net, alice)
    feed(me, envs(e))
    me.restart()
    me.core.seen = gossip.SeenSet()  # the seen-set forgot it (capacity, horizon)
    rec = feed(me, envs(e))
    assert [r for _, r in rec.actions if isinstance(r, list)] == [
        [rpc.PutOutcome(id=envelope.message_id(e[1]), new=False)]]
    assert shown(rec) == [] and net.violations == []


def test_a_failed_commit_shows_nothing_and_the_message_can_come_again(solo) -> None:
    net, me, alice = solo
    e = entry(net, alice)
    msg_id = envelope.message_id(e[1])
    me.store.fail_commits = 1
    feed_failed = me.run(me.core.receive([[PEER, envs(e)]], net.now, net.mono))
    assert feed_failed is None and me.failures and me.failures[0].startswith("store_error")
    assert msg_id not in me.core.seen and not me.core.pending and me.shown[msg_id] == 0
    rec = feed(me, envs(e))
    assert shown(rec) == [msg_id.hex()] and msg_id in me.core.seen
    assert net.violations == []


def test_a_failed_commit_of_a_dm_sends_no_receipt_and_catch_up_brings_it_back() -> None:
    net, a, b = pair()
    b.store.fail_commits = 1
    dm = a.post("hello", b).message_id
    net.run_for(0.5)
    assert b.failures and b.shown[dm] == 0 and dm not in b.core.seen
    assert all(frame_ids(body) == [] for _, body in b.sent)  # no receipt went out
    net.settle(rounds=1)
    assert b.shown[dm] == 1 and a.store.rows[dm].status == "delivered"
    assert net.violations == []


# -- 1. custody, receipts, release -----------------------------------------------------------------


def dm_reached_b() -> tuple[Net, Node, Node, Node, bytes]:
    """a-b-c, frames held: a's DM to c went along its path to b, and b took it."""
    net = settled(3, [(0, 1), (1, 2)])
    a, b, c = net.nodes
    net.hold = True
    dm = a.post("psst", c).message_id
    assert [(f.src, f.dst) for f in net.queue] == [(0, 1)] and dm in a.core.awaiting
    net.deliver()
    return net, a, b, c, dm


def test_custody_receipt_and_release_along_a_line() -> None:
    net, a, b, c, dm = dm_reached_b()
    # b relays at once, commits, and only then takes custody
    assert [(f.src, f.dst, type(routing.decode(f.body)).__name__) for f in net.queue] == [
        (1, 2, "Envs"), (1, 0, "Custody")]
    assert b.store.rows[dm].held and dm in b.core.index
    net.deliver(1)
    assert a.store.rows[dm].status == "relayed" and dm not in a.core.awaiting
    net.flush()
    assert c.shown[dm] == 1
    assert statuses(a, dm) == ["sent", "relayed", "delivered"]
    assert a.store.rows[dm].status == "delivered" and not a.store.rows[dm].held
    assert not b.store.rows[dm].held and dm not in b.core.index and dm not in a.core.index
    assert not a.core.own_status and not a.core.awaiting and not c.core.awaiting
    assert net.violations == []


def test_a_receipt_from_anyone_but_the_recipient_releases_nothing() -> None:
    net, a, b, c, dm = dm_reached_b()
    net.queue.clear()  # b's relay to c is lost
    mallory = Identity(b"mallory")
    receipt = entry(net, mallory, kind=KIND_RECEIPT, to=a.key,
                    body=envelope.receipt_body([dm]))
    rec = feed(b, envs(receipt), link=c.key)
    assert not rec.of(rc.Release) and b.store.rows[dm].held and dm in b.core.index
    real = entry(net, c.identity, kind=KIND_RECEIPT, to=a.key, body=envelope.receipt_body([dm]))
    rec = feed(b, envs(real), link=c.key)
    assert [r.ids for r in rec.of(rc.Release)] == [[dm]] and not b.store.rows[dm].held


def test_a_status_only_moves_forward() -> None:
    net, a, b = pair()
    b.silent = True
    dm = a.post("dm", b).message_id
    for st_ in ("queued", "relayed", "sent", "queued", "relayed"):
        a.run(a.core.set_status([(dm, st_)]))
    assert statuses(a, dm) == ["sent", "relayed"] and a.store.rows[dm].status == "relayed"
    a.run(a.core.set_status([(bytes(16), "sent")]))  # not ours: nothing
    a.run(a.core.expired([(dm, "expired: not delivered within 7 days")]))
    assert a.store.rows[dm].status == "failed" and statuses(a, dm)[-1] == "failed"
    assert net.violations == []


def test_a_receipt_after_failed_still_makes_it_delivered() -> None:
    net, a, b = pair()
    b.silent = True
    dm = a.post("dm", b).message_id
    a.run(a.core.expired([(dm, "expired: not delivered within 7 days")]))
    b.silent = False
    net.settle(rounds=1)
    assert b.shown[dm] == 1
    assert a.store.rows[dm].status == "delivered"


# -- 1. catch-up ----------------------------------------------------------------------------------


def test_catch_up_fills_the_gaps_both_ways() -> None:
    net = Net(2)
    a, b = net.nodes
    net.run_for(1.0)
    ids_a = [a.post(f"a{i}").message_id for i in range(3)]
    ids_b = [b.post(f"b{i}").message_id for i in range(2)]
    assert a.store.rows[ids_a[0]].status == "queued"  # no link: not sent
    net.hold = True
    net.link((a, b))
    kinds = []
    while net.queue:
        kinds += [type(routing.decode(f.body)).__name__ for f in net.queue]
        net.deliver()
    assert {"SummaryMsg", "IdsMsg", "Envs"} <= set(kinds)
    for i in ids_a:
        assert b.shown[i] == 1 and a.store.rows[i].status == "sent"
    for i in ids_b:
        assert a.shown[i] == 1
    assert a.core.index.summary() == b.core.index.summary()
    # nothing is offered again once both sides agree
    clear_logs(net)
    a.anti_entropy()
    b.anti_entropy()
    net.flush()
    assert all(frame_ids(body) == [] for n in net.nodes for _, body in n.sent)
    assert net.violations == []


def test_catch_up_carries_a_held_dm_to_a_recipient_that_comes_back() -> None:
    net = settled(3, [(0, 1), (1, 2)])
    a, b, c = net.nodes
    net.unlink((b, c))
    net.run_for(1.0)
    assert a.mesh[c.key] is None  # unreachable, but its key is known
    dm = a.post("later", c).message_id
    net.run_for(2.0)
    assert b.store.rows[dm].held and a.store.rows[dm].status == "relayed" and c.shown[dm] == 0
    net.link((b, c))
    net.run_for(1.0)
    assert c.shown[dm] == 1 and a.store.rows[dm].status == "delivered"
    assert net.violations == []


# -- 1. shorter paths ----------------------------------------------------------------------------


def test_a_shorter_path_lowers_the_distance_and_relays_again() -> None:
    # hop limit 3; a-b-c-d-e with a shortcut a-c. The flood reaches c the long way first,
    # so d holds the message at the limit and e misses it; the copy over the shortcut
    # lowers c's distance and reaches e.
    net = settled(5, [(0, 1), (1, 2), (2, 3), (3, 4), (0, 2)],
                  settings=rc.RouterSettings(hop_limit=3, relay_delay=0))
    a, b, c, d, e = net.nodes
    net.hold = True
    msg = a.post("far").message_id
    to_c = next(f for f in net.queue if f.dst == c.index)
    net.drop(net.queue.index(to_c))
    for _ in range(3):  # a->b, b->c, c->d: d holds it at 3 and cannot relay
        net.deliver([f for f in net.queue if f.src != a.index or f.dst == b.index])
    assert d.store.rows[msg].hops == 3 and msg not in e.store.rows and not net.queue
    net.queue.append(to_c)
    net.flush()
    assert c.store.rows[msg].hops == 1 and d.store.rows[msg].hops == 2
    assert e.shown[msg] == 1 and e.store.rows[msg].hops == 3
    assert c.core.counts["shorter"] >= 1 and d.core.counts["shorter"] >= 1
    assert net.violations == []


# -- 1. profiles and the mesh directory ---------------------------------------------------------


def test_profiles_build_the_mesh_directory() -> None:
    net = settled(4, [(0, 1), (1, 2), (2, 3)])
    a, b, c, d = net.nodes
    assert a.mesh == {b.key: 1, c.key: 2, d.key: 3}
    assert d.mesh == {c.key: 1, b.key: 2, a.key: 3}
    table = a.core.mesh_table()
    assert {(bytes.fromhex(e.key), e.hops) for e in table.items} == {
        (b.key, 1), (c.key, 2), (d.key, 3)}
    assert {e.nickname for e in table.items} == {"n1", "n2", "n3"}
    net.unlink((c, d))
    net.run_for(1.0)
    assert a.mesh == {b.key: 1, c.key: 2, d.key: None} and d.mesh[a.key] is None
    assert a.core.refuse_post(d.key, "x") is None  # still known: a DM waits in custody
    seqs = [e.fields["seq"] for e in a.emitted if e.event is MeshPeer]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
    net.link((c, d))
    net.run_for(1.0)
    assert a.mesh[d.key] == 3 and net.violations == []


def test_a_newer_profile_replaces_the_older_one() -> None:
    net, a, b = pair()
    first = b.core.directory[a.key].profile_id
    a.core.set_nickname("renamed", net.mono)
    net.run_for(1.0)
    entry_ = b.core.directory[a.key]
    assert entry_.nickname == "renamed" and entry_.profile_id != first
    assert first not in b.core.index and entry_.profile_id in b.core.index
    assert b.mesh[a.key] == 1 and [e.fields["nickname"] for e in b.emitted
                                  if e.event is MeshPeer] == ["renamed"]
    # an older profile never seen before (it was late): accepted, but changes nothing
    old = entry(net, a.identity, kind=KIND_PROFILE, seq=0, ts=now_ms(net) - 60_000,
                body=envelope.profile_body("old", a.identity.enc_key))
    rec = feed(b, envs(old))
    assert rec.of(rc.Commit) and b.core.directory[a.key].nickname == "renamed"
    assert envelope.message_id(old[1]) not in b.core.index


# -- 1. DM paths ----------------------------------------------------------------------------------

#: a-b-c-d is the short way, a-e-f-g-h-d the long one; x and y hang off b and c.
PATHS = [(0, 1), (1, 2), (2, 3), (0, 4), (4, 5), (5, 6), (6, 7), (7, 3), (1, 8), (2, 9)]


def test_a_dm_follows_the_shortest_path() -> None:
    net = settled(10, PATHS)
    a, d = net.nodes[0], net.nodes[3]
    dm = a.post("direct", d).message_id
    net.run_for(2.0)
    assert d.shown[dm] == 1 and a.store.rows[dm].status == "delivered"
    assert carried(net, dm) == [("n0", "n1"), ("n1", "n2"), ("n2", "n3")]
    [receipt] = [i for i, m in d.store.rows.items() if m.kind == KIND_RECEIPT]
    assert sorted(carried(net, receipt)) == [("n1", "n0"), ("n2", "n1"), ("n3", "n2")]
    for off in net.nodes[4:]:
        assert dm not in off.store.rows and receipt not in off.store.rows
    assert a.core.counts["fallback"] == 0 and not a.core.awaiting
    assert net.violations == []


def test_a_dm_floods_when_the_next_hop_stays_silent() -> None:
    net = settled(10, PATHS)
    a, b, d = net.nodes[0], net.nodes[1], net.nodes[3]
    wait = net.settings.custody_wait
    b.silent = True
    dm = a.post("detour", d).message_id
    net.run_for(wait / 2)
    assert carried(net, dm) == [("n0", "n1")] and dm in a.core.awaiting
    assert not any(dm in n.store.rows for n in net.nodes[1:])
    net.run_for(wait)
    assert a.core.counts["fallback"] == 1 and ("n0", "n4") in carried(net, dm)
    assert d.shown[dm] == 1  # the long way, along its path from e
    assert ("n4", "n5") in carried(net, dm)
    assert not any(dm in n.store.rows for n in net.nodes[8:])  # no flood beyond the detour
    b.silent = False  # the receipt was stuck at c (its path is b); catch-up brings it
    net.settle(rounds=1)
    assert a.store.rows[dm].status == "delivered" and net.violations == []


def test_a_dm_floods_when_no_path_is_known() -> None:
    net = settled(4, [(0, 1), (0, 2), (1, 3), (2, 3)])
    a, d = net.nodes[0], net.nodes[3]
    a.core.first_hops.clear()  # as before any profile gave a path
    dm = a.post("flood", d).message_id
    net.run_for(1.0)
    assert {("n0", "n1"), ("n0", "n2")} <= set(carried(net, dm))
    assert d.shown[dm] == 1 and a.store.rows[dm].status == "delivered"


# -- 1. posts -------------------------------------------------------------------------------------


def test_post_refusals() -> None:
    _, a, b = pair()
    core = a.core
    assert core.refuse_post(a.key, "x").code == "bad_recipient"
    assert core.refuse_post(PEER, "x").code == "no_key"
    assert core.refuse_post(None, "x" * 4097).code == "too_large"
    assert core.refuse_post(b.key, "é" * 2049).code == "too_large"  # bytes, not characters
    assert core.refuse_post(None, "x" * 4096) is None and core.refuse_post(b.key, "") is None
    rows = len(a.store.rows)
    answers = a.post_many([("one", PEER, None), ("two", b, None), ("three", a, None),
                           ("four", None, None)])
    assert [getattr(x, "code", None) for x in answers] == ["no_key", None, "bad_recipient",
                                                            None]
    assert [x.status for x in answers if isinstance(x, rpc.PostResult)] == ["sent", "sent"]
    assert len(a.store.rows) == rows + 2


def test_a_post_is_idempotent_by_client_id() -> None:
    net, a, b = pair()
    first = a.post("once", b, client_id=b"k" * 16)
    again = a.post("once", b, client_id=b"k" * 16)
    assert again.message_id == first.message_id and not again.new and first.new
    net.run_for(1.0)
    assert b.shown[first.message_id] == 1 and a.shown[first.message_id] == 1


def test_an_own_room_message_is_sent_at_once_with_several_links() -> None:
    net = settled(3, [(0, 1), (0, 2)])
    a = net.nodes[0]
    result = a.post("hello all")
    assert result.status == "sent" and a.store.rows[result.message_id].status == "sent"
    net.run_for(1.0)
    assert a.store.rows[result.message_id].status == "sent"
    assert all(n.shown[result.message_id] == 1 for n in net.nodes)


def test_a_post_to_a_profile_with_an_unusable_key_is_refused(solo) -> None:
    net, me, _ = solo
    mallory = Identity(b"mallory")
    body = envelope.profile_body("mallory", bytes(32))  # a low-order X25519 key
    feed(me, envs(entry(net, mallory, kind=KIND_PROFILE, body=body)))
    assert mallory.key in me.core.directory
    [answer] = me.post_many([("hi", mallory.key, None)])
    assert isinstance(answer, rc.PostRefused) and answer.code in POST_CODES
    assert me.failures == [] and net.violations == []


# -- 1. restarts ----------------------------------------------------------------------------------


def test_a_restart_reloads_seen_ids_statuses_and_the_directory() -> None:
    net = settled(3, [(0, 1), (1, 2)])
    a, b, c = net.nodes
    net.hold = True
    room = a.post("before").message_id
    dm = a.post("dm", c).message_id
    net.flush()
    assert a.store.rows[dm].status == "delivered"
    net.hold = False
    pending = a.post("pending", c).message_id  # b goes silent: stays sent
    b.silent = True
    net.run_for(0.1)
    for n in net.nodes:
        n.restart()
    assert room in b.core.seen and set(c.core.directory) == {a.key, b.key}
    assert a.core.own_status[pending] == ("sent", c.key) and pending in a.core.index
    assert dm not in a.core.own_status
    b.silent = False
    net.settle(rounds=2)
    assert a.store.rows[pending].status == "delivered" and c.shown[pending] == 1
    assert all(n.shown[room] == 1 for n in net.nodes) and net.violations == []


def test_after_a_restart_catch_up_goes_quiet() -> None:
    net, a, b = pair()
    a.post("x")
    net.settle(rounds=1)
    a.restart()
    net.settle(rounds=2)
    assert a.core.index.summary() == b.core.index.summary()


def test_a_crash_right_after_a_receipt_commit_still_ends_delivered() -> None:
    net = settled(3, [(0, 1), (1, 2)])
    a, c = net.nodes[0], net.nodes[2]
    dm = a.post("dm", c).message_id
    a.crash_after_commit = True  # a's next commit is c's receipt
    net.settle(rounds=3)
    assert a.restarts == 1
    assert a.store.rows[dm].status == "delivered"


def test_catch_up_goes_quiet_after_a_dm_is_delivered() -> None:
    net, a, b = pair()
    dm = a.post("dm", b).message_id
    net.settle(rounds=1)
    assert a.store.rows[dm].status == "delivered"
    clear_logs(net)
    net.settle(rounds=2)
    assert [frame_ids(body) for n in net.nodes for _, body in n.sent if frame_ids(body)] == []


# -- 2. properties -------------------------------------------------------------------------------

TOPOLOGIES = [
    [(0, 1), (1, 2), (2, 3)],                  # line
    [(0, 1), (1, 2), (2, 3), (3, 0)],          # ring
    [(0, 1), (0, 2), (0, 3)],                  # star
    [(0, 1), (1, 2), (2, 3), (0, 2), (1, 3)],  # dense
]

POST = st.tuples(st.just("post"), st.integers(0, 3),
                 st.sampled_from([-1, 0, 1, 2, 3]), st.text(max_size=12))
DELIVER = st.tuples(st.just("deliver"), st.integers(0, 10_000))
OP = st.one_of(
    POST, POST, DELIVER, DELIVER, DELIVER,
    st.tuples(st.just("deliver_some"), st.integers(1, 6)),
    st.tuples(st.just("deliver_all")),
    st.tuples(st.just("drop"), st.integers(0, 10_000)),
    st.tuples(st.just("dup"), st.integers(0, 10_000)),
    st.tuples(st.just("swap"), st.integers(0, 10_000), st.integers(0, 10_000)),
    st.tuples(st.just("forge"), st.integers(0, 10_000)),
    st.tuples(st.just("forge"), st.integers(0, 10_000)),
    st.tuples(st.just("toggle"), st.integers(0, 4)),
    st.tuples(st.just("restart"), st.integers(0, 3)),
    st.tuples(st.just("fail_commit"), st.integers(0, 3)),
    st.tuples(st.just("time"), st.sampled_from([0.001, 0.03, 0.6, 1.5, 61.0])),
)
OPS = st.lists(OP, min_size=5, max_size=40)
#: Traffic every example starts with: a room message and a DM from every node.
PRELUDE = [op for i in range(4) for op in (("post", i, -1, f"room {i}"),
                                           ("post", i, (i + 2) % 4, f"dm {i}"))]


def forge_copy(net: Net, index: int) -> list[str]:
    """Deliver, ahead of a queued envs frame, a copy with every signature broken; returns
    the breaches of "the seen-set never holds an id whose signature failed"."""
    f = net.queue[index]
    try:
        msg = routing.decode(f.body)
    except RemoteProtocolError:
        return []
    if not isinstance(msg, routing.Envs):
        return []
    dst = net.nodes[f.dst]
    fresh = [envelope.message_id(s) for _, s, _ in msg.entries]
    fresh = [i for i in fresh if i not in dst.core.seen]
    forged = routing.encode_envs([(h, s, bytes([sig[0] ^ 0x80]) + sig[1:])
                                  for h, s, sig in msg.entries])
    net.queue.insert(index, type(f)(f.src, f.dst, forged, f.at))
    net.deliver(index)
    return [f"{dst.nickname} marked {i.hex()} seen from a forged copy"
            for i in fresh if i in dst.core.seen]


def settle_fully(net: Net, rounds: int = 8) -> None:
    """Settle until a catch-up round changes no store."""
    def state() -> tuple:
        return tuple((len(n.store.rows), tuple(m.status for m in n.store.rows.values()))
                     for n in net.nodes)
    net.settle(rounds=1)
    for _ in range(rounds):
        before = state()
        net.settle(rounds=1)
        if state() == before:
            return


def run_ops(net: Net, base: list[tuple[int, int]], ops: list[tuple]) -> tuple[dict, list]:
    """Apply ``ops``; returns the posts ({id: (author, recipient or None)}) and breaches."""
    posted: dict[bytes, tuple[Node, Node | None]] = {}
    breaches: list[str] = []
    edges = set(map(tuple, base))
    for op in ops:
        kind, args = op[0], op[1:]
        q = net.queue
        if kind == "post":
            author = net.nodes[args[0]]
            to = None if args[1] < 0 else net.nodes[args[1]]
            answer = author.post(args[2], to)
            if isinstance(answer, rpc.PostResult) and answer.new:
                posted[answer.message_id] = (author, to)
        elif kind == "deliver" and q:
            net.deliver(args[0] % len(q))
        elif kind == "deliver_some" and q:
            net.deliver(q[: args[0]])
        elif kind == "deliver_all":
            net.deliver()
        elif kind == "drop" and q:
            net.drop(args[0] % len(q))
        elif kind == "dup" and q:
            net.duplicate(args[0] % len(q))
        elif kind == "swap" and q:
            i, j = args[0] % len(q), args[1] % len(q)
            q[i], q[j] = q[j], q[i]
        elif kind == "forge" and q:
            breaches += forge_copy(net, args[0] % len(q))
        elif kind == "toggle":
            e = tuple(base[args[0] % len(base)])
            edges ^= {e}
            net.set_edges(edges)
        elif kind == "restart":
            net.nodes[args[0]].restart()
        elif kind == "fail_commit":
            net.nodes[args[0]].store.fail_commits += 1
        elif kind == "time":
            net.run_for(args[0])
    return posted, breaches


def check_promises(net: Net, posted: dict, breaches: list[str]) -> None:
    assert breaches == []
    assert net.violations == []  # shown at most once, after commit; statuses only forward
    for n in net.nodes:
        # an id enters the seen-set only once its row is committed (so never from a forgery:
        # a forged copy is never committed)
        assert all(i in n.store.rows for i in n.core.seen._ids), n
        for msg_id, m in n.store.rows.items():
            if m.own and m.kind in (KIND_ROOM, KIND_DM):
                assert n.statuses.get(msg_id, "") == (m.status or "")
    for msg_id, (author, to) in posted.items():
        if to is None:
            for n in net.nodes:
                assert n.shown[msg_id] == 1, (n, msg_id.hex())
        else:
            assert to.shown[msg_id] == 1 and author.shown[msg_id] == 1
            assert author.store.rows[msg_id].status == "delivered", msg_id.hex()
            assert author.statuses[msg_id] == "delivered"


@PROPS
@given(topology=st.sampled_from(TOPOLOGIES), ops=OPS,
       seed=st.integers(0, 3))
def test_interleavings_keep_every_promise(topology, ops, seed) -> None:
    net = Net(4, seed=seed)
    net.set_edges(topology)
    net.run_for(1.0)
    net.hold = True
    posted, breaches = run_ops(net, topology, [*PRELUDE, *ops])
    for n in net.nodes:
        n.store.fail_commits = 0
    net.set_edges(topology)
    settle_fully(net)
    check_promises(net, posted, breaches)


@PROPS
@given(ops=OPS, seed=st.integers(0, 3),
       loss=st.sampled_from([0.0, 0.1, 0.3]))
def test_dms_are_delivered_across_a_lossy_line(ops, seed, loss) -> None:
    line = [(0, 1), (1, 2), (2, 3)]
    net = Net(4, seed=seed, loss=loss)
    net.set_edges(line)
    net.loss = 0.0
    net.run_for(1.0)
    net.loss = loss
    posted, breaches = run_ops(net, line, [("post", 0, 3, "first"), *ops])
    for n in net.nodes:
        n.store.fail_commits = 0
    more, _ = run_ops(net, line, [("post", 3, 0, "last")])
    posted |= more
    net.loss = 0.0
    net.set_edges(line)
    settle_fully(net)
    assert len([p for p in posted.values() if p[1] is not None]) >= 2
    check_promises(net, posted, breaches)


@PROPS
@given(ops=st.lists(st.one_of(OP, st.tuples(st.just("crash"), st.integers(0, 3))),
                    min_size=5, max_size=40), seed=st.integers(0, 3))
def test_crashes_mid_step_never_show_twice_nor_step_back(ops, seed) -> None:
    ring = TOPOLOGIES[1]
    net = Net(4, seed=seed)
    net.set_edges(ring)
    net.run_for(1.0)
    net.hold = True
    crashes = [op for op in ops if op[0] == "crash"]
    for op in crashes:
        net.nodes[op[1]].crash_after_commit = True
    posted, breaches = run_ops(net, ring, [*PRELUDE, *(op for op in ops if op[0] != "crash")])
    for n in net.nodes:
        n.store.fail_commits = 0
        n.crash_after_commit = False
    net.set_edges(ring)
    settle_fully(net)
    assert breaches == [] and net.violations == []
    for msg_id, (_author, to) in posted.items():
        for n in [to] if to else net.nodes:
            assert msg_id in n.store.rows and n.shown[msg_id] <= 1


# -- 3. fuzz ---------------------------------------------------------------------------------------

MSGPACK = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=4),
    max_leaves=12)


@pytest.fixture(scope="module")
def fuzz_net() -> Net:
    """A settled line a-b-c with some traffic: b is the core under fuzz."""
    net = Net(3, settings=replace(OPEN, link_burst=1e9))
    net.set_edges([(0, 1), (1, 2)])
    net.run_for(1.0)
    a, b, c = net.nodes
    a.post("room")
    a.post("to b", b)
    a.post("to c", c)
    c.post("to a", a)
    net.run_for(1.0)
    return net


@pytest.fixture(scope="module")
def corpus(fuzz_net: Net) -> list[bytes]:
    """Real router messages of every type, as the fuzzed core's neighbours sent them."""
    b = fuzz_net.nodes[1]
    bodies = [body for n in fuzz_net.nodes for to, body in n.sent if to == b.key]
    ids = sorted(b.core.seen._ids)
    bodies += [routing.encode_ids(0, ids[:3]), routing.encode_custody(ids[:2])]
    assert {type(routing.decode(x)) for x in bodies} == {
        routing.Envs, routing.Custody, routing.SummaryMsg, routing.IdsMsg}
    return bodies


def fuzz_feed(net: Net, frames: list[list]) -> Recorder:
    b = net.nodes[1]
    rec = Recorder(b)
    rec.run(b.core.receive(frames, net.now, net.mono))  # never raises
    rec.actions = [(a, r) for a, r in rec.actions  # scores are told; this looks at decoding
                   if not (isinstance(a, rc.Emit) and a.event is PeerScore)]
    for r in rec.of(rc.Rejected):
        assert r.reason in ROUTER_CODES, r
    assert net.violations == []
    return rec


def decodes(body: bytes) -> bool:
    try:
        routing.decode(body)
    except RemoteProtocolError:
        return False
    return True


@FUZZ
@given(bodies=st.lists(st.binary(max_size=300), min_size=1, max_size=4))
def test_fuzz_random_bytes(fuzz_net, bodies) -> None:
    a = fuzz_net.nodes[0]
    rec = fuzz_feed(fuzz_net, [[a.key, x] for x in bodies])
    if not any(decodes(x) for x in bodies):
        assert all(type(act) is rc.Rejected for act, _ in rec.actions)
        assert len(rec.actions) == len(bodies)


@FUZZ
@given(frames=st.lists(st.lists(st.binary(max_size=40) | st.none() | st.integers(),
                                max_size=4), min_size=1, max_size=3))
def test_fuzz_frames_of_wrong_shapes(fuzz_net, frames) -> None:
    rec = fuzz_feed(fuzz_net, frames)
    assert all(type(act) is rc.Rejected for act, _ in rec.actions)


@FUZZ
@given(kind=st.integers(-1, 5), rest=st.lists(MSGPACK, max_size=3))
def test_fuzz_msgpack_of_wrong_shapes(fuzz_net, kind, rest) -> None:
    body = msgpack.packb([kind, *rest], use_bin_type=True)
    rec = fuzz_feed(fuzz_net, [[fuzz_net.nodes[0].key, body]])
    if not decodes(body):
        assert [type(act) for act, _ in rec.actions] == [rc.Rejected]


def _mutate(obj, rnd: random.Random, value):
    """Replace one element somewhere inside ``obj`` (lists only) with ``value``."""
    if not isinstance(obj, list) or not obj or rnd.random() < 0.25:
        return value
    i = rnd.randrange(len(obj))
    obj = list(obj)
    obj[i] = _mutate(obj[i], rnd, value)
    return obj


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_router_messages(fuzz_net, corpus, data) -> None:
    body = data.draw(st.sampled_from(corpus))
    how = data.draw(st.sampled_from(["flip", "cut", "insert", "replace", "structure"]))
    rnd = random.Random(data.draw(st.integers(0, 2**32)))
    b = bytearray(body)
    if how == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
    elif how == "cut":
        del b[rnd.randrange(len(b)):]
    elif how == "insert":
        b[rnd.randrange(len(b)):0] = data.draw(st.binary(min_size=1, max_size=8))
    elif how == "replace":
        i = rnd.randrange(len(b))
        b[i:i + 4] = data.draw(st.binary(min_size=4, max_size=4))
    else:
        b = bytearray(msgpack.packb(_mutate(msgpack.unpackb(body), rnd, data.draw(MSGPACK)),
                                    use_bin_type=True))
    link = data.draw(st.sampled_from([n.key for n in fuzz_net.nodes] + [PEER]))
    fuzz_feed(fuzz_net, [[link, bytes(b)]])


ODD_BODY = st.one_of(
    st.binary(max_size=200),
    MSGPACK.map(lambda x: msgpack.packb(x, use_bin_type=True)),
    st.lists(st.binary(min_size=16, max_size=17), max_size=4).map(
        lambda ids: msgpack.packb(ids, use_bin_type=True)),
    st.fixed_dictionaries({"nick": st.text(max_size=40), "enc": st.binary(max_size=33),
                           "links": st.lists(st.binary(min_size=30, max_size=33),
                                             max_size=3)}).map(
        lambda d: msgpack.packb(d, use_bin_type=True)),
    st.fixed_dictionaries({"from": st.binary(max_size=33), "text": MSGPACK}).map(
        lambda d: msgpack.packb(d, use_bin_type=True)),
)


@FUZZ
@given(data=st.data())
def test_fuzz_signed_envelopes_with_odd_contents(fuzz_net, data) -> None:
    """Validly signed, so every check after the signature sees them too."""
    a, b, c = fuzz_net.nodes
    signer = data.draw(st.sampled_from([Identity(b"mallory"), a.identity, c.identity]))
    kind = data.draw(st.sampled_from([KIND_ROOM, KIND_DM, KIND_RECEIPT, KIND_PROFILE]))
    to = data.draw(st.sampled_from([None, a.key, b.key, c.key, signer.key, PEER]))
    body = data.draw(ODD_BODY)
    if kind == KIND_DM and to == b.key and data.draw(st.booleans()):
        body = envelope.seal_dm(origin=data.draw(st.sampled_from([signer.key, PEER])),
                                text=data.draw(st.text(max_size=10)),
                                recipient_enc_key=b.identity.enc_key)
    elif kind == KIND_DM and data.draw(st.booleans()):  # a sealed box with an odd inside
        inner = msgpack.packb(data.draw(MSGPACK), use_bin_type=True)
        body = SealedBox(PublicKey(b.identity.enc_key)).encrypt(inner)
    ts = now_ms(fuzz_net) + data.draw(st.integers(-10_000, 10_000))
    hops = data.draw(st.integers(0, 7))
    seq = data.draw(st.integers(0, 2**63 - 1))
    e = entry(fuzz_net, signer, hops=hops, kind=kind, to=to, body=body, ts=ts, seq=seq)
    fuzz_feed(fuzz_net, [[a.key, envs(e)]])
    # whatever the mesh directory now holds, posting to anyone in it never raises
    for key in list(b.core.directory)[-3:]:
        [answer] = b.post_many([("hi", key, None)])
        assert isinstance(answer, rpc.PostResult) or answer.code in POST_CODES
    assert b.failures == [] and fuzz_net.violations == []


@FUZZ
@given(to=st.one_of(st.none(), st.binary(max_size=40), st.sampled_from(["a", "b", "c"])),
       text=st.text(st.characters(codec=None), max_size=30) | st.text(
           st.characters(categories=["Cs", "Co", "Cc"]), max_size=5) | st.sampled_from(
           ["x" * 4096, "x" * 4097, "é" * 2048, "é" * 2049, "\x00", ""]))
def test_fuzz_odd_posts(fuzz_net, to, text) -> None:
    a, b, c = fuzz_net.nodes
    key = {"a": a.key, "b": b.key, "c": c.key}.get(to, to) if isinstance(to, str) else to
    refused = b.core.refuse_post(key, text)
    assert refused is None or refused.code in POST_CODES
    rec = Recorder(b)
    fuzz_net.posts += 1
    client_id = fuzz_net.posts.to_bytes(16, "big")
    [answer] = rec.run(b.core.post([rc.PostSpec(client_id, key, text)], fuzz_net.now,
                                   fuzz_net.mono)) if refused is None else [refused]
    assert isinstance(answer, rpc.PostResult | rc.PostRefused)
    if isinstance(answer, rc.PostRefused):
        assert answer.code in POST_CODES and not rec.of(rc.Commit)
    assert fuzz_net.violations == []


def test_stats_answer_with_every_counter() -> None:
    net, a, b = pair()
    a.post("hello", None)
    net.settle()
    stats = b.core.stats()
    assert stats.accepted >= 1 and stats.links == 1
    assert type(stats).from_dict(stats.to_dict()) == stats
