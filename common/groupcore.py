"""One node's private groups: the glue between the router and the two cores. No I/O.

Theory of operation
-------------------
``GroupCore`` holds, per group, its ``GroupState`` (membership, common/groupstate.py), a
``KeyStore`` of the other members' sender chains and our own ``SenderChain`` per epoch
(common/senderkeys.py). The router gives it what it received (signature checked, sealed
bodies opened, ``origin`` the signer) and asks it to act for the user; every entry point
returns a list of actions for the router to carry out and never raises on remote input:

- ``SealTo(recipient, kind, body)``: seal ``body`` to that member's DM key, send it as an
  envelope of ``kind`` addressed to it (``group_op``, ``group_welcome``, ``group_key``);
- ``Publish(kind, group, body)``: a ``group_msg`` envelope relayed like a room message,
  scoped by group id (O(1) ciphertext whatever the size of the group);
- ``Show``: a message to show; ``Changed``: the membership changed; ``Held``: kept until
  what it needs arrives; ``Refused(code, detail)``: refused, counted in ``refused``.

A refusal changes nothing, with one exception that groupstate explains: an op whose
author lacked the right (``not_admin``...) is *kept* ineffective (its effect depends on
the fold order), and reported as ``Refused`` with its code.

**Ops.** A local op goes, sealed, to every member and invitee (before and after it) and to
its target: O(members) per op; ops are rare. An invitee gets a ``group_welcome``: the
create and every op so far, from which it folds the group.

**Keys.** We re-key lazily: ``say`` in an epoch for which we have no chain makes a fresh
one and seals its ``SenderKey`` to every current member but us, then publishes. When a
member joins an epoch in which we already have a chain, we seal it our chain as it is now
(it reads from there on). After a removal the new epoch's chains go only to the remaining
members, so a removed member, whatever it keeps, has no key for what follows.

**Out of order.** A key or message for an epoch we do not know yet, or arriving while
some op waits for its parents, may be about members we have not heard of: it is *held*
(bounded, ``MAX_HELD`` per group, oldest dropped) and retried after every membership
change; a held message is retried after every new key too. A message for an epoch in
which we are a member but lack the sender's key is held likewise (the key is on its
way). Otherwise a key from someone not a member at its epoch is ``not_member``, a message
from one ``not_member``, and one for an epoch in which we were not a member ``no_key``.

Limits (the caller must know): a key or message that needs an op we have not received at
all (not even pending) when it arrives is judged on what we know, and refused.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, OrderedDict
from typing import Any

from . import codec, groupstate, groupwire, senderkeys
from .errors import LocalProtocolError, RemoteProtocolError
from .groupstate import GroupState, Op

#: Keys and messages held per group until the ops or keys they need arrive.
MAX_HELD = 256
#: What the user is told when its own action cannot be done.
WHY = {"not_admin": "only an admin of the group can do that",
       "already_member": "that peer is already a member",
       "already_invited": "that peer is invited already",
       "not_invited": "there is no invitation to this group to answer",
       "not_member": "not a member of this group"}
#: Groups whose welcome is still arriving in pieces.
MAX_STAGED = 16
#: Parents of a local op: the heads, at most this many (an op names what its author
#: knew; fewer parents only make it concurrent with the rest, and keep it small enough
#: for one envelope).
LOCAL_PARENTS_MAX = 64


@dataclasses.dataclass(frozen=True, slots=True)
class SealTo:
    recipient: bytes
    kind: str
    body: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Publish:
    kind: str
    group: bytes
    body: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Show:
    group: bytes
    sender: bytes
    epoch: int
    index: int
    text: str
    #: What the caller gave ``on_msg`` to name the message (its envelope), kept while held.
    ref: Any = None


@dataclasses.dataclass(frozen=True, slots=True)
class Changed:
    group: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Held:
    kind: str
    group: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Refused:
    code: str
    detail: str = ""


Action = SealTo | Publish | Show | Changed | Held | Refused


class _Group:
    def __init__(self, state: GroupState) -> None:
        self.state = state
        self.keys = senderkeys.KeyStore(state.group_id)
        self.chains: dict[int, senderkeys.SenderChain] = {}
        # (sender, body) -> None, oldest first
        self.held_keys: OrderedDict[tuple[bytes, bytes], Any] = OrderedDict()
        # (sender, body) -> the caller's ref
        self.held_msgs: OrderedDict[tuple[bytes, bytes], Any] = OrderedDict()


def _view(state: GroupState) -> tuple[object, ...]:
    return (state.name, state.members, state.admins, state.invited, state.epoch)


def _hold(held: OrderedDict[tuple[bytes, bytes], Any], item: tuple[bytes, bytes],
          ref: Any = None) -> None:
    held[item] = ref
    while len(held) > MAX_HELD:
        held.popitem(last=False)


class GroupCore:
    """Every group of the node whose key is ``own_key`` (module doc)."""

    def __init__(self, own_key: bytes) -> None:
        self.own = own_key
        self.groups: dict[bytes, _Group] = {}
        #: Welcomes still arriving in pieces, by group (not a group of ours yet).
        self.staged: OrderedDict[bytes, GroupState] = OrderedDict()
        #: Ops for a group not known here, refused (``unknown_group``) but remembered,
        #: bounded: an invitee's welcome can arrive after another member's op (its
        #: ``accept``) that went a shorter way; they are applied once the welcome is in.
        self.orphans: OrderedDict[bytes, list[tuple[bytes, bytes]]] = OrderedDict()
        self.refused: Counter[str] = Counter()

    # --- reading --------------------------------------------------------------------------

    def state(self, group: bytes) -> GroupState | None:
        g = self.groups.get(group)
        return g.state if g else None

    # --- helpers --------------------------------------------------------------------------

    @staticmethod
    def _deny(code: str, detail: str = "") -> list[Action]:
        """The user's own action cannot be done (not counted: ``refused`` counts inputs)."""
        return [Refused(code, detail)]

    def _refuse(self, code: str, detail: str = "") -> list[Action]:
        self.refused[code] += 1
        return [Refused(code, detail)]

    def _send_op(self, g: _Group, op: Op, before: set[bytes]) -> list[Action]:
        s = g.state
        to = before | s.members | s.invited | ({op.target} if op.target else set())
        if op.kind == "invite":
            to.discard(op.target)  # the invitee gets the op in its welcome
        body = groupwire.encode_op(op)
        return [SealTo(k, groupwire.KIND_OP, body) for k in sorted(to - {self.own})]

    def _chain_for_joiners(self, g: _Group, before: frozenset[bytes]) -> list[Action]:
        """Our current chain, sealed to members who joined the current epoch just now."""
        chain = g.chains.get(g.state.epoch)
        if chain is None or self.own not in g.state.members:
            return []
        body = groupwire.encode_key(chain.export())
        return [SealTo(k, groupwire.KIND_KEY, body)
                for k in sorted(g.state.members - before - {self.own})]

    def _after_change(self, g: _Group, before: tuple[object, ...],
                      members_before: frozenset[bytes]) -> list[Action]:
        if _view(g.state) == before:
            return []
        out: list[Action] = [Changed(g.state.group_id)]
        out += self._chain_for_joiners(g, members_before)
        out += self._retry(g)
        return out

    def _retry(self, g: _Group) -> list[Action]:
        out: list[Action] = []
        for sender, body in list(g.held_keys):
            del g.held_keys[(sender, body)]
            out += self.on_key(sender, body, _retry=True)
        for (sender, body), ref in list(g.held_msgs.items()):
            del g.held_msgs[(sender, body)]
            out += self.on_msg(sender, body, ref, _retry=True)
        # A retried item refused now is reported; one held again is not repeated.
        return [a for a in out if not isinstance(a, Held)]

    def _local(self, group: bytes, kind: str, target: bytes | None, ts: int,
               problem: str | None) -> list[Action]:
        g = self.groups.get(group)
        if g is None:
            return self._deny("unknown_group", "no such group here")
        if problem is not None:
            return self._deny(problem, WHY.get(problem, f"cannot {kind}"))
        s = g.state
        before, members_before = _view(s), s.members
        recipients = set(s.members | s.invited)
        try:
            op = groupstate.make_op(kind, group, self.own, target,
                                    s.effective_heads[:LOCAL_PARENTS_MAX], ts)
        except RemoteProtocolError as e:
            return self._deny(e.code, e.message)
        verdict = s.add(op)
        if verdict.status != "effective":
            return self._deny(verdict.code or verdict.status, f"{kind} had no effect")
        out = self._send_op(g, op, recipients)
        if kind == "invite" and target is not None:
            out += [SealTo(target, groupwire.KIND_WELCOME, piece)
                    for piece in groupwire.encode_welcomes(group, s.ops_since(()))]
        return out + self._after_change(g, before, members_before)

    # --- local ----------------------------------------------------------------------------

    def create(self, name: str, group_id: bytes, ts: int) -> list[Action]:
        if group_id in self.groups:
            return self._deny("replay", "group already exists")
        try:
            root = groupstate.make_op("create", group_id, self.own, None, (), ts, name)
        except RemoteProtocolError as e:
            return self._deny(e.code, e.message)
        self.groups[group_id] = _Group(GroupState.create(root))
        return [Changed(group_id)]

    def invite(self, group: bytes, peer: bytes, ts: int) -> list[Action]:
        s = self.state(group)
        problem = None
        if s is not None:
            problem = ("not_admin" if self.own not in s.admins else
                       "already_member" if peer in s.members else
                       "already_invited" if peer in s.invited else None)
        return self._local(group, "invite", peer, ts, problem)

    def accept(self, group: bytes, ts: int) -> list[Action]:
        s = self.state(group)
        problem = None if s is None or self.own in s.invited else "not_invited"
        return self._local(group, "accept", None, ts, problem)

    def decline(self, group: bytes, ts: int) -> list[Action]:
        s = self.state(group)
        problem = None if s is None or self.own in s.invited else "not_invited"
        return self._local(group, "decline", None, ts, problem)

    def leave(self, group: bytes, ts: int) -> list[Action]:
        s = self.state(group)
        problem = None if s is None or self.own in s.members else "not_member"
        return self._local(group, "leave", None, ts, problem)

    def remove(self, group: bytes, peer: bytes, ts: int) -> list[Action]:
        s = self.state(group)
        problem = None
        if s is not None:
            problem = ("not_admin" if self.own not in s.admins else
                       None if peer in s.members or peer in s.invited else "not_member")
        return self._local(group, "remove", peer, ts, problem)

    def say(self, group: bytes, text: str, ts: int = 0) -> list[Action]:
        """Publish ``text`` to ``group``, re-keying first if we have no chain for the
        current epoch. ``ts`` is the router's (it stamps the envelope)."""
        del ts
        g = self.groups.get(group)
        if g is None:
            return self._deny("unknown_group", "no such group here")
        s = g.state
        if self.own not in s.members:
            return self._deny("not_member", "we are not a member")
        try:
            plain = groupwire.encode_text(text)
        except RemoteProtocolError as e:
            return self._deny(e.code, e.message)
        out: list[Action] = []
        chain = g.chains.get(s.epoch)
        if chain is None:
            chain = senderkeys.SenderChain.new(self.own, group, s.epoch)
            g.chains = {e: c for e, c in g.chains.items()
                        if e >= s.epoch - senderkeys.KEEP_EPOCHS}
            g.chains[s.epoch] = chain
            body = groupwire.encode_key(chain.export())
            out += [SealTo(k, groupwire.KIND_KEY, body) for k in sorted(s.members - {self.own})]
        try:
            index = chain.index
            _, sealed = chain.encrypt(plain, groupwire.header_ad(group, s.epoch, self.own,
                                                                 index))
        except LocalProtocolError as e:
            return self._deny("too_many", str(e))
        out.append(Publish(groupwire.KIND_MSG, group,
                           groupwire.encode_msg(group, s.epoch, index, sealed)))
        return out

    # --- received -------------------------------------------------------------------------

    def on_op(self, origin: bytes, body: bytes) -> list[Action]:
        try:
            op = groupwire.decode_op(body)
        except RemoteProtocolError as e:
            return self._refuse(e.code, e.message)
        if op.author != origin:
            return self._refuse("bad_op", "an op travels in its author's envelope")
        g = self.groups.get(op.group)
        if g is None:
            waiting = self.orphans.setdefault(op.group, [])
            if len(waiting) < MAX_HELD:
                waiting.append((origin, body))
            self.orphans.move_to_end(op.group)
            while len(self.orphans) > MAX_STAGED:
                self.orphans.popitem(last=False)
            return self._refuse("unknown_group", "an op for a group not known here")
        before, members_before = _view(g.state), g.state.members
        verdict = g.state.add(op)
        if verdict.status == "rejected":
            return self._refuse(verdict.code or "bad_op", f"{op.kind} refused")
        out: list[Action] = []
        if verdict.status == "pending":
            out.append(Held("op", op.group))
        elif verdict.status == "ineffective":
            out += self._refuse(verdict.code or "ineffective", f"{op.kind} kept, no effect")
        return out + self._after_change(g, before, members_before)

    def on_welcome(self, origin: bytes, body: bytes) -> list[Action]:
        """One piece of a welcome (``groupwire.encode_welcomes``). The pieces are folded
        into a staged state until it shows us invited by an admin with no op missing; a
        group we know already merges the ops it lacks."""
        try:
            group, ops = groupwire.decode_welcome(body)
        except RemoteProtocolError as e:
            return self._refuse(e.code, e.message)
        known = self.groups.get(group)
        if known is not None:  # a second invitation, or more pieces: merge what we lack
            g = known
            if origin not in g.state.admins:
                return self._refuse("not_admin", "a welcome from a non-admin")
            if ops[0].id not in g.state:
                return self._refuse("bad_op", "a welcome with another create")
            before, members_before = _view(g.state), g.state.members
            new = [op for op in ops[1:] if op.id not in g.state]
            if not new:
                return self._refuse("replay", "nothing new in this welcome")
            for op in new:
                g.state.add(op)
            return self._after_change(g, before, members_before)
        state = self.staged.get(group)
        if state is not None and ops[0].id not in state:
            return self._refuse("bad_op", "a welcome with another create")
        if state is None:
            try:
                state = GroupState.create(ops[0])
            except RemoteProtocolError as e:
                return self._refuse(e.code, e.message)
        for op in ops[1:]:
            verdict = state.add(op)
            if verdict.status == "rejected" and verdict.code != "replay":
                self.staged.pop(group, None)
                return self._refuse(verdict.code or "bad_op", "a welcome op refused")
        if state.pending or self.own not in state.invited:
            # more pieces to come (the invite of us is in the last one)
            self.staged[group] = state
            self.staged.move_to_end(group)
            while len(self.staged) > MAX_STAGED:
                self.staged.popitem(last=False)
            return [Held("welcome", group)]
        self.staged.pop(group, None)
        if origin not in state.admins:
            return self._refuse("not_admin", "a welcome from a non-admin")
        self.groups[group] = _Group(state)
        out: list[Action] = [Changed(group)]
        for sender, held in self.orphans.pop(group, []):
            out += [a for a in self.on_op(sender, held)
                    if not (isinstance(a, Refused) and a.code == "replay")]
        return out

    def on_key(self, origin: bytes, body: bytes, _retry: bool = False) -> list[Action]:
        try:
            key = groupwire.decode_key(body)
        except RemoteProtocolError as e:
            return self._refuse(e.code, e.message)
        if key.sender != origin:
            return self._refuse("bad_sender_key", "a key travels in its sender's envelope")
        g = self.groups.get(key.group)
        if g is None:
            return self._refuse("unknown_group", "a key for a group not known here")
        s = g.state
        members = s.members_at(key.epoch)
        if key.epoch > s.epoch or (origin not in members and s.pending):
            _hold(g.held_keys, (origin, body))
            return [Held("key", key.group)]
        try:
            added = g.keys.add(key, members)
        except RemoteProtocolError as e:
            return self._refuse(e.code, e.message)
        if not added:
            return self._refuse("replay", "a key already held")
        if _retry:
            return []
        out: list[Action] = []
        for (sender, held), ref in list(g.held_msgs.items()):
            del g.held_msgs[(sender, held)]
            out += self.on_msg(sender, held, ref, _retry=True)
        return [a for a in out if not isinstance(a, Held)]

    def on_msg(self, origin: bytes, body: bytes, ref: Any = None,
               _retry: bool = False) -> list[Action]:
        try:
            m = groupwire.decode_msg(body)
        except RemoteProtocolError as e:
            return self._refuse(e.code, e.message)
        g = self.groups.get(m.group)
        if g is None:
            return self._refuse("unknown_group", "a message for a group not known here")
        if origin == self.own:
            return []  # our own, come back through the mesh
        s = g.state
        newest = max(s.epoch, g.keys.newest_epoch or 0)
        if m.epoch < newest - senderkeys.KEEP_EPOCHS:
            return self._refuse("stale_epoch", f"epoch {m.epoch} is too old")
        members = s.members_at(m.epoch)
        if m.epoch > s.epoch or (origin not in members and s.pending):
            _hold(g.held_msgs, (origin, body), ref)
            return [Held("msg", m.group)]
        if origin not in members:
            return self._refuse("not_member", f"sender not a member at epoch {m.epoch}")
        if not g.keys.has(origin, m.epoch):
            if self.own in members and self.own != origin:
                _hold(g.held_msgs, (origin, body), ref)
                return [Held("msg", m.group)]
            return self._refuse("no_key", f"no key for this sender at epoch {m.epoch}")
        ad = groupwire.header_ad(m.group, m.epoch, origin, m.index)
        try:
            plain = g.keys.decrypt(origin, m.epoch, m.index, m.ciphertext, ad)
            text = groupwire.decode_text(plain)
        except RemoteProtocolError as e:
            return self._refuse(e.code, e.message)
        return [Show(m.group, origin, m.epoch, m.index, text, ref)]

    # --- the node's disk --------------------------------------------------------------------

    def dump(self, group: bytes) -> bytes:
        """One group's whole state (secret: chain keys), msgpack, for ``load``."""
        g = self.groups[group]
        s = g.state
        ops = [s.get(i) for i in s.snapshot()["order"]] + [s.get(i) for i in sorted(s.pending)]
        return codec.pack([
            1, group, [groupstate.encode(o) for o in ops if o is not None],  # type: ignore[arg-type]
            [[c.epoch, c.export().chain_key, c.index] for c in g.chains.values()],
            g.keys.dump(),
            [[k, b] for (k, b) in g.held_keys],
            [[k, b, list(r) if isinstance(r, tuple) else r] for (k, b), r in g.held_msgs.items()],
        ])

    def load(self, blob: bytes) -> bytes:
        """Restore a group ``dump`` wrote (the node's own file); returns its id."""
        _, group, ops, chains, keys, held_keys, held_msgs = codec.unpack(blob, 64 << 20)
        decoded = [groupstate.decode(o) for o in ops]
        state = GroupState.create(decoded[0])
        for op in decoded[1:]:
            state.add(op)
        g = _Group(state)
        g.chains = {e: senderkeys.SenderChain(self.own, group, e, ck, i) for e, ck, i in chains}
        g.keys = senderkeys.KeyStore.load(group, keys)
        g.held_keys = OrderedDict(((k, b), None) for k, b in held_keys)
        g.held_msgs = OrderedDict(((k, b), tuple(r) if isinstance(r, list) else r)
                                  for k, b, r in held_msgs)
        self.groups[group] = g
        return group
