"""The router's private groups, sans-IO: envelopes of kinds 7 and 8 to and from ``GroupCore``.

Theory of operation (docs/groups.md, docs/protocol.md "Private groups")
------------------------------------------------------------------------
``GroupRouter`` is a part of ``RouterCore`` (a mixin: it uses the core's directory, flood
limits, store actions and forwarding). The decisions about membership and keys are
``common.groupcore``'s; this module turns its actions into envelopes and back:

* ``SealTo`` becomes a ``group_ctl`` envelope (kind 7) to that member, the body sealed to
  its DM key: routed, held and acknowledged like a DM. A member whose profile (its DM key)
  has not reached us yet waits in ``group_outbox`` until it does (saved with the groups).
* ``Publish`` becomes a ``group`` envelope (kind 8) whose ``to`` is the group id: flooded
  and caught up like a room message, one ciphertext whatever the size of the group.
* ``Show`` puts the text into the stored row (``StoreText``: the row was committed, as
  ciphertext, before it could be opened), shows it (``chat.message``, kind ``group``) and
  acknowledges it to its author with a receipt.
* ``Changed`` is announced (``group.changed``); every group input ends with ``SaveGroups``
  (the service writes the groups whose state changed).

Statuses: our group message is ``delivered`` from the first member's receipt on, its
``reason`` saying how many of the members it was for have acknowledged it ("2 of 3
members"), updated as receipts come.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, defaultdict
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nacl.exceptions

from . import catchup, envelope, groupwire, rpc
from .envelope import KIND_GROUP, KIND_GROUP_CTL, KIND_RECEIPT, Envelope, EnvelopeError
from .events import ChatMessage, ChatStatus, GroupChanged
from .groupcore import Action as GroupAction
from .groupcore import Changed, GroupCore, Held, Publish, Refused, SealTo, Show
from .keys import fingerprint

if TYPE_CHECKING:
    from .routercore import Accepted, PostRefused, RouterCore

#: The hello capability of nodes that read group envelopes (kinds 7 and 8).
CAP_GROUP = "group/1"
CTL_TYPE = {groupwire.KIND_OP: "op", groupwire.KIND_WELCOME: "welcome",
            groupwire.KIND_KEY: "key"}
#: Our group messages whose receipts we count (the newest).
ACKS_KEPT = 4096
#: The personalisation of a group id derived from a ``group.create`` client_id.
CREATE_PERSON = b"tazcom-gcreate"
#: Control messages waiting for their recipient's profile.
OUTBOX_MAX = 10_000


@dataclass(slots=True)
class StoreText:
    """A stored row's text and conversation, once a group message opened."""

    id: bytes
    conv: bytes
    text: str


@dataclass(slots=True)
class StoreReason:
    """A stored own message's reason at the same status (a group message's "2 of 3")."""

    id: bytes
    reason: str


@dataclass(slots=True)
class SaveAcks:
    """Who has acknowledged our group message ``id`` so far (the count outlives a
    restart): its group, the epoch it was written in, the members whose receipts came."""

    id: bytes
    group: bytes
    epoch: int
    acked: list[bytes]


@dataclass(slots=True)
class SaveGroups:
    """Write the groups' state and ``group_outbox`` (the service skips what is unchanged)."""


@dataclass(slots=True)
class _Acks:
    group: bytes
    epoch: int
    meant: frozenset[bytes]
    acked: set[bytes]


Step = Generator[Any, Any, Any]


