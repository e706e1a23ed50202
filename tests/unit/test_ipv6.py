"""IPv6 (issue 14): address text, scopes, our networks, dial order and one link per
dual-stack pair; the mDNS record's addresses; how the services read the kernel's
addresses (pure parts, with the kernel's tables given)."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any

import nacl.signing
import pytest

from tazcom.common import announce
from tazcom.common.addresses import (
    ENDPOINT_MAX,
    LocalNetwork,
    join,
    local_for,
    ordered,
    parse_host,
    split_address,
    with_scope,
)
from tazcom.common.config import ConfigError, load_config
from tazcom.common.errors import RemoteProtocolError
from tazcom.common.events import LinkUp, PeerInfo
from tazcom.common.keys import fingerprint
from tazcom.common.linkmanager import Dial, LinkManager
from tazcom.common.mirror import Change
from tazcom.common.staticpeers import normalize
from tazcom.services import netif

from .test_linkmanager import HIGH, LOW, Net, Node

# -- address text ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "host"), [
    ("10.0.0.1", "10.0.0.1"),
    ("FD00:0:0::0001", "fd00::1"),
    ("fe80::1%eth0", "fe80::1%eth0"),
    ("fe80::1%3", "fe80::1%3"),
    ("fd00::1%eth0", "fd00::1"),  # a scope only belongs to a link-local address
    ("::ffff:10.0.0.7", "10.0.0.7"),  # IPv4-mapped: the IPv4 address
    ("fe80::1", "fe80::1"),
])
def test_hosts_are_canonical(text: str, host: str) -> None:
    assert parse_host(text) == host


@pytest.mark.parametrize("text", [
    "", "x", "10.0.0.1%eth0", "fe80::1%", "fe80::1%eth 0", "fe80::1%e\x1bth",
    "fe80::1%" + "a" * 16, "fe80::1%a%b", "10.0.0.256", "host.example", None, 5, b"::1",
])
def test_what_is_no_host(text: Any) -> None:
    assert parse_host(text) is None


@pytest.mark.parametrize(("address", "parsed"), [
    ("10.0.0.1:80", ("10.0.0.1", 80)),
    ("[fd00::1]:4270", ("fd00::1", 4270)),
    ("[FD00::0:1]:1", ("fd00::1", 1)),
    ("[fe80::1%veth0-a]:65535", ("fe80::1%veth0-a", 65535)),
    ("[::ffff:10.0.0.1]:80", ("10.0.0.1", 80)),
])
def test_endpoints_split(address: str, parsed: tuple[str, int]) -> None:
    assert split_address(address) == parsed
    assert split_address(join(*parsed)) == parsed  # join writes what split reads


@pytest.mark.parametrize("address", [
    "fd00::1:80",  # IPv6 needs its brackets
    "[fd00::1]", "[fd00::1]:", "[fd00::1]:0", "[fd00::1]:65536", "[fd00::1]:+1",
    "[fd00::1]:\uff18", "[fd00::1]80", "[10.0.0.1]:80", "[::]:80", "[ff02::fb]:5353",
    "[fe80::1%eth/0]:80", "[fe80::1%]:80", "10.0.0.1", "10.0.0.1:0", "x:1", ":80",
    "[" + "1:" * 40 + "]:80", None, 7,
])
def test_what_is_no_endpoint(address: Any) -> None:
    assert split_address(address) is None


def test_the_longest_endpoint_fits_the_event_limit() -> None:
    longest = join("fe80:1234:5678:9abc:def0:1234:5678:9abc%" + "a" * 15, 65535)
    assert len(longest) == ENDPOINT_MAX == 63
    assert split_address(longest) is not None
    LinkUp(src="gateway", ts=1.0, epoch=1, seq=1, link=1, address=longest, direction="in",
           key=None, peer_state="connected")  # the bus's Address type takes it


@pytest.mark.parametrize("address", ["[fd00::1]:4270", "[fe80::1%eth0]:1", "10.0.0.1:9"])
def test_peer_info_takes_v6_endpoints(address: str) -> None:
    key = b"\x01" * 32
    PeerInfo(key=key.hex(), fingerprint=fingerprint(key), nickname="bob",
             addresses=(address,), state="discovered", last_seen=1.0, since=1.0)


def test_a_peers_scope_is_replaced_by_ours() -> None:
    # the scope a peer wrote names its interface, not ours: we write the one we heard it on
    assert with_scope("fe80::1%wlan0", "veth0") == "fe80::1%veth0"
    assert with_scope("fe80::1", "veth0") == "fe80::1%veth0"
    assert with_scope("fe80::1%wlan0", None) == "fe80::1"
    assert with_scope("fd00::1", "veth0") == "fd00::1"
    assert with_scope("10.0.0.1", "veth0") == "10.0.0.1"


def test_dial_order_is_ipv4_then_global_then_link_local_unless_ipv6_is_preferred() -> None:
    given = ["[fe80::2%eth0]:9", "[fd00::2]:9", "10.0.0.2:9", "junk", "[FD00::2]:9",
             "10.0.0.3:9"]
    assert ordered(given) == ("10.0.0.2:9", "10.0.0.3:9", "[fd00::2]:9", "[fe80::2%eth0]:9")
    assert ordered(given, prefer_ipv6=True) == (
        "[fd00::2]:9", "[fe80::2%eth0]:9", "10.0.0.2:9", "10.0.0.3:9")


# -- our networks ---------------------------------------------------------------------------------

NETS = [LocalNetwork.parse(t) for t in
        ("10.0.0.1/24", "fd00::1/64", "fe80::1%eth0/64", "fe80::a%eth1/64")]


@pytest.mark.parametrize(("host", "found"), [
    ("10.0.0.9", ("10.0.0.1", "10.0.0.9")),
    ("fd00::9", ("fd00::1", "fd00::9")),
    ("fe80::9%eth0", ("fe80::1%eth0", "fe80::9%eth0")),
    ("fe80::9%eth1", ("fe80::a%eth1", "fe80::9%eth1")),
    ("fe80::9%eth2", None),  # a link we are not on
    ("fe80::9", None),  # which of our two links? none can say
    ("fd01::9", None),
    ("10.0.1.9", None),
])
def test_the_local_address_for_a_host(host: str, found: tuple[str, str] | None) -> None:
    assert local_for(NETS, host) == found


def test_a_link_local_host_without_scope_is_on_our_only_link() -> None:
    nets = [LocalNetwork.parse("fe80::1%eth0/64"), LocalNetwork.parse("fd00::1/64")]
    assert local_for(nets, "fe80::9") == ("fe80::1%eth0", "fe80::9%eth0")


def test_networks_from_interfaces_and_text() -> None:
    assert LocalNetwork.of(ipaddress.IPv4Interface("10.0.0.1/24")) == NETS[0]
    assert LocalNetwork.of(ipaddress.IPv6Interface("fd00::1/64")) == NETS[1]
    assert LocalNetwork.of("fe80::1%eth0/64").scope == "eth0"
    assert LocalNetwork.of("fd00::5").network == ipaddress.ip_network("fd00::5/128")
    with pytest.raises(ValueError):
        LocalNetwork.parse("eth0/24")


# -- the link manager -------------------------------------------------------------------------

V6 = {LOW.key: ("fd00::1", "fe80::1%eth0"), HIGH.key: ("fd00::2", "fe80::2%eth0")}


def dual(node: Node, **kw: Any) -> LinkManager:
    g, ll = V6[node.key]
    return node.start(networks=[f"{node.ip}/24", f"{g}/64", f"{ll}/64"], **kw)


def peer(node: Node, addresses: tuple[str, ...]) -> Change:
    return node.info(addresses=addresses)


def dials(actions: list) -> list[Dial]:
    return [a for a in actions if isinstance(a, Dial)]


def test_a_dual_stack_peer_is_dialled_one_address_at_a_time_ipv4_first() -> None:
    low = dual(LOW)
    addresses = ("[fe80::2%eth0]:4000", "[fd00::2]:4000", HIGH.address)
    first = dials(low.peers_changed([peer(HIGH, addresses)], 100.0))
    assert [(d.address, d.host, d.local_ip) for d in first] == [
        (HIGH.address, HIGH.ip, LOW.ip)]
    second = dials(low.dial_failed(HIGH.key, HIGH.address, 101.0))
    assert [(d.address, d.host, d.local_ip) for d in second] == [
        ("[fd00::2]:4000", "fd00::2", "fd00::1")]
    third = dials(low.dial_failed(HIGH.key, "[fd00::2]:4000", 102.0))
    assert [(d.address, d.host, d.local_ip) for d in third] == [
        ("[fe80::2%eth0]:4000", "fe80::2%eth0", "fe80::1%eth0")]
    assert dials(low.dial_failed(HIGH.key, "[fe80::2%eth0]:4000", 103.0)) == []  # backs off


def test_prefer_ipv6_dials_ipv6_first() -> None:
    low = dual(LOW, prefer_ipv6=True)
    actions = low.peers_changed([peer(HIGH, (HIGH.address, "[fd00::2]:4000"))], 100.0)
    assert [d.address for d in dials(actions)] == ["[fd00::2]:4000"]


def test_link_local_on_another_interface_is_not_dialled() -> None:
    low = dual(LOW)
    actions = low.peers_changed([peer(HIGH, ("[fe80::2%eth9]:4000", "[fd99::2]:4000"))],
                                100.0)
    assert dials(actions) == []
    assert low.local_ip_for("fe80::2%eth0") == "fe80::1%eth0"
    assert low.local_ip_for("fd00::77") == "fd00::1"
    assert low.local_ip_for("fe80::2%eth9") is None
    assert low.local_ip_for("not an address") is None


def test_v6_connections_are_taken_and_counted_per_address() -> None:
    high = dual(HIGH, max_handshakes_per_address=2)
    made = [high.connection_made("in", f"[fd00::1]:{port}", 100.0)[0] for port in (1, 2, 3)]
    assert made[0] is not None and made[1] is not None and made[2] is None
    assert high.connection_made("in", "[fe80::1%eth0]:5", 100.0)[0] is not None
    refused = high.connection_made("in", "fd00::1:6", 100.0)  # no brackets: not an address
    assert refused[0] is None and refused[1][0].reason == "bad_message"


class DualNet(Net):
    """Two nodes reachable over IPv4 and IPv6: a v6 address leads to the same core."""

    def core_at(self, host: str) -> LinkManager | None:
        v4 = {v6: n.ip for n in (LOW, HIGH) for v6 in V6[n.key]}
        return super().core_at(v4.get(host.strip("[]"), host))


@pytest.mark.parametrize("low_dials", ["v4", "v6"])
def test_dialled_over_ipv4_and_ipv6_at_once_both_ends_keep_the_same_one_link(
        low_dials: str) -> None:
    net = DualNet()
    low, high = net.add(LOW, networks=[]), net.add(HIGH, networks=[])
    (low_g, low_ll), (high_g, high_ll) = V6[LOW.key], V6[HIGH.key]
    if low_dials == "v4":  # the lower key over IPv4, the higher over both IPv6 addresses
        kept = HIGH.address
        net.connect(low, HIGH.address, HIGH.key)
        net.connect(high, f"[{low_g}]:4000", LOW.key, from_ip=f"[{high_g}]")
        net.connect(high, f"[{low_ll}]:4000", LOW.key, from_ip=f"[{high_ll}]")
    else:  # the other way round
        kept = f"[{high_ll}]:4000"
        net.connect(high, LOW.address, LOW.key)
        net.connect(low, kept, HIGH.key, from_ip=f"[{low_ll}]")
    net.settle()
    assert net.linked(low, high)
    assert len(net.open_links(low)) == len(net.open_links(high)) == 1
    assert low.verified[HIGH.key].address == kept  # the link the lower key dialled


# -- the mDNS record --------------------------------------------------------------------------


def record(addresses: list[str]) -> announce.Announcement:
    sk = nacl.signing.SigningKey(b"\x07" * 32)
    key = bytes(sk.verify_key)
    txt = announce.unsigned_txt(key=key, port=4270, nickname="bob", now=1000)
    txt[b"s"] = sk.sign(announce.signed_bytes(txt)).signature.hex().encode()
    name = f"{announce.instance_label(key)}._tazcom._tcp.local."
    return announce.validate(name=name, properties=txt, srv_port=4270, addresses=addresses)


def test_a_record_keeps_ipv4_global_and_scoped_link_local_addresses() -> None:
    ann = record(["10.0.0.2", "FD00::2", "fe80::2%veth0", "fe80::3", "::", "ff02::fb", "junk"])
    assert ann.addresses == ("10.0.0.2", "fd00::2", "fe80::2%veth0")
    assert ann.endpoints == ("10.0.0.2:4270", "[fd00::2]:4270", "[fe80::2%veth0]:4270")


def test_a_v6_only_record_is_usable_and_an_unscoped_link_local_one_is_not() -> None:
    assert record(["fe80::2%eth0"]).endpoints == ("[fe80::2%eth0]:4270",)
    with pytest.raises(RemoteProtocolError) as e:
        record(["fe80::2"])
    assert e.value.code == "no_address"


# -- the services' view of the kernel -----------------------------------------------------------

IF_INET6 = """\
fd000000000000000000000000000001 02 40 00 80       veth0
fe800000000000000000000000000001 02 40 20 80       veth0
fd000000000000000000000000000099 02 40 00 01       veth0
fd000000000000000000000000000098 02 40 00 40       veth0
fd000000000000000000000000000097 02 40 00 20       veth0
00000000000000000000000000000001 01 80 10 80       lo
garbage line
"""


def test_ipv6_addresses_from_the_kernel_table(tmp_path: Path, monkeypatch) -> None:
    table = tmp_path / "if_inet6"
    table.write_text(IF_INET6)
    monkeypatch.setattr(netif, "IF_INET6", table)
    monkeypatch.setattr(netif, "scope_name", lambda index: {1: "lo", 2: "veth0"}[index])
    # temporary (0x01), tentative (0x40) and deprecated (0x20) addresses are left out
    assert netif._ipv6_from_proc() == {
        "veth0": [("fd00::1", 64), ("fe80::1%veth0", 64)], "lo": [("::1", 128)]}


@pytest.fixture
def kernel(monkeypatch) -> None:
    table = {"lo": [("127.0.0.1", 8), ("::1", 128)],
             "veth0": [("fe80::1%veth0", 64), ("10.0.0.1", 24), ("fd00::1", 64)],
             "veth1": [("fe80::1%veth1", 64)]}
    monkeypatch.setattr(netif, "_addresses_by_interface", lambda: table)
    monkeypatch.setattr(netif, "_is_up", lambda name: True)


@pytest.mark.usefixtures("kernel")
@pytest.mark.parametrize(("wanted", "usable"), [
    ((), ["10.0.0.1", "fd00::1", "fe80::1%veth0", "fe80::1%veth1"]),
    (("veth0",), ["10.0.0.1", "fd00::1", "fe80::1%veth0"]),
    (("lo",), ["127.0.0.1"]),  # loopback gives IPv6 only when ::1 is named
    (("::1",), ["::1"]),
    (("fd00::1",), ["fd00::1"]),
    (("fe80::1%veth1",), ["fe80::1%veth1"]),
    (("fe80::1",), ["fe80::1%veth0", "fe80::1%veth1"]),
    (("fd00::2", "veth9"), []),
])
def test_usable_addresses_v4_and_v6(wanted: tuple[str, ...], usable: list[str]) -> None:
    assert netif.usable_addresses(wanted) == usable


def test_many_interfaces_give_at_most_sixteen_addresses_ipv4_first(monkeypatch) -> None:
    table = {f"veth{i}": [(f"fe80::{i + 1}%veth{i}", 64)] for i in range(30)}
    table["eth0"] = [("fe80::99%eth0", 64), ("192.168.1.5", 24)]
    monkeypatch.setattr(netif, "_addresses_by_interface", lambda: table)
    monkeypatch.setattr(netif, "_is_up", lambda name: True)
    usable = netif.usable_addresses(())
    assert len(usable) == netif.MAX_ADDRESSES == 16 and usable[0] == "192.168.1.5"


@pytest.mark.usefixtures("kernel")
def test_networks_and_mdns_interfaces() -> None:
    ips = ["10.0.0.1", "fd00::1", "fe80::1%veth0", "fe80::1%veth1", "fd00::7"]
    assert [(n.local, str(n.network)) for n in netif.interface_networks(ips)] == [
        ("10.0.0.1", "10.0.0.0/24"), ("fd00::1", "fd00::/64"),
        ("fe80::1%veth0", "fe80::/64"), ("fe80::1%veth1", "fe80::/64"),
        ("fd00::7", "fd00::7/128")]
    # zeroconf: each IPv4 address, one IPv6 address per interface (its link-local one)
    assert netif.mdns_interfaces(["10.0.0.1", "fd00::1", "fe80::1%veth0"]) == [
        "10.0.0.1", "fe80::1"]
    assert netif.mdns_interfaces(["fd00::1"]) == ["fd00::1"]


def test_socket_addresses_and_resolved_ones_get_our_interface_as_scope() -> None:
    lo = socket.if_indextoname(1)  # the loopback interface is index 1 in every namespace
    assert netif.endpoint_text(("10.0.0.1", 80)) == "10.0.0.1:80"
    assert netif.endpoint_text(("fd00::1", 80, 0, 0)) == "[fd00::1]:80"
    assert netif.endpoint_text(("fe80::1", 80, 0, 1)) == f"[fe80::1%{lo}]:80"
    assert netif.localized("fe80::1%1", []) == f"fe80::1%{lo}"
    assert netif.localized("fe80::1", ["fe80::9%veth0"]) == "fe80::1%veth0"
    assert netif.localized("fe80::1", ["fe80::9%veth0", "fe80::9%veth1"]) is None
    assert netif.localized("FD00::1", []) == "fd00::1"
    assert netif.localized("junk", []) is None


@pytest.mark.parametrize(("typed", "static"), [
    ("[FE80::1%eth0]:99", "[fe80::1%eth0]:99"),
    ("fd00::1", "[fd00::1]:4270"),
    ("[fd00::1]", "[fd00::1]:4270"),
])
def test_static_peers_are_written_as_endpoints(typed: str, static: str) -> None:
    assert normalize(typed) == static
    assert split_address(static) is not None


def test_prefer_ipv6_is_a_boolean_setting() -> None:
    defaults = (Path(__file__).resolve().parents[2] / "config" / "default.toml").read_text()
    assert load_config(defaults_text=defaults, env={}).prefer_ipv6 is False
    assert load_config(defaults_text=defaults, env={},
                       node_text="[node]\nprefer_ipv6 = true\n").prefer_ipv6 is True
    with pytest.raises(ConfigError, match="prefer_ipv6"):
        load_config(defaults_text=defaults, env={}, node_text="[node]\nprefer_ipv6 = 1\n")
