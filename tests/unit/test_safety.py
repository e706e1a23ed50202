"""Safety among strangers, through the router core (docs/protocol.md, "Safety among
strangers"): flood limits per origin, link and address; our own limit; peer scores and
bans; blocks and mutes across a restart; storage quotas."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from tazcom.common import envelope, quota
from tazcom.common import routercore as rc
from tazcom.common.envelope import KIND_DM, KIND_ROOM
from tazcom.common.events import PeerPolicy, PeerScore
from tazcom.common.floodlimits import FRESH_S, FloodLimits, FloodSettings
from tazcom.common.quota import QuotaBook, QuotaSettings
from tazcom.common.scoring import PeerScores, ScoreSettings
from tests.corenet import OPEN, Identity, Net, Recorder
from tests.unit.test_routercore import PEER, PEER2, entry, envs, feed, reasons, shown

HUMAN = replace(OPEN, flood=FloodSettings())  # the default limits, no bans


def limited_net(**kw) -> Net:
    return Net(1, settings=replace(HUMAN, **kw))


# -- flood limits --------------------------------------------------------------------------


def test_an_origin_gets_its_burst_then_the_human_rate() -> None:
    net = limited_net()
    me, alice = net.nodes[0], Identity(b"alice")
    burst = int(FloodSettings().room_burst)
    rec = feed(me, envs(*(entry(net, alice, seq=i) for i in range(burst + 10))))
    assert len(shown(rec)) == burst and reasons(rec) == ["rate_limited"] * 10
    assert all(r.source.startswith("origin ") for r in rec.of(rc.Rejected))
    assert me.core.counts["rate_limited"] == 10 and me.core.flood.counts["origin"] == 10
    net.run_for(1.0)  # 2 tokens back
    rec = feed(me, envs(*(entry(net, alice, seq=100 + i) for i in range(3))))
    assert len(shown(rec)) == 2 and reasons(rec) == ["rate_limited"]


def test_kinds_have_their_own_buckets_and_others_are_not_held_back() -> None:
    net = limited_net(flood=FloodSettings(room_burst=1, room_rate=0.001))
    me, alice, bob = net.nodes[0], Identity(b"alice"), Identity(b"bob")
    rec = feed(me, envs(entry(net, alice, seq=1), entry(net, alice, seq=2),
                        entry(net, bob, seq=1)))
    assert len(shown(rec)) == 2 and reasons(rec) == ["rate_limited"]


def test_a_backlog_comes_back_at_the_backlog_rate() -> None:
    """History stamped long ago (catch-up) is not held to the human rate of fresh posts."""
    net = limited_net()
    me, alice = net.nodes[0], Identity(b"alice")
    old = int((net.now - 2 * FRESH_S) * 1000)
    def backlog(first: int, n: int) -> list[bytes]:
        items = [entry(net, alice, seq=first + i, ts=old + i) for i in range(n)]
        return [envs(*items[i:i + 50]) for i in range(0, n, 50)]

    rec = feed(me, *backlog(0, 200))
    assert len(shown(rec)) == 200 and reasons(rec) == []
    rec = feed(me, *backlog(1000, int(FloodSettings().backlog_burst)))
    assert reasons(rec) == ["rate_limited"] * 200  # 500 per burst in all


def test_forged_copies_do_not_spend_an_honest_origins_allowance() -> None:
    net = limited_net(flood=FloodSettings(room_burst=2, room_rate=0.001))
    me, alice = net.nodes[0], Identity(b"alice")
    forged = [(0, entry(net, alice, seq=i)[1], bytes(64)) for i in range(10)]
    assert reasons(feed(me, envs(*forged))) == ["bad_signature"] * 10
    rec = feed(me, envs(entry(net, alice, seq=50), entry(net, alice, seq=51)))
    assert len(shown(rec)) == 2


def test_a_link_and_an_address_are_limited_across_origins() -> None:
    net = limited_net(flood=FloodSettings(link_envelope_burst=5, link_envelope_rate=0.001,
                                          address_burst=8, address_rate=0.001))
    me = net.nodes[0]
    sybils = [Identity(bytes([i]) * 4) for i in range(20)]
    rec = feed(me, envs(*(entry(net, s) for s in sybils[:7])))
    assert len(shown(rec)) == 5 and reasons(rec) == ["rate_limited"] * 2
    assert me.core.flood.counts["link"] == 2
    # two links from one host share its address bucket
    Recorder(me).run(me.core.set_links({PEER, PEER2}, net.now, net.mono,
                                       {PEER: "10.0.0.9:4000", PEER2: "10.0.0.9:4001"}))
    fresh = limited_net(flood=FloodSettings(address_burst=8, address_rate=0.001))
    n = fresh.nodes[0]
    Recorder(n).run(n.core.set_links({PEER, PEER2}, fresh.now, fresh.mono,
                                     {PEER: "10.0.0.9:4000", PEER2: "10.0.0.9:4001"}))
    a = feed(n, envs(*(entry(fresh, s) for s in sybils[:5])), link=PEER)
    b = feed(n, envs(*(entry(fresh, s) for s in sybils[5:10])), link=PEER2)
    assert len(shown(a)) + len(shown(b)) == 8 and n.core.flood.counts["address"] == 2


def test_catch_up_answers_what_the_protocol_needs_no_more() -> None:
    """A neighbour sending summaries or ids in a loop does not make us read the store and
    send without end (an amplifier): a summary a minute and a link-up's are answered."""
    from tazcom.common import routing
    net = limited_net()
    me, alice = net.nodes[0], Identity(b"alice")
    feed(me, envs(entry(net, alice)))
    me.set_links({PEER})
    burst = int(FloodSettings().summary_burst)
    rec = feed(me, *[routing.encode_summary([])] * (burst + 5))
    assert reasons(rec) == ["rate_limited"] * 5
    assert len([a for a in rec.of(rc.Send) if a.link == PEER]) == burst  # one answer each
    rec = feed(me, *[routing.encode_ids(0, [])] * int(FloodSettings().ids_burst + 3))
    assert reasons(rec) == ["rate_limited"] * 3
    assert me.core.flood.counts["summary"] == 5 and me.core.flood.counts["ids"] == 3


