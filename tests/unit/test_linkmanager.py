"""The link manager: every gateway decision, with real links wired back to back in memory.

``Net`` plays the shell for several ``LinkManager`` s at once: it carries out their
actions (bytes into the other end's pipe, closes, timers, dials) on a virtual clock,
and checks every emitted event against its schema. Unit tests drive one decision each;
the hypothesis state machine at the end runs random interleavings of connects, bytes,
closes, dial results, peers found and lost and restarts, and checks the invariants
after every step.
"""

from __future__ import annotations

import ipaddress
import logging
import random
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import nacl.signing
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tazcom.common import codec, linkmanager, noise
from tazcom.common.errors import LocalProtocolError
from tazcom.common.events import (
    LinkDown,
    LinkMessage,
    PeerInfo,
    PeerKeyChanged,
    PeerTrusted,
    PeerVerified,
    WireRejected,
)
from tazcom.common.keys import DOMAIN_NOISE_STATIC, fingerprint
from tazcom.common.limits import PART_BODY_MAX
from tazcom.common.link import PART_CAP, Link, LinkClosed
from tazcom.common.linkmanager import (
    BACKOFF_MAX,
    BACKOFF_MIN,
    BULK_HIGH,
    BULK_QUEUE_MAX,
    CAPS,
    DIAL_DEFER,
    LINK_CODES,
    STABLE_LINK,
    CloseConnection,
    Dial,
    Emit,
    LinkManager,
    Refused,
    SavePins,
    Send,
    SetTimer,
    ToRouter,
    WantWrite,
    printable,
    split_address,
)
from tazcom.common.messages import Close, IdentityProof, encode_message
from tazcom.common.mirror import Change, Numbering

NETWORK = ipaddress.IPv4Interface("10.0.0.0/24")


class Node:
    """One node's identity; ``start()`` makes a gateway core for it (a fresh Noise key)."""

    def __init__(self, seed: int, nickname: str, ip: str) -> None:
        self.sk = nacl.signing.SigningKey(bytes([seed]) * 32)
        self.key = bytes(self.sk.verify_key)
        self.nickname = nickname
        self.ip = ip
        self.address = f"{ip}:4000"
        self.pins: dict[str, Any] | None = None
        self.epoch = 0

    def start(self, **kw: Any) -> LinkManager:
        """A gateway process: its keys come from a seeded source, so runs replay."""
        self.epoch += 1
        rng = random.Random(f"{self.nickname} {self.epoch}")
        static, static_pub = noise.x25519_keypair(rng.randbytes(32))
        sig = self.sk.sign(DOMAIN_NOISE_STATIC + static_pub).signature
        kw.setdefault("networks", [ipaddress.IPv4Interface(f"{self.ip}/24")])
        core = LinkManager(numbering=Numbering(self.epoch), nickname=self.nickname,
                           rng=rng, ephemeral=lambda: rng.randbytes(32), **kw)
        if self.pins is not None:
            assert core.load_pins(self.pins) is None
        assert core.set_identity(self.key, static, sig, self.nickname) == []
        return core

    def info(self, state: str = "discovered", addresses: tuple[str, ...] | None = None,
             ) -> Change:
        peer = PeerInfo(key=self.key.hex(), fingerprint=fingerprint(self.key),
                        nickname=self.nickname,
                        addresses=(self.address,) if addresses is None else addresses,
                        state=state, last_seen=1.0, since=1.0)  # type: ignore[arg-type]
        return Change(self.key.hex(), None, peer)


def _nodes() -> list[Node]:
    nodes = [Node(i + 1, nick, f"10.0.0.{i + 1}") for i, nick in
             enumerate(("alice", "bob", "carol", "dave"))]
    return sorted(nodes, key=lambda n: n.key)  # nodes[0] has the lowest key


LOW, HIGH, THIRD, FOURTH = _nodes()


@pytest.fixture(autouse=True)
def _no_pins() -> None:
    """Every test starts with nothing pinned (the nodes are shared)."""
    for node in (LOW, HIGH, THIRD, FOURTH):
        node.pins = None


@dataclass(eq=False)
class End:
    core: LinkManager
    conn: int | None
    #: Bytes this end wrote that the other end has not received yet.
    outbox: bytearray = field(default_factory=bytearray)
    closed: bool = False  # this end closed (after its outbox drains, the other end hears it)
    dead: bool = False  # this end's process hangs: its bytes go nowhere, none come out
    accepted: bool = True  # False while in the listener's backlog
    src: str = ""


@dataclass(eq=False)
class Pipe:
    ends: tuple[End, End]

    def other(self, end: End) -> End:
        return self.ends[1] if end is self.ends[0] else self.ends[0]


