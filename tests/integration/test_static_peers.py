"""Peers without multicast (issue 14): two nodes on loopback that cannot find each other by
mDNS (each browses a service type of its own, as if multicast were filtered) link through
``tazcom connect``, keep the static peer across a restart, and come back after the peer's
gateway restarts; a static peer that never answers backs off and says why.
"""

from __future__ import annotations

import json

from tazcom.common import rpc
from tests.harness import request, wait_for


def _config(kind: str) -> str:
    return f'[discovery]\nservice_type = "_tazcom{kind}._tcp.local."\n'


def test_connect_links_two_nodes_mdns_cannot_see(make_node) -> None:
    a = make_node("stat-a", config=_config("sa")).start()
    b = make_node("stat-b", config=_config("sb")).start()
    a.wait_up()
    b.wait_up()
    port = request(b, "gateway", rpc.GetGatewayInfo()).port
    assert "stat-b" not in a.peers(), "no multicast between them: mDNS finds nobody"
    row = a.cli_json("connect", f"127.0.0.1:{port}")[0]
    assert row["address"] == f"127.0.0.1:{port}" and row["source"] == "added"
    a.wait_peer("stat-b", ("verified",), timeout=10)
    b.wait_peer("stat-a", ("verified",), timeout=10)
    listed = a.cli_json("connect", "--list")
    assert [(r["address"], r["state"], r["nickname"]) for r in listed] == [
        (f"127.0.0.1:{port}", "linked", "stat-b")]
    assert json.loads((a.home / "static_peers.json").read_text()) == [f"127.0.0.1:{port}"]
    # b's gateway restarts: a dials again at once (the link had worked)
    b.ctl("restart", "tazcom:gateway")
    b.wait_up(20)
    wait_for(lambda: (p := a.peers().get("stat-b")) and p["state"] == "verified", 15,
             "a linked to b again")
    # a's gateway restarts: the static peer was kept (static_peers.json)
    a.ctl("restart", "tazcom:gateway")
    a.wait_up(20)
    a.wait_peer("stat-b", ("verified",), timeout=15)
    # removed: listed no more
    assert a.cli_json("connect", "--remove", f"127.0.0.1:{port}") == []
    assert json.loads((a.home / "static_peers.json").read_text()) == []


def test_a_static_peer_that_never_answers_backs_off_and_says_why(make_node) -> None:
    a = make_node("stat-c", config=_config("sc")).start().wait_up()
    out = a.cli("connect", "127.0.0.1:9")  # discard: nothing listens there
    assert "static peer 127.0.0.1:9" in out.stdout
    row = wait_for(lambda: next((r for r in a.cli_json("connect", "--list")
                                 if r["state"] == "failing"), None), 15, "a failing dial")
    assert row["error"] and row["key"] is None
    bad = a.cli("connect", "not a host", check=False)
    assert bad.returncode != 0 and "neither an IP address nor a host name" in bad.stderr


def test_a_static_peer_answering_as_someone_else_is_refused(make_node) -> None:
    """The address of a static peer that proved a key is dialled expecting that key: a
    node that later answers there as someone else (its address reassigned, a spoof) is
    refused with the reason, and not linked."""
    a = make_node("stat-d", config=_config("sd")).start()
    b = make_node("stat-e", config=_config("se")).start()
    a.wait_up()
    b.wait_up()
    port = request(b, "gateway", rpc.GetGatewayInfo()).port
    a.cli("connect", f"127.0.0.1:{port}")
    a.wait_peer("stat-e", ("verified",), timeout=10)
    b_key = b.key
    b.stop()
    impostor = make_node("stat-f", config=_config("sf"), port=port).start().wait_up()
    row = wait_for(lambda: next((r for r in a.cli_json("connect", "--list")
                                 if "wrong_key" in r["error"]), None), 20,
                   "a refusing the other node at b's address")
    assert row["state"] != "linked" and row["key"] == b_key, row
    assert impostor.cli_json("id")[0]["fingerprint"] in row["error"], row
    assert "stat-f" not in {n for n, p in a.peers().items() if p["state"] == "verified"}