def test_own_posts_are_held_to_the_limit_others_enforce() -> None:
    net = limited_net(flood=FloodSettings(room_burst=3, room_rate=0.5))
    me = net.nodes[0]
    answers = me.post_many([(f"m{i}", None, None) for i in range(5)])
    refused = [a for a in answers if isinstance(a, rc.PostRefused)]
    assert len(refused) == 2 and all(r.code == "rate_limited" for r in refused)
    assert "try again in" in refused[0].message and "per second" in refused[0].message
    why = me.core.refuse_post(None, "more", net.mono)
    assert why is not None and why.code == "rate_limited"
    net.run_for(2.1)
    assert me.core.refuse_post(None, "more", net.mono) is None


@given(rate=st.floats(0.1, 100), burst=st.integers(1, 50), n=st.integers(1, 60),
       gap=st.floats(0, 2))
@settings(max_examples=60, deadline=None, derandomize=True)
def test_own_allowance_is_exact(rate: float, burst: int, n: int, gap: float) -> None:
    """``own_allowance`` says 0 exactly when ``take_own`` would succeed, and waiting what it
    says is enough."""
    lim = FloodLimits(FloodSettings(room_rate=rate, room_burst=burst))
    me, t = b"m" * 32, 0.0
    for _ in range(n):
        wait = lim.own_allowance(KIND_ROOM, me, t)
        if wait == 0:
            assert lim.take_own(KIND_ROOM, me, t)
        else:
            assert not lim.take_own(KIND_ROOM, me, t)
            t += wait + 1e-9
            assert lim.take_own(KIND_ROOM, me, t)
        t += gap


def test_links_that_flap_do_not_make_a_node_flood_its_profiles() -> None:
    """A peer that connects and leaves in a loop changes our links each time: our profiles
    are coalesced to the limit our neighbours hold us to, so they never refuse (and ban)
    us for them."""
    net = Net(2, settings=replace(HUMAN, scoring=ScoreSettings()))
    net.line()
    net.run_for(1.0)
    me, honest = net.nodes
    churner = b"c" * 32
    before = len(me.store.rows)
    for i in range(200):
        me.set_links({honest.key} | ({churner} if i % 2 == 0 else set()))
        net.run_for(0.1)
    net.run_for(10.0)
    profiles = [m for m in me.store.rows.values()
                if m.kind == envelope.KIND_PROFILE and m.origin == me.key]
    burst, rate = FloodSettings().profile_burst, FloodSettings().profile_rate
    assert len(profiles) <= burst + rate * 32 + 1, (len(profiles), before)
    assert me.key in honest.core.links and not honest.core.policy
    assert all(r.reason != "rate_limited" for r in honest.rejected)
    assert me.core.directory[honest.key].published[0] == 1


# -- scores and bans -----------------------------------------------------------------------