class Net:
    """The shell of several cores: TCP in memory, timers on one virtual clock."""

    def __init__(self) -> None:
        self.now = 100.0
        self.ends: dict[tuple[int, int], End] = {}  # (id(core), conn) -> End
        self.pipe_of: dict[int, Pipe] = {}  # id(End) -> Pipe
        self.timers: dict[tuple[int, int | None], float] = {}
        self.cores: dict[int, LinkManager] = {}
        self.node_of: dict[int, Node] = {}
        self.dials: list[tuple[LinkManager, Dial]] = []
        self.emitted: list[tuple[LinkManager, Any]] = []
        self.emitted_at: list[float] = []
        self.to_router: list[tuple[LinkManager, ToRouter]] = []
        self.refused: list[tuple[LinkManager, Refused]] = []
        #: Links whose core waits to write more bulk (``WantWrite``).
        self.want_write: list[tuple[LinkManager, int]] = []
        #: id(core) -> its wall clock's error (s); a core not listed says no time (None).
        self.clock_error: dict[int, float] = {}
        self.port = 40000
        #: Connections waiting for their listener to accept them.
        self.backlog: list[End] = []
        #: Each choice between two links to one peer: (core, kept pipe, dropped pipe).
        self.decisions: list[tuple[LinkManager, Pipe, Pipe]] = []

    def add(self, node: Node, **kw: Any) -> LinkManager:
        core = node.start(**kw)
        self.cores[id(core)] = core
        self.node_of[id(core)] = node
        prefer = core.prefer

        def recorded(a: Any, b: Any, key: bytes) -> tuple[Any, Any]:
            kept, dropped = prefer(a, b, key)
            self.decisions.append((core, self.pipe_of[id(self.ends[(id(core), kept.id)])],
                                   self.pipe_of[id(self.ends[(id(core), dropped.id)])]))
            return kept, dropped

        core.prefer = recorded  # type: ignore[method-assign]
        return core

    def core_at(self, host: str) -> LinkManager | None:
        found = [c for c in self.cores.values() if self.node_of[id(c)].ip == host]
        return found[-1] if found else None

    # -- carrying out actions ------------------------------------------------------------

    def run(self, core: LinkManager, actions: list) -> list:
        for a in actions:
            if isinstance(a, Send):
                end = self.ends.get((id(core), a.conn))
                assert end is not None, f"Send on unknown connection {a.conn}"
                assert not end.closed, "Send after CloseConnection"
                if not end.dead:
                    end.outbox += a.data
            elif isinstance(a, CloseConnection):
                end = self.ends.get((id(core), a.conn))
                assert end is not None and not end.closed, f"closing {a.conn} twice"
                end.closed = True
                self.timers.pop((id(core), a.conn), None)
            elif isinstance(a, SetTimer):
                assert a.at is None or a.at >= self.now - 1e-9 or a.conn is not None
                if a.conn is not None:
                    assert (id(core), a.conn) in self.ends
                    assert not self.ends[(id(core), a.conn)].closed
                if a.at is None:
                    self.timers.pop((id(core), a.conn), None)
                else:
                    self.timers[(id(core), a.conn)] = a.at
            elif isinstance(a, Dial):
                assert ipaddress.IPv4Address(a.host) in NETWORK.network
                assert a.local_ip == self.node_of[id(core)].ip
                self.dials.append((core, a))
            elif isinstance(a, Emit):
                a.event(src="gateway", ts=1.0, **a.fields)  # a valid event, or this raises
                self.emitted.append((core, a))
                self.emitted_at.append(self.now)
            elif isinstance(a, ToRouter):
                self.to_router.append((core, a))
            elif isinstance(a, SavePins):
                self.node_of[id(core)].pins = a.data
            elif isinstance(a, WantWrite):
                assert (id(core), a.conn) in self.ends
                self.want_write.append((core, a.conn))
            else:
                assert isinstance(a, Refused), a
                self.refused.append((core, a))
        return actions

    def events(self, core: LinkManager | None = None, cls: type | None = None) -> list[Any]:
        return [a.fields for c, a in self.emitted
                if (core is None or c is core) and (cls is None or a.event is cls)]

    # -- TCP -------------------------------------------------------------------------------

    def connect(self, dialler: LinkManager, address: str, key: bytes | None,
                from_ip: str | None = None, accept_later: bool = False) -> Pipe | None:
        """A TCP connection from ``dialler`` to whoever listens at ``address``; with
        ``accept_later`` the listener takes it at a later ``accept`` (its backlog)."""
        listener = self.core_at(address.rpartition(":")[0])
        if listener is None:
            return None
        self.port += 1
        conn_out, actions_out = dialler.connection_made("out", address, self.now, key)
        a = End(dialler, conn_out)
        b = End(listener, None, accepted=False,
                src=f"{from_ip or self.node_of[id(dialler)].ip}:{self.port}")
        pipe = Pipe((a, b))
        self.pipe_of[id(a)] = self.pipe_of[id(b)] = pipe
        if conn_out is None:
            a.closed = True  # refused: aborted at once
        else:
            self.ends[(id(dialler), conn_out)] = a
        self.run(dialler, actions_out)
        self.backlog.append(b)
        if not accept_later:
            self.accept(len(self.backlog) - 1)
        return pipe

    def accept(self, index: int) -> None:
        end = self.backlog.pop(index)
        end.accepted = True
        if id(end.core) not in self.cores:
            end.closed = True  # the listener is gone: a reset
            self.lost(self.pipe_of[id(end)].other(end))
            return
        end.conn, actions = end.core.connection_made("in", end.src, self.now)
        if end.conn is None:
            end.closed = True
        else:
            self.ends[(id(end.core), end.conn)] = end
        self.run(end.core, actions)
        if end.conn is None:  # an abort is a reset for the dialler
            self.lost(self.pipe_of[id(end)].other(end))

    def lost(self, end: End) -> None:
        if not end.accepted:
            self.backlog.remove(end)
            end.accepted = True
        if end.conn is not None and not end.dead:
            self.run(end.core, end.core.connection_lost(end.conn, self.now))
        end.closed = True
        self.timers.pop((id(end.core), end.conn), None)

    def reset(self, pipe: Pipe) -> None:
        """The connection dies at once (RST): both ends hear it, bytes in flight are lost."""
        for end in pipe.ends:
            end.outbox.clear()
            if not end.closed:
                self.lost(end)

    def deliver(self, end: End, limit: int | None = None) -> bool:
        """Move up to ``limit`` bytes of ``end``'s outbox to the other end; True if any."""
        other = self.pipe_of[id(end)].other(end)
        if not other.accepted:
            return False  # waits in the backlog
        moved = False
        if end.outbox:
            data = bytes(end.outbox[: limit or len(end.outbox)])
            del end.outbox[: len(data)]
            moved = True
            if not other.closed and not other.dead and other.conn is not None:
                error = self.clock_error.get(id(other.core))
                wall = None if error is None else 1.7e9 + self.now + error
                self.run(other.core, other.core.data_received(other.conn, data, self.now,
                                                              wall))
        if end.closed and not end.outbox and not other.closed and not end.dead:
            self.lost(other)  # the FIN after the last byte
            moved = True
        return moved

    def settle(self, dials: bool = False) -> None:
        """Deliver everything in flight (and, with ``dials``, connect every dial)."""
        for _ in range(10_000):
            if not self.step(dials):
                return
        raise AssertionError("the net does not settle")

    def step(self, dials: bool = False) -> bool:
        """One round of delivery: an accept, every end's bytes, a dial; False if quiet."""
        moved = False
        if self.backlog:
            self.accept(0)
            moved = True
        for end in list({id(e): e for p in self.pipe_of.values() for e in p.ends}.values()):
            moved |= self.deliver(end)
        if dials and self.dials:
            self.resolve(0, True)
            moved = True
        return moved

    def resolve(self, index: int, ok: bool, later: bool = False) -> None:
        core, dial = self.dials.pop(index)
        if id(core) not in self.cores:
            return  # that process is gone
        if ok and self.core_at(dial.host) is not None:
            self.connect(core, dial.address, dial.key, accept_later=later)
        else:
            self.run(core, core.dial_failed(dial.key, dial.address, self.now))

    def advance(self, seconds: float, dials: bool = False) -> None:
        """Let time pass, firing timers in order; the net settles after each."""
        target = self.now + seconds
        while True:
            due = [(at, k) for k, at in self.timers.items() if at <= target]
            if not due:
                break
            at, (core_id, conn) = min(due, key=lambda t: t[0])
            self.now = max(self.now, at)
            del self.timers[(core_id, conn)]
            core = self.cores.get(core_id)
            if core is None:
                continue
            if conn is None:
                self.run(core, core.dial_timer(self.now))
            else:
                self.run(core, core.link_timer(conn, self.now))
            self.settle(dials)
        self.now = target
        self.settle(dials)

    def stop(self, core: LinkManager, how: str) -> None:
        """The process of ``core`` ends: ``clean`` (goodbye), ``kill`` (RST) or ``hang``."""
        del self.cores[id(core)]
        if how == "clean":
            self.run(core, core.close_all(self.now))
            self.settle()
        for (core_id, _conn), end in list(self.ends.items()):
            if core_id != id(core) or end.closed:
                continue
            if how == "hang":
                end.dead = True
                end.closed = True
                end.outbox.clear()
            else:
                end.closed = True
                end.outbox.clear()
                self.lost(self.pipe_of[id(end)].other(end))
        self.dials = [(c, d) for c, d in self.dials if c is not core]
        for k in [k for k in self.timers if k[0] == id(core)]:
            del self.timers[k]

    def open_links(self, core: LinkManager) -> list[Any]:
        return [c for c in core.conns.values() if c.link.is_open]

    def linked(self, a: LinkManager, b: LinkManager) -> bool:
        """``a`` and ``b`` each keep one verified link, and it is the same connection."""
        ka, kb = self.node_of[id(a)].key, self.node_of[id(b)].key
        ca, cb = a.verified.get(kb), b.verified.get(ka)
        if ca is None or cb is None:
            return False
        end = self.ends[(id(a), ca.id)]
        other = self.pipe_of[id(end)].other(end)
        return other.core is b and other.conn == cb.id