class GroupRouter:
    """Mixin of ``RouterCore`` (module doc)."""

    def init_groups(self: RouterCore) -> None:  # type: ignore[misc]
        self.groups = GroupCore(self.own_key)
        #: Links that did not say ``group/1``: they would refuse kinds 7 and 8.
        self.nogroup_links: set[bytes] = set()
        self.group_outbox: list[SealTo] = []
        #: Our control messages: their statuses are kept, not announced (nobody saw them).
        self.quiet: set[bytes] = set()
        self.group_acks: OrderedDict[bytes, _Acks] = OrderedDict()
        #: Group inputs held, refused and shown (``groups.refused`` has the codes).
        self.group_counts = {"held": 0, "refused": 0, "shown": 0}

    # -- reading -----------------------------------------------------------------------------

    def group_role(self: RouterCore, group: bytes) -> str:  # type: ignore[misc]
        s = self.groups.state(group)
        assert s is not None
        if self.own_key in s.members:
            return "admin" if self.own_key in s.admins else "member"
        if self.own_key in s.invited:
            return "invited"
        for op_id in reversed(s.snapshot()["order"]):
            op = s.get(op_id)
            if op is not None and s.effective(op_id) and op.kind == "remove" \
                    and op.target == self.own_key:
                return "removed"
        return "left"

    def group_info(self: RouterCore, group: bytes) -> rpc.GroupInfo:  # type: ignore[misc]
        s = self.groups.state(group)
        assert s is not None
        def nick(k: bytes) -> str:
            d = self.directory.get(k)
            return d.nickname if d is not None else (self.nickname if k == self.own_key
                                                     else "")
        members = [rpc.GroupMember(key=k.hex(), nickname=nick(k), admin=k in s.admins)
                   for k in sorted(s.members)]
        members += [rpc.GroupMember(key=k.hex(), nickname=nick(k), role="invited")
                    for k in sorted(s.invited)]
        invited_by = None
        for op_id in s.snapshot()["order"]:
            op = s.get(op_id)
            if op is not None and op.kind == "invite" and op.target == self.own_key \
                    and s.effective(op_id):
                invited_by = op.author.hex()
        return rpc.GroupInfo(group=group.hex(), name=s.name,
                             role=self.group_role(group),  # type: ignore[arg-type]
                             epoch=s.epoch, members=tuple(members), invited_by=invited_by)

    def group_table(self: RouterCore) -> rpc.GroupTable:  # type: ignore[misc]
        return rpc.GroupTable(groups=tuple(self.group_info(g) for g in self.groups.groups),
                              refused=tuple(sorted(self.groups.refused.items()))[:64])

    def resolve_group(self: RouterCore, ref: str) -> bytes | PostRefused:  # type: ignore[misc]
        named = [g for g in self.groups.groups if self.groups.groups[g].state.name == ref]
        if len(named) == 1:
            return named[0]
        low = ref.lower()
        by_id = [g for g in self.groups.groups if len(low) >= 4 and g.hex().startswith(low)]
        found = named or by_id
        if len(found) == 1:
            return found[0]
        if found:
            return rc.PostRefused("ambiguous", f"{len(found)} groups match {ref!r}: use the "
                               "group's id (tazcom groups)")
        return rc.PostRefused("not_found", f"no group {ref!r} here (tazcom groups)")

    def load_acks(self: RouterCore, rows: list[tuple[bytes, bytes, int, list[bytes]]]  # type: ignore[misc]
                  ) -> None:
        """The counts of our group messages' receipts, as ``SaveAcks`` left them (oldest
        first); those of a group we no longer have are dropped."""
        for msg_id, group, epoch, acked in rows:
            s = self.groups.state(group)
            if s is None:
                continue
            meant = frozenset(s.members_at(epoch) - {self.own_key})
            self.group_acks[msg_id] = _Acks(group, epoch, meant, set(acked) & meant)
        while len(self.group_acks) > ACKS_KEPT:
            self.group_acks.popitem(last=False)

    # -- what arrives --------------------------------------------------------------------------

    def group_input(self: RouterCore, a: Accepted, ctl: tuple[str, bytes] | None  # type: ignore[misc]
                    ) -> list[GroupAction]:
        env = a.env
        if env.kind == KIND_GROUP_CTL and ctl is not None:
            kind, body = ctl
            handler = {"op": self.groups.on_op, "welcome": self.groups.on_welcome,
                       "key": self.groups.on_key}[kind]
            return handler(env.origin, body)
        if env.kind == KIND_GROUP and env.to in self.groups.groups:
            return self.groups.on_msg(env.origin, env.body, (env.id, env.ts, a.hops))
        return []

    def group_actions(self: RouterCore, actions: list[GroupAction], source: str,  # type: ignore[misc]
                      now: float, mono: float) -> Step:
        """Carry out what the group core decided (module doc)."""
        seals: list[SealTo] = []
        shows: list[Show] = []
        for act in actions:
            if isinstance(act, SealTo):
                seals.append(act)
            elif isinstance(act, Show):
                shows.append(act)
            elif isinstance(act, Changed):
                yield self.group_changed(act.group)
            elif isinstance(act, Held):
                self.group_counts["held"] += 1
            elif isinstance(act, Refused):
                self.group_counts["refused"] += 1
                yield self.reject(source, act.code, f"group: {act.detail}")
            elif isinstance(act, Publish):  # only ``say`` publishes: group_say handles it
                raise AssertionError("a publish outside group_say")
        if seals:
            yield from self.send_group_ctl(seals, now, mono)
        if shows:
            yield from self.show_group(shows, now, mono)
        if actions:
            yield SaveGroups()

    def group_changed(self: RouterCore, group: bytes) -> Any:  # type: ignore[misc]
        s = self.groups.state(group)
        assert s is not None
        return rc.Emit(GroupChanged, dict(group=group.hex(), name=s.name,
                                            role=self.group_role(group), epoch=s.epoch,
                                            members=len(s.members), invited=len(s.invited)))

    def show_group(self: RouterCore, shows: list[Show], now: float, mono: float  # type: ignore[misc]
                   ) -> Step:
        acks: dict[bytes, list[bytes]] = defaultdict(list)
        for sh in shows:
            msg_id, ts, hops = sh.ref
            self.group_counts["shown"] += 1
            yield StoreText(msg_id, sh.group, sh.text)
            if not self.muted(sh.sender):
                yield rc.Emit(ChatMessage, dict(
                    id=msg_id.hex(), kind="group", origin=sh.sender.hex(), to=sh.group.hex(),
                    sent=ts, text=sh.text, own=False, hops=min(hops, envelope.MAX_HOPS_LIMIT)))
            acks[sh.sender].append(msg_id)
        specs = [(KIND_RECEIPT, origin, envelope.receipt_body(chunk))
                 for origin, ids in acks.items()
                 for chunk in catchup.chunks(ids, envelope.MAX_RECEIPT_IDS)]
        receipts = yield from self.originate(specs, now)
        yield from self.commit_own(receipts, now)
        yield from self.forward([(r, 0, None) for r in receipts], mono)

    def commit_own(self: RouterCore, envs: list[Envelope], now: float,  # type: ignore[misc]
                   texts: dict[bytes, tuple[bytes, str, bytes | None]] | None = None
                   ) -> Generator[Any, Any, list[rpc.PutOutcome]]:
        """Store our own group envelopes: control messages (held for delivery), messages
        (offered in catch-up) and receipts for group messages (neither)."""
        texts = texts or {}
        items = []
        for r in envs:
            conv, text, client_id = texts.get(r.id, (None, None, None))
            items.append(rpc.StoredMessage(
                id=r.id, kind=r.kind, origin=r.origin, seq=r.seq, ts=r.ts, to=r.to,
                signed=r.signed, sig=r.sig, hops=0, own=True, conv=conv, text=text,
                held=r.kind == KIND_GROUP_CTL, client_id=client_id,
                status="queued" if r.kind != KIND_RECEIPT else ""))
        results: list[rpc.PutOutcome] = (yield rc.Commit(items)) if items else []
        for r in envs:
            self.seen.add(r.id, now)
            if r.kind == KIND_GROUP:
                self.index.add(r.id, r.ts)
            elif r.kind == KIND_GROUP_CTL:
                self.index.add(r.id, r.ts, r.to)
            # a receipt for group messages goes once, along the paths to their author:
            # not held, not offered in catch-up (every member acknowledges every message)
            if r.kind == KIND_GROUP_CTL:
                self.own_status[r.id] = ("queued", r.to)
                self.quiet.add(r.id)
        return results

    def send_group_ctl(self: RouterCore, seals: list[SealTo], now: float, mono: float  # type: ignore[misc]
                       ) -> Step:
        envs = yield from self.originate(self.seal_specs(seals), now)
        yield from self.commit_own(envs, now)
        yield from self.forward([(e, 0, None) for e in envs], mono)

    def seal_specs(self: RouterCore, seals: list[SealTo]  # type: ignore[misc]
                   ) -> list[tuple[int, bytes | None, bytes]]:
        specs: list[tuple[int, bytes | None, bytes]] = []
        for s in seals:
            d = self.directory.get(s.recipient)
            if d is None:  # its DM key has not reached us: sent when its profile does
                if len(self.group_outbox) < OUTBOX_MAX:
                    self.group_outbox.append(s)
                continue
            try:
                body = envelope.seal_group_ctl(origin=self.own_key, what=CTL_TYPE[s.kind],
                                               body=s.body, recipient_enc_key=d.enc_key)
            except (nacl.exceptions.CryptoError, EnvelopeError):
                continue  # a low-order key in its profile: nobody can seal to it
            specs.append((KIND_GROUP_CTL, s.recipient, body))
        return specs

    def flush_group_outbox(self: RouterCore, origin: bytes, now: float, mono: float  # type: ignore[misc]
                           ) -> Step:
        """A profile arrived: what waited for that node's DM key goes now."""
        if not any(s.recipient == origin for s in self.group_outbox):
            return
        ready = [s for s in self.group_outbox if s.recipient == origin]
        self.group_outbox = [s for s in self.group_outbox if s.recipient != origin]
        yield from self.send_group_ctl(ready, now, mono)
        yield SaveGroups()

    def flush_known_outbox(self: RouterCore, now: float, mono: float) -> Step:  # type: ignore[misc]
        """At start: what waited (saved) for a DM key that the directory now holds."""
        ready = [s for s in self.group_outbox if s.recipient in self.directory]
        if not ready:
            return
        self.group_outbox = [s for s in self.group_outbox if s.recipient not in self.directory]
        yield from self.send_group_ctl(ready, now, mono)
        yield SaveGroups()

    def group_acked(self: RouterCore, receipt: Envelope, msg_id: bytes) -> Step:  # type: ignore[misc]
        """A member's receipt for one of our group messages."""
        acks = self.group_acks.get(msg_id)
        if acks is None or receipt.origin not in acks.meant or receipt.origin in acks.acked:
            return
        acks.acked.add(receipt.origin)
        k, n = len(acks.acked), len(acks.meant)
        reason = f"{k} of {n} members"
        self.own_status.pop(msg_id, None)
        yield SaveAcks(msg_id, acks.group, acks.epoch, sorted(acks.acked))
        yield rc.SetStatus([rpc.StatusUpdate(id=msg_id, status="delivered", reason=reason)])
        yield StoreReason(msg_id, reason)
        yield rc.Emit(ChatStatus, dict(id=msg_id.hex(), status="delivered", reason=reason,
                                         to=acks.group.hex(), delivered=k, members=n))

    # -- what the user does ---------------------------------------------------------------------

    def group_create(self: RouterCore, name: str, client_id: bytes | None,  # type: ignore[misc]
                     fresh: bytes, now: float, mono: float
                     ) -> Generator[Any, Any, rpc.GroupInfo | PostRefused]:
        """A new group whose id is ``fresh`` (random, from the caller), or, with a
        ``client_id``, derived from it: a retry names the same group and finds it made."""
        gid = fresh if client_id is None else hashlib.blake2b(
            self.own_key + client_id, digest_size=32, person=CREATE_PERSON).digest()
        if gid in self.groups.groups:
            return self.group_info(gid)
        return (yield from self.group_local("create", gid.hex(), name, now, mono))

    def group_local(self: RouterCore, method: str, ref: str | None, arg: Any,  # type: ignore[misc]
                    now: float, mono: float
                    ) -> Generator[Any, Any, rpc.GroupInfo | PostRefused]:
        """``create`` (``arg`` the name, ``ref`` the new id as hex), ``invite``, ``accept``,
        ``decline``, ``leave``, ``remove`` (``arg`` the peer's key)."""
        ts = int(now * 1000)
        if method == "create":
            assert ref is not None
            group = bytes.fromhex(ref)
            actions = self.groups.create(arg, group, ts)
        else:
            found = self.resolve_group(ref or "")
            if isinstance(found, rc.PostRefused):
                return found
            group = found
            if method in ("invite", "remove"):
                if arg == self.own_key:
                    return rc.PostRefused("bad_recipient", "that is this node's own key")
                s = self.groups.state(group)
                if method == "invite" and arg not in self.directory and s is not None \
                        and self.own_key in s.admins:
                    return rc.PostRefused("no_key", f"no profile of {fingerprint(arg)} has "
                                       "reached us yet (it appears once the peer is known)")
                actions = getattr(self.groups, method)(group, arg, ts)
            else:
                actions = getattr(self.groups, method)(group, ts)
        refused = [a for a in actions if isinstance(a, Refused)]
        if refused:
            return rc.PostRefused(refused[0].code, refused[0].detail)
        yield from self.group_actions(actions, "local", now, mono)
        return self.group_info(group)

    def group_say(self: RouterCore, ref: str, text: str, client_id: bytes,  # type: ignore[misc]
                  now: float, mono: float
                  ) -> Generator[Any, Any, rpc.PostResult | PostRefused]:
        found = self.resolve_group(ref)
        if isinstance(found, rc.PostRefused):
            return found
        group = found
        refused = self.refuse_post(None, text)
        if refused is not None:
            return refused
        if not self.flood.take_own(KIND_GROUP, self.own_key, mono):
            return self.own_limit(KIND_GROUP, self.flood.own_allowance(KIND_GROUP,
                                                                        self.own_key, mono))
        actions = self.groups.say(group, text, int(now * 1000))
        bad = [a for a in actions if isinstance(a, Refused)]
        if bad:
            return rc.PostRefused(bad[0].code, bad[0].detail)
        [pub] = [a for a in actions if isinstance(a, Publish)]
        seals = [a for a in actions if isinstance(a, SealTo)]
        specs = [*self.seal_specs(seals), (KIND_GROUP, group, pub.body)]
        envs = yield from self.originate(specs, now)
        msg = envs[-1]
        results = yield from self.commit_own(envs, now, {msg.id: (group, text, client_id)})
        outcome = results[-1]
        self.counts["posted"] += 1
        if outcome.new:
            s = self.groups.state(group)
            assert s is not None
            self.own_status[msg.id] = ("queued", group)
            self.group_acks[msg.id] = _Acks(group, s.epoch,
                                            frozenset(s.members - {self.own_key}), set())
            yield SaveAcks(msg.id, group, s.epoch, [])
            while len(self.group_acks) > ACKS_KEPT:
                self.group_acks.popitem(last=False)
            yield rc.Emit(ChatMessage, dict(
                id=msg.id.hex(), kind="group", origin=self.own_key.hex(), to=group.hex(),
                sent=msg.ts, text=text, own=True, hops=0, status="queued"))
        # a retry of a post already made (its client_id): the first one went, not this copy
        out = envs if outcome.new else envs[:-1]
        sent = yield from self.forward([(e, 0, None) for e in out], mono)
        yield SaveGroups()
        self._sent += sorted(i for i in sent if i == msg.id)
        st = "sent" if msg.id in sent else "queued"
        return rpc.PostResult(message_id=outcome.id, status=st,  # type: ignore[arg-type]
                              new=outcome.new)


# At the end: routercore imports this module for the mixin, and this one uses its actions.
from . import routercore as rc  # noqa: E402