def test_invalid_envelopes_ban_a_neighbour_for_a_while() -> None:
    net = Net(1, settings=replace(OPEN, scoring=ScoreSettings()))
    me, alice = net.nodes[0], Identity(b"alice")
    rec = Recorder(me)
    rec.run(me.core.set_links({PEER}, net.now, net.mono, {PEER: "10.0.0.9:4000"}))
    forged = [(0, entry(net, alice, seq=i)[1], bytes(64)) for i in range(5)]
    rec = feed(me, envs(*forged))
    assert "banned" in reasons(rec)
    [policy] = [a for a in rec.of(rc.Emit) if a.event is PeerPolicy]
    assert policy.fields["policy"] == "ban" and policy.fields["key"] == PEER.hex()
    assert [a.event for a in rec.of(rc.Emit)].count(PeerScore) >= 1
    assert PEER not in me.core.links and me.store.policies[PEER][1] == "ban"
    assert me.core.counts["banned"] == 1
    # frames still in flight from it are refused; it cannot come back before the ban ends
    assert reasons(feed(me, envs(entry(net, alice, seq=99)))) == ["banned"]
    me.set_links({PEER})
    assert PEER not in me.core.links
    until = me.store.policies[PEER][3]
    net.run_for(until - net.now + 1)
    assert PEER not in me.core.policy and PEER not in me.store.policies
    me.set_links({PEER})
    assert PEER in me.core.links


def test_window_rejects_and_relayed_floods_do_not_cost_a_relay_its_score() -> None:
    net = Net(1, settings=replace(HUMAN, scoring=ScoreSettings()))
    me, alice = net.nodes[0], Identity(b"alice")
    me.set_links({PEER})
    far_future = int(net.now * 1000) + 3_600_000
    feed(me, envs(*(entry(net, alice, seq=i, ts=far_future) for i in range(30))))
    feed(me, envs(*(entry(net, alice, seq=100 + i) for i in range(60))))  # alice floods
    assert me.core.scores.score(PEER, net.mono) > 0 and PEER in me.core.links


def test_a_flooding_neighbour_is_banned() -> None:
    net = Net(1, settings=replace(HUMAN, scoring=ScoreSettings()))
    me, flooder = net.nodes[0], Identity(b"flooder")
    me.set_links({flooder.key})
    rec = feed(me, envs(*(entry(net, flooder, seq=i) for i in range(60))), link=flooder.key)
    assert "banned" in reasons(rec) and flooder.key not in me.core.links


def test_scores_decay_and_colocation_counts_only_real_addresses() -> None:
    s = PeerScores(ScoreSettings(colocation_threshold=1))
    a, b, c = b"a" * 32, b"b" * 32, b"c" * 32
    s.linked(a, "10.0.0.5:1", 0)
    s.linked(b, "10.0.0.5:2", 0)
    s.linked(c, "127.0.0.1:3", 0)
    assert s.score(a, 0) == -10 and s.score(c, 0) == 0  # loopback is one machine
    s.invalid(c, 0, 3)
    assert s.score(c, 0) == -90
    assert -90 < s.score(c, 300) < -5  # the count decayed by 1/e: about -12, +3 for P1
    assert s.ban(c, 300) == 60 and s.ban(c, 400) == 120 and s.ban(c, 9000) == 60


def test_a_positive_history_buys_tolerance() -> None:
    s = PeerScores()
    k = b"k" * 32
    s.linked(k, "10.0.0.5:1", 0)
    s.first_delivery(k, 0, 100)
    s.invalid(k, 3600, 3)
    assert s.score(k, 3600) > ScoreSettings().ban_threshold


# -- blocks and mutes ------------------------------------------------------------------------


def block(node, key: bytes, policy: str | None) -> Recorder:
    rec = Recorder(node)
    rec.run(node.core.set_policy(key, policy, node.net.now, node.net.mono))
    return rec


def test_a_blocked_origin_is_not_shown_stored_or_relayed_across_a_restart() -> None:
    net = Net(3)
    net.line()
    net.run_for(1.0)
    a, b, c = net.nodes
    first = a.post("before the block")
    net.run_for(1.0)
    assert first.message_id in b.store.rows
    rec = block(b, a.key, "block")
    [ev] = [x for x in rec.of(rc.Emit) if x.event is PeerPolicy]
    assert ev.fields["policy"] == "block"
    assert first.message_id not in b.store.rows  # what b held for others from a is gone
    b.restart()
    net.run_for(1.0)
    assert a.key not in b.core.links
    second = a.post("after the block")
    net.run_for(2.0)
    assert b.shown[second.message_id] == 0 and second.message_id not in b.store.rows
    assert c.shown[second.message_id] == 0
    assert b.core.counts["blocked"] >= 1 or a.key not in b.core.links
    refused = b.core.refuse_post(a.key, "hi")
    assert refused is not None and refused.code == "blocked"
    block(b, a.key, None)
    b.set_links(b.links | {a.key})
    net.settle()
    assert b.shown[second.message_id] == 1 and c.shown[second.message_id] == 1


