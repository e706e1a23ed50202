"""Each mirrored table: its update events and its snapshot give the same rows."""

from __future__ import annotations

from tazcom.common import rpc, tables
from tazcom.common.events import LinkDown, LinkUp, MeshPeer, PeerVerified
from tazcom.common.mirror import Mirror

K1, K2 = "ab" * 32, "cd" * 32
E = 99


def test_link_events_and_the_links_snapshot_agree() -> None:
    up = LinkUp(src="gateway", ts=1, epoch=E, seq=1, link=3, address="10.0.0.2:4000",
                direction="out", key=K1)
    verified = PeerVerified(src="gateway", ts=2, epoch=E, seq=2, link=3, key=K1,
                            nickname="bob", address="10.0.0.2:4000", direction="out",
                            version=1)
    inbound = LinkUp(src="gateway", ts=3, epoch=E, seq=3, link=4, address="10.0.0.3:5555",
                     direction="in")
    by_events: Mirror = Mirror("links")
    by_events.snapshot(E, 0, [])
    for ev in (up, verified, inbound):
        by_events.update(tables.LINKS.update(ev))
    reply = rpc.LinkList(epoch=E, seq=3, links=(
        rpc.LinkInfo(link=3, address="10.0.0.2:4000", direction="out", state="open",
                     since=5.0, key=K1, nickname="bob", version=1, frames_in=9, frames_out=7),
        rpc.LinkInfo(link=4, address="10.0.0.3:5555", direction="in", state="handshake",
                     since=6.0)))
    by_snapshot: Mirror = Mirror("links")
    by_snapshot.snapshot(*tables.LINKS.snapshot(reply))
    assert by_events.items == by_snapshot.items
    down = LinkDown(src="gateway", ts=4, epoch=E, seq=4, link=3, address="10.0.0.2:4000",
                    direction="out", key=K1, reason="timeout")
    [change] = by_events.update(tables.LINKS.update(down))
    assert change.new is None and change.old.key == K1


def test_peer_links_take_the_strongest_state_per_peer() -> None:
    rows = [
        tables.LinkRow("handshake", "out", "10.0.0.2:4000", K1),
        tables.LinkRow("open", "in", "10.0.0.2:5123", K1, "bob"),
        tables.LinkRow("handshake", "out", "10.0.0.3:4000", K2),
        tables.LinkRow("handshake", "in", "10.0.0.9:6000", None),  # not yet named
    ]
    links = tables.peer_links(rows)
    assert links[K1] == tables.PeerLink("verified", None, "bob")  # inbound: no address
    assert links[K2] == tables.PeerLink("connected", "10.0.0.3:4000", None)
    assert len(links) == 2
    assert tables.verified_keys(rows) == {bytes.fromhex(K1)}


def test_mesh_peer_without_hops_removes_the_node() -> None:
    ev = MeshPeer(src="router", ts=1, epoch=E, seq=5, key=K1, nickname="carol", hops=None,
                  enc_key=K2)
    update = tables.MESH.update(ev)
    assert update is not None and update.value is None and update.key == K1
    ev = MeshPeer(src="router", ts=1, epoch=E, seq=6, key=K1, nickname="carol", hops=3,
                  enc_key=K2)
    assert tables.MESH.update(ev).value == rpc.MeshEntry(key=K1, nickname="carol", hops=3,
                                                         enc_key=K2)


def test_health_rows_from_snapshot_and_updates_agree() -> None:
    from tazcom.common.events import ServiceHealth, ServiceHealthChanged

    row = ServiceHealth(service="router", state="up", pid=7, since=3.0, last_heartbeat=9.0)
    report = rpc.StatusReport(epoch=E, seq=4, services=(row,))
    by_snapshot: Mirror = Mirror("health")
    by_snapshot.snapshot(*tables.HEALTH.snapshot(report))
    ev = ServiceHealthChanged(src="bus", ts=1, epoch=E, seq=4,
                              health=row.replace(last_heartbeat=None))
    by_events: Mirror = Mirror("health")
    by_events.snapshot(E, 3, [])
    by_events.update(tables.HEALTH.update(ev))
    assert by_events.items == by_snapshot.items