def pair(low: Node = LOW, high: Node = HIGH, **kw: Any) -> tuple[Net, LinkManager,
                                                                   LinkManager]:
    net = Net()
    return net, net.add(low, **kw), net.add(high, **kw)


def introduce(net: Net, a: LinkManager, b: LinkManager) -> None:
    """Each learns the other's address from discovery."""
    na, nb = net.node_of[id(a)], net.node_of[id(b)]
    net.run(a, a.peers_changed([nb.info()], net.now))
    net.run(b, b.peers_changed([na.info()], net.now))


# -- dialling ---------------------------------------------------------------------------------


def test_lower_key_dials_at_once_and_the_higher_waits() -> None:
    net, low, high = pair()
    introduce(net, low, high)
    assert [(c, d.key) for c, d in net.dials] == [(low, HIGH.key)]
    assert net.timers[(id(high), None)] == pytest.approx(net.now + DIAL_DEFER)
    net.settle(dials=True)
    assert net.linked(low, high)
    net.advance(DIAL_DEFER + 1, dials=True)
    assert not net.dials and net.linked(low, high)  # the higher key found a link: no dial
    assert [e["direction"] for e in net.events(low, PeerVerified)] == ["out"]


def test_no_dial_outside_our_networks_and_only_from_our_address_there() -> None:
    net, low, _high = pair()
    # not a PeerInfo (that could not be built): what a lying mirror might hand over
    peer = SimpleNamespace(addresses=("192.168.9.9:4000", "10.0.0.77:4000", "junk",
                                      "1.2.3.4:0"), state="discovered", nickname="bob")
    net.run(low, low.peers_changed([Change(HIGH.key.hex(), None, peer)], net.now))
    assert [(d.address, d.local_ip) for _, d in net.dials] == [("10.0.0.77:4000", LOW.ip)]


def test_failed_dials_try_every_address_then_back_off_to_the_limit() -> None:
    net, low, _high = pair()
    peer = HIGH.info(addresses=("10.0.0.50:1", "10.0.0.51:1"))
    net.run(low, low.peers_changed([peer], net.now))
    seen = []
    for _ in range(12):
        assert len(net.dials) == 1
        seen.append(net.dials[0][1].address)
        net.resolve(0, False)
        if len(net.dials) == 1:  # the second address, at once
            seen.append(net.dials[0][1].address)
            net.resolve(0, False)
        dial = low.peers[HIGH.key]
        assert BACKOFF_MIN <= dial.backoff <= BACKOFF_MAX
        net.advance(dial.next_attempt - net.now)
    assert seen[:4] == ["10.0.0.50:1", "10.0.0.51:1"] * 2
    assert low.peers[HIGH.key].backoff == BACKOFF_MAX


def test_unreachable_only_peer_backs_off_without_dialling() -> None:
    net, low, _high = pair()
    net.run(low, low.peers_changed([HIGH.info(addresses=("172.16.0.1:4000",))], net.now))
    assert not net.dials
    assert low.peers[HIGH.key].backoff == 2 * BACKOFF_MIN
    assert net.timers[(id(low), None)] == pytest.approx(net.now + BACKOFF_MIN)


def test_offline_and_forgotten_peers_are_not_dialled() -> None:
    net, low, _high = pair()
    net.run(low, low.peers_changed([HIGH.info(state="offline")], net.now))
    assert not net.dials
    net.run(low, low.peers_changed([HIGH.info()], net.now))
    assert len(net.dials) == 1
    net.resolve(0, False)
    net.run(low, low.peers_changed([Change(HIGH.key.hex(), None, None)], net.now))
    net.advance(BACKOFF_MAX)
    assert not net.dials


def test_stable_link_redials_at_once_a_short_one_backs_off() -> None:
    net, low, high = pair()
    introduce(net, low, high)
    net.settle(dials=True)
    net.advance(STABLE_LINK + 1, dials=True)
    assert net.linked(low, high)
    low.peers[HIGH.key].backoff = 8.0  # as if it had failed before
    end = net.ends[(id(low), low.verified[HIGH.key].id)]
    net.reset(net.pipe_of[id(end)])
    assert low.peers[HIGH.key].backoff == BACKOFF_MIN
    assert low.peers[HIGH.key].next_attempt <= net.now + 0.2
    net.advance(0.3, dials=True)
    assert net.linked(low, high)
    end = net.ends[(id(low), low.verified[HIGH.key].id)]
    net.reset(net.pipe_of[id(end)])  # short-lived this time
    assert low.peers[HIGH.key].backoff == 2 * BACKOFF_MIN
    assert low.peers[HIGH.key].next_attempt == pytest.approx(net.now + BACKOFF_MIN)


def test_no_dial_while_a_link_exists_or_is_being_made() -> None:
    net, low, high = pair()
    introduce(net, low, high)
    net.resolve(0, True)  # connected, handshake in flight
    for core, peer in ((low, HIGH), (high, LOW)):  # every dial due, bytes still in flight
        core.peers[peer.key].next_attempt = 0
        net.run(core, core.dial_timer(net.now))
    # low's own dial is in its handshake; high cannot tell who the inbound one is yet
    assert [c for c, _ in net.dials] == [high]
    net.settle(dials=True)
    assert net.linked(low, high) and len(net.open_links(low)) == 1
    net.advance(BACKOFF_MAX, dials=True)
    assert not net.dials and net.linked(low, high)


def test_dials_count_against_max_links() -> None:
    net = Net()
    low = net.add(LOW, max_links=2)
    others = [Node(10 + i, f"n{i}", f"10.0.0.{20 + i}") for i in range(4)]
    net.run(low, low.peers_changed([n.info() for n in others], net.now))
    net.advance(DIAL_DEFER)  # nothing listens there: the dials stay under way
    assert len(net.dials) == 2 and len(low._dialling) == 2
    # a third connection is refused while two dials may become links
    conn, actions = low.connection_made("in", "10.0.0.99:5", net.now)
    assert conn is None
    assert [a.fields["reason"] for a in actions if isinstance(a, Emit)] == ["too_many_links"]


# -- admission -----------------------------------------------------------------------------


def test_admission_limits_handshakes_per_address_and_in_total_and_links() -> None:
    net = Net()
    core = net.add(LOW, max_links=6, max_handshakes=4, max_handshakes_per_address=2)
    got = [core.connection_made("in", f"10.0.0.9:{p}", net.now)[0] for p in range(1, 4)]
    assert got[:2] != [None, None] and got[2] is None  # 2 from one address
    got = [core.connection_made("in", f"10.0.0.{h}:7", net.now)[0] for h in (10, 11, 12)]
    assert got[:2] != [None, None] and got[2] is None  # 4 in total
    assert core.statistics()["handshakes"] == 4
    assert core.admit("10.0.0.13") == "too_many_handshakes"