def test_a_muted_origin_is_relayed_and_stored_but_not_shown() -> None:
    net = Net(3)
    net.line()
    net.run_for(1.0)
    a, b, c = net.nodes
    block(b, a.key, "mute")
    b.restart()
    net.run_for(1.0)
    sent = a.post("muted at b")
    dm = a.post("a dm to b", b)
    net.run_for(2.0)
    assert sent.message_id in b.store.rows and b.shown[sent.message_id] == 0
    assert c.shown[sent.message_id] == 1
    assert dm.message_id in b.store.rows and b.shown[dm.message_id] == 0
    assert a.statuses[dm.message_id] == "delivered"  # still acknowledged: it arrived


# -- quotas ------------------------------------------------------------------------------------


@given(usage=st.dictionaries(st.binary(min_size=1, max_size=2), st.integers(1, 10_000),
                             max_size=12),
       per=st.integers(1, 5000), total=st.integers(1, 20_000))
@settings(max_examples=200, deadline=None, derandomize=True)
def test_the_quota_plan_gets_under_both_quotas_taking_from_the_largest(
        usage: dict[bytes, int], per: int, total: int) -> None:
    book = QuotaBook(QuotaSettings(origin_bytes=per, total_bytes=total))
    for k, v in usage.items():
        book.add(k, v)
    plan = dict(book.over())
    after = {k: v - plan.get(k, 0) for k, v in usage.items()}
    assert all(0 <= v <= per for v in after.values())
    assert sum(after.values()) <= total
    if plan:  # nobody is cut below an origin that kept more
        cut = [k for k in plan if after[k] < min(usage[k], per)]
        if cut:
            level = max(after[k] for k in cut)
            assert all(v <= level + 1 for k, v in after.items() if k in cut)
            assert all(after[k] <= level + 1 or k not in cut for k in after)


def test_over_quota_the_oldest_of_the_largest_origin_go_never_ours_or_to_us() -> None:
    small = QuotaSettings(origin_bytes=2000, total_bytes=3500)
    net = Net(2, settings=replace(OPEN, quota=small))
    net.line()
    net.run_for(1.0)
    me, friend = net.nodes
    flooder, honest = Identity(b"flooder"), Identity(b"honest")
    mine = me.post("my own words")
    to_me = friend.post("for you", me)
    net.run_for(1.0)
    t0 = int(net.now * 1000)
    flood = [entry(net, flooder, seq=i, ts=t0 + i, body=b"x" * 100) for i in range(40)]
    feed(me, envs(*flood))
    used = me.core.quota.usage[flooder.key]
    assert used <= small.origin_bytes
    kept = [e for e in flood if envelope.message_id(e[1]) in me.store.rows]
    assert kept == flood[-len(kept):]  # the newest stay
    feed(me, envs(*(entry(net, honest, seq=i, ts=t0 + i, body=b"y" * 100)
                    for i in range(15))))
    assert me.core.quota.total <= small.total_bytes
    assert me.core.quota.usage[flooder.key] >= me.core.quota.usage[honest.key] - 300
    assert mine.message_id in me.store.rows and to_me.message_id in me.store.rows
    assert me.core.counts["evicted"] > 0
    # evicted ids stay in the catch-up index: neighbours holding them see equal digests
    assert envelope.message_id(flood[0][1]) in me.core.index
    # usage is rebuilt from the store after a restart, and matches
    before = dict(me.core.quota.usage)
    me.restart()
    assert me.core.quota.usage == before


def test_evictable_rows_are_defined_once() -> None:
    me, other = b"m" * 32, b"o" * 32
    assert quota.evictable(KIND_ROOM, other, None, me)
    assert quota.evictable(KIND_DM, other, b"x" * 32, me)
    assert not quota.evictable(KIND_DM, other, me, me)
    assert not quota.evictable(KIND_ROOM, me, None, me)
    assert not quota.evictable(envelope.KIND_PROFILE, other, None, me)
    assert math.isinf(FloodSettings.unlimited().room_rate) is False


def test_loopback_is_one_machines_own_mesh_not_one_sender() -> None:
    lim = FloodLimits(FloodSettings(address_burst=2, address_rate=0.001))
    assert all(lim.admit_link(bytes([i]) * 32, "127.0.0.1:4000", 0) is None for i in range(9))
    assert [lim.admit_link(bytes([i]) * 32, "[fe80::1%eth0]:4000", 0) for i in range(3)] \
        == [None, None, "address"]
