"""Group membership (common/groupstate.py): every right and refusal, and the point of it
all: replicas with the same set of ops agree, whatever order the ops came in."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tazcom.common import codec
from tazcom.common.errors import RemoteProtocolError
from tazcom.common.groupstate import (
    MAX_MEMBERS,
    MAX_PENDING,
    OP_MAX,
    GroupState,
    Op,
    decode,
    encode,
    make_op,
)

G = bytes([7]) * 32
KEYS = [bytes([i + 1]) * 32 for i in range(8)]
A, B, C, D = KEYS[:4]


class Member:
    """A simulated member: its own replica, acting on what it knows."""

    def __init__(self, state: GroupState, key: bytes) -> None:
        self.state = state
        self.key = key
        self.ts = 0

    def act(self, kind: str, target: bytes | None = None) -> Op:
        self.ts += 1
        op = make_op(kind, G, self.key, target, self.state.heads, self.ts)
        assert self.state.add(op).accepted
        return op


def new_group(name: str = "team") -> tuple[Op, GroupState]:
    root = make_op("create", G, A, name=name, ts=1)
    return root, GroupState.create(root)


def grow(state: GroupState, *keys: bytes) -> list[Op]:
    """A invites and each of ``keys`` accepts, in one line of history."""
    ops = []
    for k in keys:
        for kind, author, target in (("invite", A, k), ("accept", k, None)):
            op = make_op(kind, G, author, target, state.heads)
            assert state.add(op).status == "effective"
            ops.append(op)
    return ops


def replica(root: Op, ops: list[Op]) -> GroupState:
    s = GroupState.create(root)
    for op in ops:
        s.add(op)
    return s


# --- ops and their encoding ------------------------------------------------------------


def test_encode_decode_round_trip_and_id() -> None:
    root, _ = new_group()
    op = make_op("invite", G, A, B, [root.id], 5)
    assert decode(encode(op)) == op
    assert decode(encode(root)) == root
    assert op.id != make_op("invite", G, A, B, [root.id], 6).id
    # parents are canonical: sorted and distinct, whatever the caller passed
    p1, p2 = bytes(32), bytes([1]) * 32
    assert make_op("leave", G, A, parents=[p2, p1, p2]).parents == (p1, p2)


@pytest.mark.parametrize("data,code", [
    (b"\xc1", "bad_op"),
    (codec.pack([1, G]), "bad_op"),
    (codec.pack([2, G, "leave", A, None, [bytes(32)], 0, None]), "bad_op"),
    (codec.pack([1, G, "kick", A, None, [bytes(32)], 0, None]), "bad_op"),
    (codec.pack([1, G[:31], "leave", A, None, [bytes(32)], 0, None]), "bad_op"),
    (codec.pack([1, G, "leave", A, B, [bytes(32)], 0, None]), "bad_op"),  # target
    (codec.pack([1, G, "remove", A, A, [bytes(32)], 0, None]), "bad_op"),
    (codec.pack([1, G, "invite", A, None, [bytes(32)], 0, None]), "bad_op"),
    (codec.pack([1, G, "create", A, None, [bytes(32)], 0, "x"]), "bad_op"),  # parents
    (codec.pack([1, G, "create", A, None, [], 0, None]), "bad_op"),  # no name
    (codec.pack([1, G, "create", A, None, [], 0, "x" * 65]), "bad_op"),
    (codec.pack([1, G, "leave", A, None, [], 0, None]), "bad_op"),  # no parents
    (codec.pack([1, G, "leave", A, None, [bytes([1]) * 32, bytes(32)], 0, None]), "bad_op"),
    (codec.pack([1, G, "leave", A, None, [bytes(32)], -1, None]), "bad_op"),
    (b"\x00" * (OP_MAX + 1), "too_large"),
])
def test_decode_refuses(data: bytes, code: str) -> None:
    with pytest.raises(RemoteProtocolError) as e:
        decode(data)
    assert e.value.code == code


def test_make_op_refuses_malformed() -> None:
    with pytest.raises(RemoteProtocolError, match="targets another"):
        make_op("remove", G, A, A, [bytes(32)])
    with pytest.raises(RemoteProtocolError) as e:
        make_op("create", G, A, name="é" * 33)  # 66 UTF-8 bytes
    assert e.value.code == "bad_op"


# --- rights ----------------------------------------------------------------------------


def test_create() -> None:
    root, s = new_group("ops team")
    assert (s.name, s.members, s.admins, s.invited, s.epoch) == (
        "ops team", {A}, {A}, set(), 0)
    assert s.heads == (root.id,) and s.effective(root.id)
    with pytest.raises(RemoteProtocolError) as e:
        GroupState.create(make_op("leave", G, A, parents=[root.id]))
    assert e.value.code == "unknown_group"


def test_invite_accept_decline() -> None:
    _, s = new_group()
    assert s.add(make_op("invite", G, A, B, s.heads)).status == "effective"
    assert s.invited == {B}
    assert s.add(make_op("invite", G, A, B, s.heads)).code == "already_invited"
    assert s.add(make_op("invite", G, B, C, s.heads)).code == "not_admin"  # B invited only
    assert s.add(make_op("accept", G, C, None, s.heads)).code == "not_invited"
    assert s.add(make_op("accept", G, B, B, s.heads)).status == "effective"
    assert (s.members, s.invited) == ({A, B}, set())
    assert s.add(make_op("invite", G, A, B, s.heads)).code == "already_member"
    assert s.add(make_op("invite", G, B, C, s.heads)).code == "not_admin"  # member only
    s.add(make_op("invite", G, A, C, s.heads))
    assert s.add(make_op("decline", G, C, None, s.heads)).status == "effective"
    assert s.add(make_op("decline", G, C, None, s.heads)).code == "not_invited"
    assert (s.members, s.invited, s.epoch) == ({A, B}, set(), 0)


def test_leave_and_headless_rule() -> None:
    _, s = new_group()
    grow(s, B, C, D)
    assert s.add(make_op("leave", G, C, None, s.heads)).status == "effective"
    assert (s.members, s.epoch) == ({A, B, D}, 1)
    assert s.add(make_op("leave", G, C, None, s.heads)).code == "not_member"
    # the last admin leaves: the oldest remaining member (B joined before D) leads
    assert s.add(make_op("leave", G, A, None, s.heads)).status == "effective"
    assert (s.members, s.admins, s.epoch) == ({B, D}, {B}, 2)
    assert s.members_at(0) == {A, B, C, D} and s.members_at(2) == {B, D}
    assert s.members_at(3) == set()


def test_remove_and_promote() -> None:
    _, s = new_group()
    grow(s, B, C)
    bad = make_op("remove", G, B, C, s.heads)
    v = s.add(bad)
    assert (v.status, v.code) == ("ineffective", "not_admin")  # stored, changes nothing
    assert (s.members, s.epoch) == ({A, B, C}, 0)
    assert s.ineffective == {bad.id: "not_admin"} and not s.effective(bad.id)
    assert s.add(make_op("promote", G, A, D, s.heads)).code == "not_member"
    assert s.add(make_op("promote", G, A, B, s.heads)).status == "effective"
    assert s.add(make_op("promote", G, A, B, s.heads)).code == "already_admin"
    rm = make_op("remove", G, B, C, s.heads)
    assert s.add(rm).status == "effective"
    assert (s.members, s.admins, s.epoch, s.epoch_of_op(rm.id)) == ({A, B}, {A, B}, 1, 1)
    assert s.add(make_op("remove", G, B, C, s.heads)).code == "not_member"
    s.add(make_op("invite", G, A, D, s.heads))
    assert s.add(make_op("remove", G, B, D, s.heads)).status == "effective"  # an invitee
    assert (s.invited, s.epoch) == (set(), 2)


# --- refusals --------------------------------------------------------------------------


def test_refusals_change_nothing() -> None:
    root, s = new_group()
    grow(s, B)
    before = s.snapshot()
    op = make_op("invite", G, A, C, s.heads)
    forged = Op(bytes(32), *[getattr(op, f) for f in
                             ("group", "kind", "author", "target", "parents", "ts", "name")])
    other = make_op("invite", bytes(32), A, C, s.heads)
    cases = [
        (root, "replay"),
        (forged, "bad_op"),
        ("not an op", "bad_op"),
        (other, "unknown_group"),
        (make_op("create", G, B, name="mine"), "bad_op"),  # a rival root
        (Op(op.id, G, "invite", A, C, (), 0, None), "bad_op"),
    ]
    for bad, code in cases:
        v = s.add(bad)
        assert (v.status, v.code) == ("rejected", code)
        assert s.snapshot() == before
    assert s.add(op).status == "effective"
    assert s.add(op).code == "replay"


def test_pending_until_parents_arrive_and_bounded() -> None:
    root, s = new_group()
    line = grow(GroupState.create(root), B, C)
    r = GroupState.create(root)
    for op in reversed(line):
        assert r.add(op).status == ("effective" if op is line[0] else "pending")
    assert r.snapshot() == replica(root, line).snapshot() and not r.pending
    for i in range(MAX_PENDING):
        assert s.add(make_op("leave", G, A, parents=[i.to_bytes(32, "big")])).status == "pending"
    v = s.add(make_op("leave", G, A, parents=[bytes([9]) * 32]))
    assert (v.status, v.code) == ("rejected", "too_many")
    assert s.members == {A}


def test_member_cap_is_a_fold_rule() -> None:
    _, s = new_group()
    keys = [i.to_bytes(32, "big") for i in range(10, 10 + MAX_MEMBERS)]
    for k in keys[: MAX_MEMBERS - 1]:
        s.add(make_op("invite", G, A, k, s.heads))
    assert s.add(make_op("invite", G, A, keys[-1], s.heads)).code == "too_many"
    assert len(s.invited) == MAX_MEMBERS - 1


def test_group_of_120_members() -> None:
    root, s = new_group()
    keys = [i.to_bytes(32, "big") for i in range(1000, 1120)]
    ops = grow(s, *keys)
    assert len(s.members) == 121 and s.heads == (ops[-1].id,)
    # concurrent: everybody leaves at once from the same heads; one refold per op
    heads = s.heads
    leaves = [make_op("leave", G, k, None, heads) for k in keys[:60]]
    for op in leaves:
        assert s.add(op).status == "effective"
    assert len(s.members) == 61 and s.epoch == 60 and len(s.heads) == 60
    shuffled = ops + leaves
    random.Random(1).shuffle(shuffled)
    assert replica(root, shuffled).snapshot() == s.snapshot()
    assert [o.id for o in s.ops_since([])] == list(s.snapshot()["order"])
    assert {o.id for o in s.ops_since(heads)} == {o.id for o in leaves}


# --- partitions ------------------------------------------------------------------------


def test_admins_remove_each_other_concurrently() -> None:
    root, s = new_group()
    grow(s, B, C)
    s.add(make_op("promote", G, A, B, s.heads))
    base = list(s.ops_since([]))
    a_rm = make_op("remove", G, A, B, s.heads)
    b_rm = make_op("remove", G, B, A, s.heads)
    first, second = sorted([a_rm, b_rm], key=lambda o: o.id)
    r1, r2 = replica(root, [*base, a_rm, b_rm]), replica(root, [*base, b_rm, a_rm])
    assert r1.snapshot() == r2.snapshot()
    assert r1.effective(first.id) and r1.ineffective == {second.id: "not_admin"}
    assert r1.members == {C, first.author} and r1.admins == {first.author}
    assert r1.epoch == 1 and len(r1.heads) == 2
    # the loser's later ops, made before it heard, stay ineffective everywhere
    loser = make_op("remove", G, second.author, C, [second.id])
    for r in (r1, r2):
        assert r.add(loser).code == "not_admin"
    assert r1.snapshot() == r2.snapshot()


def test_invite_vs_concurrent_remove_of_inviter() -> None:
    root, s = new_group()
    grow(s, B, C)
    s.add(make_op("promote", G, A, B, s.heads))
    base, heads = list(s.ops_since([])), s.heads
    rm_b = make_op("remove", G, A, B, heads)  # A removes B ...
    inv = make_op("invite", G, B, D, heads)  # ... while B, on the other side, invites D
    acc = make_op("accept", G, D, None, [inv.id])
    r1 = replica(root, [*base, rm_b, inv, acc])
    r2 = replica(root, [*base, acc, inv, rm_b])
    assert r1.snapshot() == r2.snapshot()
    if rm_b.id < inv.id:  # B was gone at the invite's turn: D never got in
        assert r1.ineffective == {inv.id: "not_admin", acc.id: "not_invited"}
        assert r1.members == {A, C}
    else:  # the invite came first: D is in, B is out
        assert r1.members == {A, C, D}
    # ops_since lets a peer that saw only one side catch up to the same state
    side = replica(root, [*base, rm_b])
    for op in r1.ops_since(side.heads):
        side.add(op)
    assert side.snapshot() == r1.snapshot()


# --- convergence -----------------------------------------------------------------------

N_KEYS = 6
TARGETED = ("invite", "remove", "promote")

def choose(state: GroupState, me: bytes, other: bytes, r: int) -> tuple[str, bytes | None]:
    """A plausible op of ``me`` on its own view (``r``: a die), sometimes a senseless one
    (an ineffective op, or a right the author has lost on a side it has not heard of)."""
    if r == 0:
        kind = ("invite", "accept", "decline", "leave", "remove", "promote")[other[0] % 6]
        return kind, (other if kind in TARGETED and other != me else None)
    if me in state.invited:
        return ("decline" if r < 4 else "accept"), None
    if me in state.admins and other != me:
        if other in state.members:
            return ("remove" if r < 8 else "promote"), other
        if other not in state.invited:
            return "invite", other
    if me in state.members and r < 3:
        return "leave", None
    return "", None


@settings(derandomize=True, deadline=None, max_examples=300)
@given(st.integers(0, 2**64))
def test_same_ops_same_state(seed: int) -> None:
    """Members act on their own partial views and exchange random subsets (partitions
    come and go); then every op reaches fresh replicas in random orders, with duplicates:
    all of them agree, and so does every member once it has heard everything.

    The history is driven by a seeded RNG rather than drawn step by step: drawn steps
    shrink towards nothing happening, and a seed gives long, eventful histories."""
    rng = random.Random(seed)
    root = make_op("create", G, KEYS[0], name="g", ts=1)
    members = [Member(GroupState.create(root), KEYS[i]) for i in range(N_KEYS)]
    # a shared start (some members joined, some admins), known to all, then partitions
    made = grow(members[0].state, *KEYS[1:rng.randrange(1, N_KEYS + 1)])
    for k in members[0].state.members - {KEYS[0]}:
        if rng.random() < 0.4:
            made.append(members[0].act("promote", k))
    for m in members[1:]:
        for op in made:
            m.state.add(op)
    for _ in range(rng.randrange(10, 150)):
        i = rng.randrange(N_KEYS)
        if rng.random() < 0.6:
            j = rng.randrange(N_KEYS)
            kind, target = choose(members[i].state, KEYS[i], KEYS[j], rng.randrange(20))
            if kind and not (kind in TARGETED and target is None):
                made.append(members[i].act(kind, target))
        else:
            src, p = members[i].state, rng.random()
            for j in rng.sample(range(N_KEYS), rng.randrange(N_KEYS)):
                dst = members[j].state
                # a partial exchange: some ops stay pending on the far side
                for op in [o for o in src.ops_since(dst.heads) if rng.random() < p]:
                    dst.add(op)

    ref = replica(root, made).snapshot()
    assert not ref["pending"]
    for _ in range(3):
        delivery = made + rng.sample(made, len(made) // 3)
        rng.shuffle(delivery)
        assert replica(root, delivery).snapshot() == ref
    for m in members:  # each member's own view converges once it has everything
        for op in made:
            m.state.add(op)
        assert m.state.snapshot() == ref


def test_an_ineffective_op_is_never_a_parent_of_a_new_op() -> None:
    """A non-admin's remove reached one replica alone: the ops written there next must not
    name it, or every other replica would hold them pending forever."""
    root, state = new_group()
    grow(state, B, C)
    forged = make_op("remove", G, B, C, state.heads, 50)
    assert state.add(forged).status == "ineffective"
    assert forged.id in state.heads and forged.id not in state.effective_heads
    nxt = make_op("remove", G, A, C, state.effective_heads, 51)
    assert state.add(nxt).status == "effective"
    other = replica(root, [op for op in state.ops_since(()) if op.id != forged.id
                           and op.kind != "create"])
    assert not other.pending and other.members == frozenset({A, B})
    # once the forged op reaches it too, both replicas are the same
    other.add(forged)
    assert other.snapshot() == state.snapshot()