def test_wire_rejected_once_per_address_and_reason() -> None:
    net = Net()
    core = net.add(LOW, max_handshakes_per_address=1)
    emitted = []
    for src in ("10.0.0.9:1", "10.0.0.9:2", "10.0.0.9:3", "10.0.0.8:1", "10.0.0.8:2"):
        _conn, actions = core.connection_made("in", src, net.now)
        emitted += [a.fields for a in actions if isinstance(a, Emit)
                    and a.event is WireRejected]
    assert [(e["address"], e["reason"]) for e in emitted] == [
        ("10.0.0.9:2", "too_many_handshakes"), ("10.0.0.8:2", "too_many_handshakes")]
    # another reason from the same address is published too
    conn = next(c.id for c in core.conns.values() if c.address == "10.0.0.9:1")
    actions = core.data_received(conn, b"\x00\x00", net.now)
    assert [(a.fields["address"], a.fields["reason"]) for a in actions
            if isinstance(a, Emit) and a.event is WireRejected] == [("10.0.0.9:1", "bad_frame")]
    assert core.rejects.counts["too_many_handshakes"] == 3


def test_junk_closes_one_link_with_its_code_and_no_close_message() -> None:
    net = Net()
    core = net.add(LOW)
    conn, _ = core.connection_made("in", "10.0.0.9:1", net.now)
    actions = core.data_received(conn, b"\x00\x05hello", net.now)  # not a Noise message 1
    assert [a for a in actions if not isinstance(a, Emit | SetTimer)] == [
        CloseConnection(conn)]  # and no Send: no cipher, no close message
    [down] = [a.fields for a in actions if isinstance(a, Emit) and a.event is LinkDown]
    assert down["reason"] == "bad_handshake" and not down["by_peer"]
    assert core.statistics()["handshakes"] == 0


# -- one link per pair -----------------------------------------------------------------------


def _cross(net: Net, low: LinkManager, high: LinkManager) -> tuple[Pipe, Pipe]:
    """Both dial at the same moment: two connections, handshakes interleaved."""
    p1 = net.connect(low, HIGH.address, HIGH.key)
    p2 = net.connect(high, LOW.address, LOW.key)
    assert p1 and p2
    net.settle()
    return p1, p2


def test_simultaneous_dials_keep_the_link_the_lower_key_dialled_at_both_ends() -> None:
    net, low, high = pair()
    p1, _p2 = _cross(net, low, high)
    assert net.linked(low, high)
    assert low.verified[HIGH.key].id == p1.ends[0].conn  # low's outbound
    downs = net.events(None, LinkDown)
    assert sorted(d["reason"] for d in downs) == ["duplicate", "duplicate"]
    assert not net.events(None, WireRejected)


@pytest.mark.parametrize("seed", range(6))
def test_one_side_dialled_twice_both_ends_keep_the_same_link(seed: int) -> None:
    rng = random.Random(seed)
    net, low, high = pair()
    dialler, target = (low, HIGH) if seed % 2 else (high, LOW)
    pipes = [net.connect(dialler, target.address, target.key, accept_later=True)
             for _ in range(3)]
    while net.backlog:  # the listener accepts them in another order than they were made
        net.accept(rng.randrange(len(net.backlog)))
    ends = [e for p in pipes if p for e in p.ends]
    for _ in range(400):  # deliver the handshakes in a random order, in random chunks
        net.deliver(rng.choice(ends), rng.choice([1, 7, 50, None]))
    net.settle()
    assert net.linked(low, high)
    kept = [c for c in net.open_links(low)]
    assert len(kept) == 1 and len(net.open_links(high)) == 1
    hashes = sorted(c.handshake_hash for c in [kept[0]])
    assert kept[0].handshake_hash == min(hashes)
    assert [d["reason"] for d in net.events(low, LinkDown)] == ["duplicate", "duplicate"]


def test_prefer_picks_the_same_link_at_both_ends_whatever_the_order() -> None:
    low, high = LOW.start(), HIGH.start()
    conns = []
    for direction in ("out", "in", "out", "in"):
        c = low.conns[low.connection_made(direction, "10.0.0.2:9", 0.0,
                                          HIGH.key if direction == "out" else None)[0]]
        conns.append(c)
    for c, h in zip(conns, (b"\x03", b"\x01", b"\x02", b"\x04"), strict=True):
        c.handshake_hash = h
    for a in conns:
        for b in conns:
            if a is b:
                continue
            keep, drop = low.prefer(a, b, HIGH.key)
            assert {keep, drop} == {a, b}
            if a.direction != b.direction:
                assert keep.direction == "out"  # we (LOW) have the lower key
            else:
                assert keep.handshake_hash < drop.handshake_hash
    # the other end, with the directions swapped, keeps the same
    for c in conns:
        c.direction = "in" if c.direction == "out" else "out"
    keep, _ = high.prefer(conns[0], conns[1], LOW.key)
    assert keep is conns[0]


# -- trust on first use ---------------------------------------------------------------------


def test_key_change_is_refused_blocked_and_trust_lets_it_in() -> None:
    net, low, high = pair()
    introduce(net, low, high)
    net.settle(dials=True)
    assert net.linked(low, high)
    assert low.pins.is_trusted(HIGH.key) and LOW.pins is not None
    saves = LOW.pins
    net.stop(high, "clean")
    impostor = Node(99, HIGH.nickname, "10.0.0.66")
    imp = net.add(impostor)
    net.run(imp, imp.peers_changed([LOW.info()], net.now))
    net.run(low, low.peers_changed([impostor.info()], net.now))
    net.advance(DIAL_DEFER + 1, dials=True)
    changed = net.events(low, PeerKeyChanged)[0]  # again each time the impostor dials
    assert changed["key"] == impostor.key.hex() and changed["pinned"] == (HIGH.key.hex(),)
    assert "tazcom trust" in changed["alert"]
    assert [e["reason"] for e in net.events(low, WireRejected)] == ["key_changed"]  # once
    assert {e["reason"] for e in net.events(imp, LinkDown)} == {"key_changed"}
    assert low.peers[impostor.key].blocked and impostor.key not in low.verified
    assert LOW.pins == saves  # nothing pinned
    net.dials.clear()
    net.advance(BACKOFF_MAX * 2)
    assert not [d for c, d in net.dials if c is low and d.key == impostor.key]  # blocked
    actions = net.run(low, low.trust(impostor.key.hex(), None, net.now))
    assert any(isinstance(a, SavePins) for a in actions)
    assert net.events(low, PeerTrusted)[-1] == {"key": impostor.key.hex(), "trusted": True}
    assert impostor.key.hex() in LOW.pins["nicknames"][HIGH.nickname]  # type: ignore[index]
    net.advance(BACKOFF_MAX + DIAL_DEFER, dials=True)
    assert net.linked(low, imp)


def test_untrust_refuses_an_unpinned_key_and_forgets_a_pinned_one() -> None:
    net, low, high = pair()
    assert low.untrust(HIGH.key.hex()) == [Refused("not_pinned",
                                                   f"{fingerprint(HIGH.key)} is not pinned")]
    introduce(net, low, high)
    net.settle(dials=True)
    actions = net.run(low, low.untrust(HIGH.key.hex()))
    assert isinstance(actions[0], SavePins) and HIGH.key.hex() not in str(actions[0].data)
    assert net.events(low, PeerTrusted)[-1]["trusted"] is False


def test_pins_are_saved_once_per_new_pin() -> None:
    net, low, high = pair()
    introduce(net, low, high)
    net.settle(dials=True)
    saves = [a for c, a in net.emitted if isinstance(a, SavePins)]
    assert LOW.pins is not None and LOW.pins["trusted"] == [HIGH.key.hex()]
    assert saves == []  # SavePins are not Emits
    before = LOW.pins
    LOW.pins = None
    end = net.ends[(id(low), low.verified[HIGH.key].id)]
    net.reset(net.pipe_of[id(end)])
    net.advance(BACKOFF_MAX, dials=True)
    assert net.linked(low, high) and LOW.pins is None  # nothing new to save
    LOW.pins = before


