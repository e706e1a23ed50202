"""The group glue (common/groupcore.py): the issue's bad inputs at core level, and removal
end to end across four nodes wired by an in-memory router, partitions included."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tazcom.common import codec, groupstate, groupwire, senderkeys
from tazcom.common.errors import RemoteProtocolError
from tazcom.common.groupcore import (
    MAX_STAGED,
    Action,
    Changed,
    GroupCore,
    Held,
    Publish,
    Refused,
    SealTo,
    Show,
)

G = bytes([9]) * 32
A, B, C, D, E = (bytes([i]) * 32 for i in range(1, 6))


class Mesh:
    """A tiny router: SealTo to its recipient, Publish to every core; ``offline`` cores
    get theirs queued in ``backlog``."""

    def __init__(self, *keys: bytes) -> None:
        self.cores = {k: GroupCore(k) for k in keys}
        self.offline: set[bytes] = set()
        self.backlog: dict[bytes, list[tuple[str, bytes, bytes]]] = {k: [] for k in keys}
        self.shown: dict[bytes, list[tuple[bytes, str]]] = {k: [] for k in keys}
        self.refused: dict[bytes, list[str]] = {k: [] for k in keys}

    def run(self, origin: bytes, actions: list[Action]) -> None:
        queue = [(origin, a) for a in actions]
        while queue:
            src, a = queue.pop(0)
            if isinstance(a, SealTo):
                targets = [(a.recipient, a.kind)]
                body = a.body
            elif isinstance(a, Publish):
                targets = [(k, a.kind) for k in self.cores]
                body = a.body
            else:
                continue
            for k, kind in targets:
                if k in self.offline:
                    self.backlog[k].append((kind, src, body))
                else:
                    queue += [(k, x) for x in self.deliver(k, kind, src, body)]

    def deliver(self, k: bytes, kind: str, src: bytes, body: bytes) -> list[Action]:
        core = self.cores[k]
        handler = {groupwire.KIND_OP: core.on_op, groupwire.KIND_KEY: core.on_key,
                   groupwire.KIND_WELCOME: core.on_welcome, groupwire.KIND_MSG: core.on_msg}
        out = handler[kind](src, body)
        for a in out:
            if isinstance(a, Show):
                self.shown[k].append((a.sender, a.text))
            if isinstance(a, Refused):
                self.refused[k].append(a.code)
        return out

    def act(self, k: bytes, method: str, *args: object) -> list[Action]:
        out = getattr(self.cores[k], method)(*args)
        assert not any(isinstance(a, Refused) for a in out), out
        self.run(k, out)
        return out

    def flush(self, k: bytes, rng: random.Random) -> None:
        self.offline.discard(k)
        items, self.backlog[k] = self.backlog[k], []
        rng.shuffle(items)
        for kind, src, body in items:
            self.run(k, self.deliver(k, kind, src, body))


def group_of(*joiners: bytes) -> Mesh:
    mesh = Mesh(A, B, C, D)
    mesh.act(A, "create", "team", G, 1)
    for j in joiners:
        mesh.act(A, "invite", G, j, 2)
    for j in joiners:
        mesh.act(j, "accept", G, 3)
    assert all(r == [] for r in mesh.refused.values()), mesh.refused
    return mesh


def codes(actions: list[Action]) -> list[str]:
    return [a.code for a in actions if isinstance(a, Refused)]


# --- wire --------------------------------------------------------------------------------

def test_bodies_round_trip_and_refuse_bad_input() -> None:
    op = groupstate.make_op("create", G, A, name="x", ts=1)
    assert groupwire.decode_op(groupwire.encode_op(op)) == op
    key = senderkeys.SenderChain.new(A, G, 3).export()
    assert groupwire.decode_key(groupwire.encode_key(key)) == key
    assert groupwire.decode_welcome(groupwire.encode_welcome(G, [op])) == (G, [op])
    m = groupwire.decode_msg(groupwire.encode_msg(G, 1, 2, bytes(20)))
    assert (m.group, m.epoch, m.index, m.ciphertext) == (G, 1, 2, bytes(20))
    bad = {
        codec.pack([2, groupstate.encode(op)]): "bad_version",
        codec.pack([1, b"junk"]): "bad_op",
        codec.pack([1]): "bad_message",
        b"\xc1": "bad_encoding",
        bytes(groupwire.OP_BODY_MAX + 1): "too_large",
    }
    for data, code in bad.items():
        with pytest.raises(RemoteProtocolError) as e:
            groupwire.decode_op(data)
        assert e.value.code == code
    with pytest.raises(RemoteProtocolError) as e:
        groupwire.decode_welcome(codec.pack([1, G, [b"x"] * (groupwire.WELCOME_OPS_MAX + 1)]))
    assert e.value.code == "too_many"
    invite = groupstate.make_op("invite", G, A, B, [op.id], 2)
    with pytest.raises(RemoteProtocolError) as e:  # must start with the create
        groupwire.decode_welcome(groupwire.encode_welcome(G, [invite, op]))
    assert e.value.code == "bad_message"
    with pytest.raises(RemoteProtocolError) as e:
        groupwire.decode_msg(codec.pack([1, G, 0, 0, bytes(3)]))  # shorter than a tag
    assert e.value.code == "bad_message"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_is_refused_never_raised(data: bytes) -> None:
    mesh = group_of(C)
    core = mesh.cores[C]
    before = core.state(G).snapshot()
    for handler in (core.on_op, core.on_key, core.on_welcome, core.on_msg):
        out = handler(A, data)
        assert all(isinstance(a, Refused) for a in out)
    assert core.state(G).snapshot() == before


# --- the bad inputs --------------------------------------------------------------

def test_message_from_non_member_refused() -> None:
    mesh = group_of(C)
    stranger = senderkeys.SenderChain.new(E, G, 0)
    _, sealed = stranger.encrypt(groupwire.encode_text("hi"), groupwire.header_ad(G, 0, E, 0))
    out = mesh.cores[C].on_msg(E, groupwire.encode_msg(G, 0, 0, sealed))
    assert codes(out) == ["not_member"]
    # and its key too
    out = mesh.cores[C].on_key(E, groupwire.encode_key(senderkeys.SenderChain.new(E, G, 0)
                                                       .export()))
    assert codes(out) == ["not_member"]


def test_non_admin_change_has_no_effect() -> None:
    mesh = group_of(C, D)
    assert codes(mesh.cores[C].remove(G, D, 5)) == ["not_admin"]  # refused locally
    s = mesh.cores[C].state(G)
    forged = groupstate.make_op("remove", G, C, D, s.heads, 5)
    before = mesh.cores[A].state(G).members
    out = mesh.cores[A].on_op(C, groupwire.encode_op(forged))
    assert codes(out) == ["not_admin"] and not any(isinstance(a, Changed) for a in out)
    assert mesh.cores[A].state(G).members == before and D in before
    assert mesh.cores[A].refused["not_admin"] == 1
    # an op in someone else's envelope is refused outright
    assert codes(mesh.cores[A].on_op(D, groupwire.encode_op(forged))) == ["bad_op"]


def test_replayed_op_refused() -> None:
    mesh = group_of(C)
    s = mesh.cores[A].state(G)
    op = groupstate.make_op("invite", G, A, D, s.heads, 9)
    body = groupwire.encode_op(op)
    mesh.run(A, [])
    out = mesh.cores[C].on_op(A, body)
    assert any(isinstance(a, Changed) for a in out)
    snap = mesh.cores[C].state(G).snapshot()
    assert codes(mesh.cores[C].on_op(A, body)) == ["replay"]
    assert mesh.cores[C].state(G).snapshot() == snap


def test_op_or_invitation_for_unknown_group_refused() -> None:
    core = GroupCore(C)
    other = bytes([8]) * 32
    root = groupstate.make_op("create", other, A, name="x", ts=1)
    inv = groupstate.make_op("invite", other, A, C, [root.id], 2)
    assert codes(core.on_op(A, groupwire.encode_op(inv))) == ["unknown_group"]
    assert codes(core.accept(other, 3)) == ["unknown_group"]
    assert codes(core.say(other, "x")) == ["unknown_group"]
    key = senderkeys.SenderChain.new(A, other, 0).export()
    assert codes(core.on_key(A, groupwire.encode_key(key))) == ["unknown_group"]
    assert core.groups == {}
    # a welcome that does not invite us (yet) is staged, bounded, never a group of ours;
    # a complete one from a non-admin is refused
    out = core.on_welcome(A, groupwire.encode_welcome(other, [root]))
    assert out == [Held("welcome", other)] and core.groups == {}
    assert codes(core.on_welcome(B, groupwire.encode_welcome(other, [root, inv]))) == [
        "not_admin"]
    assert core.groups == {} and core.staged == {}
    for i in range(MAX_STAGED + 5):
        g = bytes([9, i]) * 16
        r = groupstate.make_op("create", g, A, name="x", ts=1)
        core.on_welcome(A, groupwire.encode_welcome(g, [r]))
    assert len(core.staged) == MAX_STAGED and core.groups == {}


def test_welcome_in_pieces_any_order() -> None:
    """A big group's welcome travels in pieces that each fit one envelope; the invitee
    folds them in any order and joins once the piece inviting it is in."""
    members = [bytes([40 + i]) * 32 for i in range(60)]
    admin = GroupCore(A)
    admin.create("big", G, 1)
    for i, m in enumerate(members):
        admin.invite(G, m, 2 + i)
    out = admin.invite(G, C, 100)
    pieces = [a.body for a in out if isinstance(a, SealTo) and a.kind == groupwire.KIND_WELCOME]
    assert len(pieces) > 1
    assert all(len(p) <= groupwire.SEALED_BODY_MAX for p in pieces)
    joiner = GroupCore(C)
    for p in reversed(pieces[1:]):
        assert joiner.on_welcome(A, p) == [Held("welcome", G)]
    assert joiner.on_welcome(A, pieces[0]) == [Changed(G)]
    assert joiner.state(G).snapshot() == admin.state(G).snapshot()


def test_key_from_removed_member_refused() -> None:
    mesh = group_of(C, D)
    mesh.act(A, "remove", G, D, 5)
    assert mesh.cores[C].state(G).epoch == 1
    key = senderkeys.SenderChain.new(D, G, 1).export()
    assert codes(mesh.cores[C].on_key(D, groupwire.encode_key(key))) == ["not_member"]
    assert not mesh.cores[C].groups[G].keys.has(D, 1)
    # D itself knows it is out and cannot write
    assert codes(mesh.cores[D].say(G, "still here?")) == ["not_member"]


# --- end to end --------------------------------------------------------------------------

def test_removal_end_to_end() -> None:
    mesh = group_of(C, D)
    for k in (A, C, D):
        assert mesh.cores[k].state(G).members == {A, C, D}
    mesh.act(A, "say", G, "hello", 10)
    mesh.act(C, "say", G, "hi A", 11)
    mesh.act(D, "say", G, "hi all", 12)
    assert mesh.shown[C] == [(A, "hello"), (D, "hi all")]
    assert mesh.shown[D] == [(A, "hello"), (C, "hi A")]
    assert mesh.shown[A] == [(C, "hi A"), (D, "hi all")]
    assert mesh.shown[B] == []  # B is not in the group: it relays, reads nothing
    mesh.act(A, "remove", G, D, 13)
    assert D not in mesh.cores[D].state(G).members  # D learnt it; it keeps all its state
    d_keys_before = dict(mesh.cores[D].groups[G].keys._chains)
    mesh.act(A, "say", G, "D is gone", 14)
    mesh.act(C, "say", G, "good", 15)
    assert (A, "D is gone") in mesh.shown[C] and (C, "good") in mesh.shown[A]
    assert mesh.shown[D] == [(A, "hello"), (C, "hi A")]
    assert mesh.refused[D][-2:] == ["no_key", "no_key"]
    assert mesh.cores[D].groups[G].keys._chains.keys() == d_keys_before.keys()
    # one ciphertext per message, whatever the number of members
    out = mesh.cores[A].say(G, "again")
    assert sum(isinstance(a, Publish) for a in out) == 1
    assert not any(isinstance(a, SealTo) for a in out)  # already keyed for epoch 1


@settings(max_examples=30, deadline=None)
@given(st.randoms(use_true_random=False))
def test_partitioned_member_catches_up_in_any_order(rng: random.Random) -> None:
    mesh = group_of(B, C, D)
    mesh.act(A, "say", G, "before", 10)
    mesh.offline.add(C)
    mesh.act(B, "say", G, "m1", 11)
    mesh.act(A, "remove", G, D, 12)
    mesh.act(B, "say", G, "m2", 13)
    mesh.act(A, "say", G, "m3", 14)
    mesh.act(A, "say", G, "m4", 15)
    mesh.act(A, "say", G, "m5", 16)
    assert mesh.shown[C] == [(A, "before")]
    mesh.flush(C, rng)
    assert mesh.cores[C].state(G).snapshot() == mesh.cores[A].state(G).snapshot()
    assert sorted(mesh.shown[C]) == sorted([(A, "before"), (B, "m1"), (B, "m2"), (A, "m3"),
                                            (A, "m4"), (A, "m5")])
    assert mesh.refused[C] == []
    assert mesh.cores[C].groups[G].held_msgs == {}
    # and C, caught up, writes to the new epoch
    mesh.act(C, "say", G, "back", 17)
    assert (C, "back") in mesh.shown[A] and (C, "back") not in mesh.shown[D]


def test_dump_and_load_keep_reading_and_writing() -> None:
    """A node restarts: its groups come back from disk, chains where they were."""
    mesh = group_of(C, D)
    mesh.act(A, "say", G, "one")
    mesh.act(C, "say", G, "two")
    blobs = {k: core.dump(G) for k, core in mesh.cores.items() if G in core.groups}
    for k, blob in blobs.items():
        fresh = GroupCore(k)
        assert fresh.load(blob) == G
        assert fresh.state(G).snapshot() == mesh.cores[k].state(G).snapshot()
        mesh.cores[k] = fresh
    for k in mesh.shown:
        mesh.shown[k].clear()
    mesh.act(A, "say", G, "three")
    mesh.act(D, "say", G, "four")
    assert mesh.shown[C] == [(A, "three"), (D, "four")]
    assert mesh.shown[A] == [(D, "four")] and mesh.shown[D] == [(A, "three")]


def test_a_group_of_100_members_reads_and_a_removal_locks_one_out() -> None:
    """The issue's explicit size: 100 members join (welcomes in pieces), every member reads
    one ciphertext, and after a removal the 98 others read on while the removed one cannot."""
    keys = [(1000 + i).to_bytes(2, "big") * 16 for i in range(100)]
    mesh = Mesh(*keys)
    admin, writer, gone = keys[0], keys[7], keys[-1]
    mesh.act(admin, "create", "hundred", G, 1)
    for k in keys[1:]:
        mesh.act(admin, "invite", G, k, 2)
    for k in keys[1:]:
        mesh.act(k, "accept", G, 3)
    for core in mesh.cores.values():
        assert core.state(G).members == frozenset(keys)
    out = mesh.act(writer, "say", G, "hello, hundred")
    published = [a for a in out if isinstance(a, Publish)]
    assert len(published) == 1  # one ciphertext for 99 readers
    assert sum((writer, "hello, hundred") in mesh.shown[k] for k in keys) == 99
    mesh.act(admin, "remove", G, gone, 4)
    mesh.act(writer, "say", G, "after the removal")
    readers = [k for k in keys if (writer, "after the removal") in mesh.shown[k]]
    assert len(readers) == 98 and gone not in readers
    assert all(not r for k, r in mesh.refused.items() if k != gone)


def test_an_op_that_overtakes_the_welcome_is_applied_once_the_welcome_is_in() -> None:
    """C's accept reaches D (invited too) by a shorter way than A's welcome to D: D refuses
    it at first (no such group yet), remembers it, and applies it with the welcome."""
    a, c, d = GroupCore(A), GroupCore(C), GroupCore(D)
    a.create("race", G, 1)
    to_c = a.invite(G, C, 2)
    to_d = a.invite(G, D, 3)
    for act in to_c + to_d:  # C has its welcome, and the op that invites D
        if isinstance(act, SealTo) and act.recipient == C:
            handler = c.on_welcome if act.kind == groupwire.KIND_WELCOME else c.on_op
            handler(A, act.body)
    assert D in c.state(G).invited
    accept = [x for x in c.accept(G, 4) if isinstance(x, SealTo) and x.recipient == D]
    assert accept
    for x in accept:  # before D has the group
        assert codes(d.on_op(C, x.body)) == ["unknown_group"]
    assert d.refused["unknown_group"] == len(accept)
    for act in to_d:
        if isinstance(act, SealTo) and act.recipient == D and act.kind == groupwire.KIND_WELCOME:
            d.on_welcome(A, act.body)
    assert C in d.state(G).members and D in d.state(G).invited
    # a welcome to a group it has, from a non-admin, merges nothing
    fake = groupstate.make_op("remove", G, A, C, d.state(G).heads, 9)
    root = d.state(G).get(d.state(G).snapshot()["order"][0])
    assert codes(d.on_welcome(C, groupwire.encode_welcome(G, [root, fake]))) == ["not_admin"]
    assert C in d.state(G).members
