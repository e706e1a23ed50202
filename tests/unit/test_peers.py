"""Peer table transitions, sequencing, eviction and persistence."""

from __future__ import annotations

import pytest

from tazcom.common.announce import Announcement, instance_label
from tazcom.common.keys import NodeKey
from tazcom.common.mirror import Mirror, Numbering, Update
from tazcom.common.peers import PeerTable, TableFull

K1, K2, K3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


def ann(key: bytes, *, nick: str = "alice", port: int = 4000, at: int = 100,
        addresses: tuple[str, ...] = ("10.0.0.1",)) -> Announcement:
    return Announcement(name=f"{instance_label(key)}._tazcom._tcp.local.", key=NodeKey(key),
                        port=port, nickname=nick, signed_at=at, addresses=addresses)


def kinds(changes: list) -> list[str]:
    return [c.kind for c in changes]


def test_discovered_then_lost_stays_listed() -> None:
    t = PeerTable()
    [c] = t.mdns_seen(ann(K1), now=10)
    assert (c.kind, c.peer.state, c.peer.addresses, c.seq) == (
        "peer.discovered", "discovered", ("10.0.0.1:4000",), 1)
    [c] = t.mdns_gone(ann(K1).name, now=20)
    assert (c.kind, c.peer.state, c.peer.last_seen, c.seq) == ("peer.lost", "offline", 20, 2)
    _, _, peers = t.snapshot(now=30)
    assert [p.state for p in peers] == ["offline"]
    assert peers[0].addresses == ("10.0.0.1:4000",)  # still shown where it was


def test_refresh_without_change_is_silent_and_changes_are_updates() -> None:
    t = PeerTable()
    t.mdns_seen(ann(K1), now=1)
    assert t.mdns_seen(ann(K1, at=101), now=2) == []
    assert kinds(t.mdns_seen(ann(K1, port=4001, at=102), now=3)) == ["peer.updated"]
    assert kinds(t.mdns_seen(ann(K1, nick="alicia", at=103), now=4)) == ["peer.updated"]


def test_older_record_does_not_override_newer() -> None:
    t = PeerTable()
    t.mdns_seen(ann(K1, port=4001, at=200), now=1)
    assert t.mdns_seen(ann(K1, port=4000, at=100), now=2) == []
    assert t.get(K1).addresses == ("10.0.0.1:4001",)


def test_link_states_outrank_mdns() -> None:
    t = PeerTable()
    t.mdns_seen(ann(K1), now=1)
    [c] = t.link_changed(K1, "connected", now=2, address="10.0.0.1:4000")
    assert (c.kind, c.peer.state) == ("peer.updated", "connected")
    [c] = t.link_changed(K1, "verified", now=3, address="10.0.0.1:4000")
    assert (c.peer.state, c.peer.hops) == ("verified", 1)
    assert t.mdns_gone(ann(K1).name, now=4) == []  # goodbye while the link lives
    assert t.get(K1).state == "verified"
    [c] = t.link_changed(K1, "none", now=5)
    assert (c.kind, c.peer.state) == ("peer.lost", "offline")


def test_link_from_unknown_peer_creates_entry() -> None:
    t = PeerTable()
    [c] = t.link_changed(K2, "verified", now=1, address="10.0.0.2:1", nickname="bob")
    assert (c.kind, c.peer.nickname, c.peer.state) == ("peer.discovered", "bob", "verified")
    assert t.link_changed(K3, "none", now=1) == []


def test_mesh_state() -> None:
    t = PeerTable()
    [c] = t.mesh_changed(K3, 3, now=1, nickname="carol")
    assert (c.kind, c.peer.state, c.peer.hops) == ("peer.discovered", "mesh", 3)
    [c] = t.mesh_changed(K3, None, now=2)
    assert c.kind == "peer.lost"


def test_alert_is_visible() -> None:
    t = PeerTable()
    t.mdns_seen(ann(K1), now=1)
    [c] = t.set_alert(K1, "key changed", now=2)
    assert c.peer.alert == "key changed"


def test_eviction_prefers_longest_offline_and_refuses_when_all_live() -> None:
    t = PeerTable(max_peers=2)
    t.mdns_seen(ann(K1), now=1)
    t.mdns_seen(ann(K2), now=2)
    with pytest.raises(TableFull):
        t.mdns_seen(ann(K3), now=3)
    t.mdns_gone(ann(K1).name, now=4)
    t.mdns_seen(ann(K3), now=5)
    assert t.get(K1) is None and t.get(K3) is not None


def test_seq_counts_every_change() -> None:
    numbering = Numbering(77)
    numbering.seq = 1000
    t = PeerTable(numbering=numbering)
    changes = t.mdns_seen(ann(K1), 1) + t.mdns_seen(ann(K2), 1) + t.mdns_gone(ann(K1).name, 2)
    assert [c.seq for c in changes] == [1001, 1002, 1003]
    assert t.snapshot(3)[:2] == (77, 1003)


def test_eviction_is_a_numbered_change_mirrors_can_apply() -> None:
    t = PeerTable(max_peers=2)
    mirror: Mirror = Mirror("peers")
    mirror.snapshot(1, 0, [])
    feed = t.mdns_seen(ann(K1), now=1) + t.mdns_seen(ann(K2, nick="bob"), now=2)
    feed += t.mdns_gone(ann(K1).name, now=3)
    feed += t.mdns_seen(ann(K3, nick="carol"), now=4)  # evicts K1, offline for longest
    assert kinds(feed)[-2:] == ["peer.forgotten", "peer.discovered"]
    for c in feed:
        mirror.update(Update(1, c.seq, c.peer.key,
                             None if c.kind == "peer.forgotten" else c.peer))
    _, seq, peers = t.snapshot(now=5)
    assert mirror.synced and mirror.seq == seq
    assert set(mirror.items) == {p.key for p in peers} == {K2.hex(), K3.hex()}


def test_persistence_round_trip_restores_offline() -> None:
    t = PeerTable()
    t.mdns_seen(ann(K1, nick="alice"), now=50)
    t.link_changed(K2, "verified", now=60, address="10.0.0.2:9", nickname="bob")
    restored = PeerTable(own_key=K3)
    assert restored.load(t.dump()) == 2
    _, _, peers = restored.snapshot(now=100)
    assert {(p.nickname, p.state) for p in peers} == {("alice", "offline"), ("bob", "offline")}


@pytest.mark.parametrize("junk", [None, [], {"version": 9}, {"version": 1, "peers": [
    {"key": "nothex"}, {"key": "ab" * 32}, 7, {"key": "cd" * 32, "nickname": "x",
                                               "last_seen": "soon"}]}])
def test_load_ignores_junk(junk: object) -> None:
    assert PeerTable().load(junk) == 0


def test_own_key_is_never_loaded() -> None:
    t = PeerTable()
    t.mdns_seen(ann(K1), now=1)
    assert PeerTable(own_key=K1).load(t.dump()) == 0