def test_a_pins_file_that_is_not_one_is_named() -> None:
    core = LinkManager()
    assert core.load_pins({"version": 7}) is not None
    assert core.load_pins([1, 2]) is not None
    assert core.load_pins({"version": 1, "trusted": [3]}) is not None
    assert core.load_pins({"version": 1, "trusted": [HIGH.key.hex()]}) is None
    assert core.pins.is_trusted(HIGH.key)


# -- what links carry and how they end ----------------------------------------------------


def test_messages_go_to_the_router_or_the_bus_and_sending_needs_a_link() -> None:
    net, low, high = pair()
    introduce(net, low, high)
    net.settle(dials=True)
    assert low.queue(HIGH.key, "router", b"r1", net.now) is None
    net.run(low, low.send(HIGH.key.hex(), "test", b"t1", net.now))
    net.run(low, low.flush())
    net.settle()
    assert [(a.key, a.bodies) for c, a in net.to_router] == [(LOW.key, [b"r1"])]
    assert net.events(high, LinkMessage) == [{"key": LOW.key.hex(), "kind": "test",
                                               "body": b"t1"}]
    assert low.send(THIRD.key.hex(), "test", b"", net.now)[0].reason == "no_link"
    assert low.send(HIGH.key.hex(), "", b"", net.now)[0].reason == "too_large"
    assert low.send("zz", "test", b"", net.now)[0].reason == "bad_message"
    assert low.queue(THIRD.key, "router", b"", net.now) == "no_link"


def test_bulk_goes_behind_chat_and_only_as_fast_as_the_socket_takes_it() -> None:
    """File chunks (bulk) never delay chat: a chat message queued after them is written
    first, bulk goes out in bursts of BULK_HIGH while the transport takes it, nothing
    while it is paused, and a full bulk queue says busy."""
    net, low, high = pair()
    introduce(net, low, high)
    net.settle(dials=True)
    conn = low.verified[HIGH.key].id
    for i in range(8):  # whole messages: under PART_BODY_MAX (parts: the tests below)
        assert low.queue(HIGH.key, "bulk", bytes([i]) * 10_000, net.now, bulk=True) is None
    assert low.queue(HIGH.key, "test", b"chat 1", net.now) is None
    net.run(low, low.flush())
    assert net.want_write == [(low, conn)], "more bulk waits for the socket"
    net.settle()
    got = [(e["kind"], e["body"][:1]) for e in net.events(high, LinkMessage)]
    assert got[0] == ("test", b"c"), "chat first, although queued after the bulk"
    burst = [b for k, b in got[1:]]
    assert burst == [bytes([i]) for i in range(len(burst))]
    assert burst and (len(burst) - 1) * 10_000 < BULK_HIGH <= len(burst) * 10_000
    # the transport is full: chat still goes, bulk waits
    low.write_paused(conn)
    assert low.queue(HIGH.key, "test", b"chat 2", net.now) is None
    net.run(low, low.flush())
    net.settle()
    assert [e["kind"] for e in net.events(high, LinkMessage)][-1] == "test"
    assert len(net.events(high, LinkMessage)) == len(got) + 1
    # it drained: the rest, in order, exactly once
    while net.want_write:
        core, c = net.want_write.pop()
        net.run(core, core.write_resumed(c))
        net.settle()
    bodies = [e["body"][:1] for e in net.events(high, LinkMessage) if e["kind"] == "bulk"]
    assert bodies == [bytes([i]) for i in range(8)]
    # a full queue pushes back; a bad kind or body is refused at once
    low.write_paused(conn)
    n = 0
    while (r := low.queue(HIGH.key, "bulk", b"x" * 60_000, net.now, bulk=True)) is None:
        n += 1
    assert r == "busy" and n * 60_000 <= BULK_QUEUE_MAX
    assert low.queue(HIGH.key, "", b"", net.now, bulk=True) == "too_large"
    assert low.queue(HIGH.key, "bulk", b"x" * 70_000, net.now, bulk=True) == "too_large"
    assert low.queue(THIRD.key, "bulk", b"", net.now, bulk=True) == "no_link"


def test_every_burst_of_bulk_is_reported_so_the_shell_can_gate_the_next() -> None:
    """A burst that empties the bulk queue still says ``WantWrite`` (the gateway's gate,
    common/bulkpace.py, times the next one); held back by ``write_paused``, bulk goes
    neither with a chat flush nor with a new chunk, and ``write_resumed`` lets it go."""
    net, low, high = pair()
    introduce(net, low, high)
    net.settle(dials=True)
    conn = low.verified[HIGH.key].id
    assert low.queue(HIGH.key, "bulk", b"x" * 1000, net.now, bulk=True) is None
    net.run(low, low.flush())
    assert net.want_write == [(low, conn)] and not low.verified[HIGH.key].bulk
    net.want_write.clear()
    low.write_paused(conn)  # the gate holds bulk back
    assert low.queue(HIGH.key, "bulk", b"y" * 1000, net.now, bulk=True) is None
    assert low.queue(HIGH.key, "test", b"chat", net.now) is None
    net.run(low, low.flush())
    net.settle()
    assert [e["body"][:1] for e in net.events(high, LinkMessage)] == [b"x", b"c"]
    assert net.want_write == [(low, conn)]
    net.run(low, low.write_resumed(conn))
    net.settle()
    assert [e["body"][:1] for e in net.events(high, LinkMessage)] == [b"x", b"c", b"y"]


def _bursts(net: Net, low: LinkManager, conn: int) -> list[int]:
    """Release ``low``'s bulk one burst at a time, as the gateway's gate does; the bytes
    written by each."""
    sizes = []
    while net.want_write:
        core, c = net.want_write.pop()
        assert (core, c) == (low, conn)
        actions = net.run(low, low.write_resumed(conn))
        sizes += [len(a.data) for a in actions if isinstance(a, Send)]
        net.settle()
    return sizes


def test_bulk_over_16_kib_goes_in_parts_and_chat_goes_between_them() -> None:
    """To a peer that said ``part/1`` a bulk message over PART_BODY_MAX is queued as its
    parts, one burst each (so chat waits behind one part, not one chunk); the peer gets
    each message whole, once, in order, with chat queued meanwhile ahead of the rest."""
    net, low, high = pair()
    introduce(net, low, high)
    net.settle(dials=True)
    c = low.verified[HIGH.key]
    assert PART_CAP in c.link.peer_caps
    chunks = [bytes([i]) * (3 * PART_BODY_MAX) + bytes([i, 7]) for i in range(2)]
    for chunk in chunks:
        assert low.queue(HIGH.key, "bulk", chunk, net.now, bulk=True) is None
    assert [len(b) for _, b, _ in c.bulk] == ([PART_BODY_MAX] * 3 + [2]) * 2
    assert [last for _, _, last in c.bulk] == [False, False, False, True] * 2
    assert c.bulk_bytes == 2 * len(chunks[0])  # bytes, not messages
    frames = c.link.frames_out
    actions = net.run(low, low.flush())  # one burst: the first part
    assert next(len(a.data) for a in actions if isinstance(a, Send)) < BULK_HIGH + 100
    low.write_paused(conn := c.id)
    net.settle()
    assert net.events(high, LinkMessage) == []  # a part is no message yet
    assert low.queue(HIGH.key, "test", b"chat", net.now) is None
    net.run(low, low.flush())
    net.settle()
    assert [e["kind"] for e in net.events(high, LinkMessage)] == ["test"]
    sizes = _bursts(net, low, conn)
    assert max(sizes) < BULK_HIGH + 200, sizes
    got = net.events(high, LinkMessage)
    assert [(e["kind"], e["body"]) for e in got] == [("test", b"chat")] + [
        ("bulk", chunk) for chunk in chunks]
    assert c.link.frames_out - frames == 1 + 2 * 4  # chat + 2 x (3 parts + a last one)
    assert not c.bulk and c.bulk_bytes == 0


def test_no_parts_to_a_peer_that_did_not_say_part_1(monkeypatch: pytest.MonkeyPatch
                                                    ) -> None:
    """An older peer (no ``part/1`` in its hello) gets every bulk message whole."""
    monkeypatch.setattr(linkmanager, "CAPS", ("app/1", "env/2", "px/1", "file/1"))
    net, low, high = pair()
    introduce(net, low, high)
    net.settle(dials=True)
    c = low.verified[HIGH.key]
    assert PART_CAP not in c.link.peer_caps
    chunk = b"z" * (3 * PART_BODY_MAX)
    assert low.queue(HIGH.key, "bulk", chunk, net.now, bulk=True) is None
    assert [(len(b), last) for _, b, last in c.bulk] == [(len(chunk), None)]
    frames = c.link.frames_out
    net.run(low, low.flush())
    net.settle()
    assert c.link.frames_out - frames == 1  # one app message, one frame
    assert [e["body"] for e in net.events(high, LinkMessage)] == [chunk]


def test_a_part_the_link_refuses_drops_the_rest_of_its_message(monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    """Should the link refuse a part (it checks kind and size again), that message's other
    parts go too, and the next message arrives whole."""
    net, low, high = pair()
    introduce(net, low, high)
    net.settle(dials=True)
    c = low.verified[HIGH.key]
    chunk = b"q" * (2 * PART_BODY_MAX + 5)
    assert low.queue(HIGH.key, "bulk", chunk, net.now, bulk=True) is None
    assert low.queue(HIGH.key, "bulk", b"next", net.now, bulk=True) is None
    send_part = c.link.send_part

    def refuse_first(kind: str, body: bytes, last: bool, now: float) -> None:
        monkeypatch.setattr(c.link, "send_part", send_part)
        raise LocalProtocolError("refused", code="too_large")

    monkeypatch.setattr(c.link, "send_part", refuse_first)
    net.run(low, low.flush())
    assert [(len(b), last) for _, b, last in c.bulk] == [(4, None)]
    net.run(low, low.write_more(c.id))
    net.settle()
    assert not c.bulk and c.bulk_bytes == 0
    assert [e["body"] for e in net.events(high, LinkMessage)] == [b"next"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(1, 3 * PART_BODY_MAX + 9), min_size=1, max_size=4),
       steps=st.lists(st.sampled_from(["chat", "burst", "pause"]), max_size=24))
def test_parts_and_chat_in_any_order_give_every_message_whole(sizes: list[int],
                                                              steps: list[str]) -> None:
    """Whatever mixes chat flushes (which take a burst along unless paused), bursts and
    pauses, the peer gets every bulk message whole and in order, and each chat message at
    once, in the order queued."""
    net, low, high = pair()
    introduce(net, low, high)
    net.settle(dials=True)
    c = low.verified[HIGH.key]
    bodies = [bytes([i]) * n for i, n in enumerate(sizes)]
    for body in bodies:
        assert low.queue(HIGH.key, "bulk", body, net.now, bulk=True) is None
    chats = []
    for i, step in enumerate(steps):
        if step == "chat":
            chats.append(f"chat {i}".encode())
            assert low.queue(HIGH.key, "test", chats[-1], net.now) is None
            net.run(low, low.flush())
            net.settle()
            assert chats[-1] in [e["body"] for e in net.events(high, LinkMessage)]
        elif step == "burst":
            net.run(low, low.write_resumed(c.id))
            net.settle()
        else:
            low.write_paused(c.id)
    while c.bulk:
        net.run(low, low.write_resumed(c.id))
        net.settle()
    assert c.bulk_bytes == 0
    got = net.events(high, LinkMessage)
    assert [e["body"] for e in got if e["kind"] == "bulk"] == bodies
    assert [e["body"] for e in got if e["kind"] == "test"] == chats


def test_links_snapshot_names_every_link_at_the_table_version() -> None:
    net, low, high = pair()
    introduce(net, low, high)
    net.resolve(0, True)
    snap = low.links(net.now, 1_700_000_000.0)
    assert [(i.direction, i.state, i.key) for i in snap.links] == [
        ("out", "handshake", HIGH.key.hex())]
    net.settle()
    snap = low.links(net.now + 5, 1_700_000_005.0)
    assert [(i.state, i.nickname) for i in snap.links] == [("open", HIGH.nickname)]
    assert snap.links[0].since == pytest.approx(1_700_000_000.0)
    assert (snap.epoch, snap.seq) == (low.numbering.epoch, low.numbering.seq)
    assert low.peer_state(HIGH.key) == "verified" and low.peer_state(THIRD.key) == "none"
    assert low.peer_state(None) == "none"


def test_goodbye_on_close_all_is_no_offence_at_either_end() -> None:
    net, low, high = pair()
    introduce(net, low, high)
    net.settle(dials=True)
    net.stop(high, "clean")
    [down_high] = net.events(high, LinkDown)
    [down_low] = net.events(low, LinkDown)
    assert (down_high["reason"], down_high["by_peer"]) == ("goodbye", False)
    assert (down_low["reason"], down_low["by_peer"]) == ("goodbye", True)
    assert not net.events(None, WireRejected)


def _peer_closes_with(reason: str, message: str) -> dict[str, Any]:
    # a close message the schema allows, with whatever reason the peer chose
    return _peer_sends_close(encode_message(Close(reason=reason, message=message)))


def _peer_sends_close(plain: bytes) -> dict[str, Any]:
    net, low, high = pair()
    introduce(net, low, high)
    net.settle(dials=True)
    conn = high.verified[LOW.key]
    conn.link._write_plain(plain, net.now)
    net.run(high, [Send(conn.id, conn.link.data_to_send())])
    net.settle()
    [down] = net.events(low, LinkDown)
    return down


def test_a_peers_unknown_close_reason_becomes_unknown_reason() -> None:
    down = _peer_closes_with("made_up_code", "bye\x1b[2J now")
    assert down["reason"] == "unknown_reason" and down["by_peer"]
    assert down["detail"] == "made_up_code: bye?[2J now"
    known = _peer_closes_with("rate_limited", "too fast")
    assert (known["reason"], known["detail"]) == ("rate_limited", "too fast")


@pytest.mark.parametrize("reason", [
    "\x1b[2J\x1b]0;owned\x07", "Ünïcode", "UPPER", "x" * 48 + "y", "9lives", "", "a-b",
    ["a list"], {"a": "map"}, 7, 1.5, None, True, b"bytes", "\u202egnp.exe"])
def test_a_close_reason_that_is_no_reject_code_is_bad_close(reason: Any, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    down = _peer_sends_close(codec.pack({"t": "close", "v": 1, "reason": reason,
                                         "message": "bye\x1b[0m"}))
    assert (down["reason"], down["by_peer"]) == ("bad_close", True)
    assert down["detail"].isascii() and down["detail"].isprintable()
    lines = [r.getMessage() for r in caplog.records if "bad_close" in r.getMessage()
             and r.levelno == logging.WARNING]
    assert len(lines) == 1 and "from peer 10.0.0.1 (bad_close)" in lines[0], lines
    assert lines[0].isascii() and lines[0].isprintable()  # the peer's value, escaped
    if isinstance(reason, str) and reason:
        assert ascii(reason)[1:-1][:20] in lines[0]


def test_a_close_without_a_reason_is_bad_close_and_a_good_code_passes() -> None:
    assert _peer_sends_close(codec.pack({"t": "close", "v": 1}))["reason"] == "bad_close"
    assert _peer_closes_with("a" * 48, "")["reason"] == "unknown_reason"
    assert _peer_closes_with("goodbye", "")["reason"] == "goodbye"


def test_slow_reader_and_timeouts_close_with_their_codes() -> None:
    net, low, high = pair()
    introduce(net, low, high)
    net.settle(dials=True)
    actions = net.run(low, low.write_blocked(low.verified[HIGH.key].id, net.now))
    assert [a.fields["reason"] for a in actions if isinstance(a, Emit)
            and a.event is WireRejected] == ["slow_reader"]
    net.settle()
    assert net.events(high, LinkDown)[-1]["reason"] == "slow_reader"
    # a peer that hangs is noticed by the keepalive timeout
    net.advance(BACKOFF_MAX, dials=True)
    assert net.linked(low, high)
    net.stop(high, "hang")
    net.advance(10)
    assert net.events(low, LinkDown)[-1]["reason"] == "timeout"


def test_identity_proof_of_another_version_is_bad_version() -> None:
    a = Link(initiator=True, identity_key=LOW.key, static_private=noise.x25519_keypair()[0],
             static_sig=b"\x00" * 64, nickname="a", now=0.0)
    static, static_pub = noise.x25519_keypair()
    b = Link(initiator=False, identity_key=HIGH.key, static_private=static,
             static_sig=HIGH.sk.sign(DOMAIN_NOISE_STATIC + static_pub).signature,
             nickname="b", now=0.0)
    b._proof = codec.pack({**IdentityProof(v=1, key=HIGH.key, sig=b"\x00" * 64).to_dict(),
                           "v": 2})
    b.receive_data(a.data_to_send(), 0.0)
    [closed] = a.receive_data(b.data_to_send(), 0.0)
    assert isinstance(closed, LinkClosed) and closed.reason == "bad_version"
    assert a.data_to_send() == b""  # no cipher yet: a bare TCP close


# -- bad input ----------------------------------------------------------------------------------


def test_printable_and_split_address() -> None:
    assert printable("a\x00b\u2028c", 10) == "a?b?c"
    assert printable(b"x", 3) == "b'x"
    assert len(printable("é" * 500, 200)) == 200
    assert split_address("10.0.0.1:80") == ("10.0.0.1", 80)
    for bad in ("10.0.0.1", "10.0.0.1:0", "10.0.0.1:65536", "10.0.0.1:\uff18\uff10", "x:1",
                "10.0.0.1:+1", 5, None, "1.2.3.4:5" * 3):
        assert split_address(bad) is None


JUNK = st.one_of(st.none(), st.integers(-3, 2**64), st.floats(allow_nan=True),
                 st.text(max_size=80), st.binary(max_size=80), st.lists(st.integers(), max_size=3),
                 st.just(LOW.key), st.just(HIGH.key.hex()), st.just("10.0.0.2:4000"),
                 st.sampled_from(["in", "out", "router", "goodbye", "duplicate"]))


CALLS = {
    "connection_made": 4, "data_received": 3, "link_timer": 2, "connection_lost": 2,
    "write_blocked": 2, "close": 4, "close_all": 1, "queue": 4, "flush": 0, "send": 4,
    "trust": 3, "untrust": 1, "peers_changed": 2, "dial_timer": 1, "dial_failed": 3,
    "set_nickname": 1, "load_pins": 1, "links": 2, "admit": 1, "peer_state": 1,
    "set_identity": 4, "write_resumed": 1,
}


class Fuzz(RuleBasedStateMachine):
    """Any call with any arguments: the core answers with actions or a reject code."""

    @initialize()
    def start(self) -> None:
        self.net = Net()
        self.core = self.net.add(LOW, max_links=4, max_handshakes=3)
        self.net.run(self.core, self.core.peers_changed([HIGH.info()], 0.0))

    @rule(name=st.sampled_from(sorted(CALLS)), data=st.data())
    def call(self, name: str, data: st.DataObject) -> None:
        args = [data.draw(JUNK | st.integers(0, 6)) for _ in range(CALLS[name])]
        if name == "peers_changed":
            args[0] = data.draw(st.lists(st.one_of(JUNK, st.builds(
                Change, key=JUNK, old=st.none(), new=st.one_of(JUNK, st.just(HIGH.info().new)))),
                max_size=3))
        result = getattr(self.core, name)(*args)
        if name == "connection_made":
            conn, result = result
            assert conn is None or conn in self.core.conns
        if name in ("links",):
            return
        if isinstance(result, list):
            for a in result:
                assert isinstance(a, Send | CloseConnection | SetTimer | Dial | Emit | ToRouter
                                  | SavePins | WantWrite | Refused), a
                if isinstance(a, Refused):
                    assert a.reason.isidentifier() and len(a.reason) <= 48
                if isinstance(a, Emit):
                    a.event(src="gateway", ts=1.0, **a.fields)

    @invariant()
    def consistent(self) -> None:
        if hasattr(self, "core"):
            check_core(self.core)


def check_core(core: LinkManager) -> None:
    """What must hold of one core at every moment."""
    assert len(core.conns) + len(core._dialling) <= core.max_links
    handshaking = [c for c in core.conns.values() if c.handshaking]
    assert core._handshakes == len(handshaking) <= core.max_handshakes + len(
        [c for c in handshaking if c.direction == "out"])
    inbound = [c for c in handshaking if c.direction == "in"]
    assert len(inbound) <= core.max_handshakes
    for host in {c.host for c in inbound}:
        assert len([c for c in inbound if c.host == host]) <= core.max_handshakes_per_address
    for c in core.conns.values():
        assert not c.link.closed
        if c.link.is_open:  # every open link is the one kept for its peer
            assert c.key is not None and core.verified[c.key] is c
    assert all(core.conns.get(c.id) is c for c in core.verified.values())
    for key, dial in core.peers.items():
        assert BACKOFF_MIN <= dial.backoff <= BACKOFF_MAX
        assert (dial.dialling is not None) == (key in core._dialling)


TestFuzz = Fuzz.TestCase
TestFuzz.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])


# -- random interleavings of two ends ---------------------------------------------------------


class TwoEnds(RuleBasedStateMachine):
    """Two gateways (and a third party dialling) under random events; invariants each step."""

    @initialize()
    def start(self) -> None:
        LOW.pins = HIGH.pins = None
        LOW.epoch = HIGH.epoch = 0
        self.net = Net()
        self.nodes = {"low": LOW, "high": HIGH}
        self.cores = {name: self.net.add(node) for name, node in self.nodes.items()}
        self.hung: set[str] = set()

    def other(self, name: str) -> str:
        return "high" if name == "low" else "low"

    @rule(name=st.sampled_from(["low", "high"]))
    def found(self, name: str) -> None:
        core = self.cores[name]
        peer = self.nodes[self.other(name)]
        self.net.run(core, core.peers_changed([peer.info()], self.net.now))

    @rule(name=st.sampled_from(["low", "high"]), forgotten=st.booleans())
    def lost(self, name: str, forgotten: bool) -> None:
        core = self.cores[name]
        peer = self.nodes[self.other(name)]
        change = Change(peer.key.hex(), None, None) if forgotten else peer.info("offline")
        self.net.run(core, core.peers_changed([change], self.net.now))

    @precondition(lambda self: self.net.dials)
    @rule(data=st.data(), ok=st.booleans(), later=st.booleans())
    def dial_result(self, data: st.DataObject, ok: bool, later: bool) -> None:
        self.net.resolve(data.draw(st.integers(0, len(self.net.dials) - 1)), ok, later)

    @rule(name=st.sampled_from(["low", "high"]), later=st.booleans())
    def extra_dial(self, name: str, later: bool) -> None:
        """The same side dials again (a restart's race, another client): two links."""
        peer = self.nodes[self.other(name)]
        self.net.connect(self.cores[name], peer.address, peer.key, accept_later=later)

    @precondition(lambda self: self.net.backlog)
    @rule(data=st.data())
    def accept(self, data: st.DataObject) -> None:
        """The listener accepts one waiting connection, in any order."""
        self.net.accept(data.draw(st.integers(0, len(self.net.backlog) - 1)))

    @rule(data=st.data(), chunk=st.sampled_from([1, 5, 40, None]))
    def deliver(self, data: st.DataObject, chunk: int | None) -> None:
        busy = [e for p in self.net.pipe_of.values() for e in p.ends
                if e.outbox or (e.closed and not p.other(e).closed)]
        if busy:
            self.net.deliver(data.draw(st.sampled_from(busy)), chunk)

    @rule()
    def settle(self) -> None:
        self.net.settle()
        self.check_same_link()

    @rule(seconds=st.sampled_from([0.1, 0.6, 1.5, 4.0, STABLE_LINK + 0.5]))
    def wait(self, seconds: float) -> None:
        before = {(name, c.key): c.verified_at for name, core in self.cores.items()
                  for c in core.verified.values()}
        downs = len(self.net.emitted)
        self.net.advance(seconds)
        self.check_backoff_reset(before, downs)

    @rule(data=st.data())
    def reset(self, data: st.DataObject) -> None:
        pipes = [p for p in dict.fromkeys(self.net.pipe_of.values())
                 if not all(e.closed for e in p.ends)]
        if pipes:
            before = {(name, c.key): c.verified_at for name, core in self.cores.items()
                      for c in core.verified.values()}
            downs = len(self.net.emitted)
            self.net.reset(data.draw(st.sampled_from(pipes)))
            self.check_backoff_reset(before, downs)

    @rule(name=st.sampled_from(["low", "high"]), how=st.sampled_from(["clean", "kill", "hang"]))
    def restart(self, name: str, how: str) -> None:
        self.net.stop(self.cores[name], how)
        self.cores[name] = self.net.add(self.nodes[name])
        peer = self.nodes[self.other(name)]
        # discovery hands the new process its peer table
        self.net.run(self.cores[name], self.cores[name].peers_changed([peer.info()],
                                                                       self.net.now))

    @invariant()
    def each_core(self) -> None:
        for core in self.cores.values():
            check_core(core)
        assert not self.net.refused, self.net.refused

    @invariant()
    def same_choice(self) -> None:
        """The two ends, choosing between the same two links, keep the same one."""
        chosen: dict[frozenset[int], tuple[LinkManager, Pipe]] = {}
        for core, kept, dropped in self.net.decisions:
            pair = frozenset((id(kept), id(dropped)))
            other = chosen.setdefault(pair, (core, kept))
            assert other[1] is kept, "the two ends kept different links"

    def check_same_link(self) -> None:
        low, high = self.cores["low"], self.cores["high"]
        ca, cb = low.verified.get(HIGH.key), high.verified.get(LOW.key)
        if ca is not None and cb is not None:
            assert self.net.linked(low, high), "the two ends kept different links"

    def check_backoff_reset(self, before: dict, downs: int) -> None:
        """A link that lasted STABLE_LINK, and was the only one of its peer to close in
        this step, leaves the backoff at its minimum."""
        closed: dict[tuple[str, str], list[float]] = {}
        for (core, a), at in zip(self.net.emitted[downs:], self.net.emitted_at[downs:],
                                 strict=True):
            names = [n for n, c in self.cores.items() if c is core]
            if a.event is LinkDown and a.fields["key"] and names:
                closed.setdefault((names[0], a.fields["key"]), []).append(at)
        for (name, key), verified_at in before.items():
            core = self.cores[name]
            times = closed.get((name, key.hex()), [])
            if key in core.verified or len(times) != 1:
                continue
            dial = core.peers.get(key)
            if dial is not None and not dial.blocked and verified_at is not None \
                    and times[0] - verified_at >= STABLE_LINK:
                assert dial.backoff == BACKOFF_MIN

    def teardown(self) -> None:
        """Faults stop: discovery speaks, dials connect, time passes: the pair links up."""
        if not hasattr(self, "net"):
            return
        for name in ("low", "high"):
            self.found(name)
        net = self.net
        net.dials = [(c, d) for c, d in net.dials if id(c) in net.cores]
        for _ in range(int((BACKOFF_MAX + 15) / 0.5)):
            net.advance(0.5, dials=True)
            if net.linked(self.cores["low"], self.cores["high"]):
                break
        assert net.linked(self.cores["low"], self.cores["high"]), "never linked again"
        for core in self.cores.values():
            check_core(core)
        LOW.pins = HIGH.pins = None


TestTwoEnds = TwoEnds.TestCase
TestTwoEnds.settings = settings(max_examples=60, stateful_step_count=30, deadline=None,
                                suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("reason", sorted(LINK_CODES))
def test_every_link_code_is_a_short_identifier(reason: str) -> None:
    assert reason.isidentifier() and len(reason) <= 48


def test_caps_name_app_v1_envelope_v2_peer_exchange_files_and_parts() -> None:
    assert CAPS == ("app/1", "env/2", "px/1", "file/1", "part/1", "group/1")


def test_peer_verified_carries_the_clock_offset_of_the_peers_hello() -> None:
    """Each side's hello says its wall clock; ``peer.verified`` gives the peer's minus ours
    (the gateway's mesh clock sample). A side that says no time gives no offset."""
    net, low, high = pair()
    net.clock_error[id(low)] = -3 * 86400.0  # three days behind
    net.clock_error[id(high)] = 0.0
    introduce(net, low, high)
    net.settle(dials=True)
    assert net.linked(low, high)
    [at_low] = net.events(low, PeerVerified)
    [at_high] = net.events(high, PeerVerified)
    assert at_low["clock_offset"] == pytest.approx(3 * 86400.0)
    assert at_high["clock_offset"] == pytest.approx(-3 * 86400.0)
    PeerVerified(src="gateway", ts=1.0, **at_low)  # a valid event
    net2, low2, high2 = pair()
    net2.clock_error[id(low2)] = 0.0  # high2 says no time: an older node
    introduce(net2, low2, high2)
    net2.settle(dials=True)
    assert [e["clock_offset"] for e in net2.events(low2, PeerVerified)] == [None]
