"""Membership of a private group: a state machine over a set of signed operations. No I/O.

Theory of operation
-------------------
A group is born from one ``create`` op; every later change of membership is an op
(``invite``, ``accept``, ``decline``, ``leave``, ``remove``, ``promote``) naming as
``parents`` the heads its author knew. The ops form a DAG rooted at the create. The
caller has already checked each op's signature (the envelope's): here an op is taken as
authenticated to its ``author``.

**The state is a function of the set of known ops, not of the order they arrived in.**
It is a fold in one deterministic order: topological by parents (an op after all of its
parents), ties among the ops ready at the same moment broken by op id (bytes order:
Kahn's algorithm with a min-heap). Each op is checked against the state at its turn in
that fold; an op whose author lacks the right there is *ineffective*: it stays in the set
(so every replica holds the same set, and its descendants stay in the DAG) but changes
nothing, and carries a code (``not_admin``, ``not_member``, ``not_invited``,
``already_member``, ``already_invited``, ``already_admin``, ``too_many``) for the caller
to count and log. An op with a parent not (yet) known is *pending*: kept, outside the
fold, until its ancestry is complete. Two replicas with the same ops therefore have the
same members, admins, invitees, epoch and heads, whatever they received first.

Concurrent conflicting ops resolve by the fold order: of two admins removing each other
concurrently, the op with the smaller id runs first and the other one, its author now
gone, is ineffective. An author can grind its op id to win such a race; that only decides
between admins, who could remove anybody anyway.

``add`` *refuses* (does not store) only what no replica should store: a malformed op
(``bad_op``), another group's (``unknown_group``), a known op (``replay``), and anything
beyond the set's bounds (``too_many``). Refusals depend on the op alone (plus the bound),
never on the order of arrival, which is what keeps the sets, hence the states, equal.
For the same reason the member cap (``MAX_MEMBERS``) is a rule of the fold (an invite
that would pass it is ineffective, ``too_many``), not a refusal at ``add``.

Only the one create a state was built from (``GroupState.create``) is a root: another
create for the same group id is ``bad_op``. Otherwise anybody could sign a rival create
with a smaller id and become the group's first admin. The caller anchors a group on the
create it was invited into.

``epoch`` grows by one at every effective ``remove`` or ``leave`` (after which the
remaining members re-key). ``members_at(e)`` is everyone who was a member at some moment
of epoch ``e`` (who may read what was sent under it); ``epoch_of_op`` the epoch in force
just after an op in the fold.

Cost: an op extending every current head (the usual case: a member acting on what it
knows) is applied in place; any other op (concurrent, or releasing pending ones) refolds
from scratch, O(n log n) for n ops.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
from collections.abc import Iterable
from typing import Annotated, Any, ClassVar, Literal

from . import codec
from .errors import RemoteProtocolError, SchemaError
from .schema import ArrayRecord, Len, Range, record

VERSION = 1
ID_BYTES = 32
KEY_BYTES = 32
NAME_MAX = 64
#: Parents of one op: the heads its author knew; more means a pathological DAG.
MAX_PARENTS = 256
MAX_OPS = 10_000
MAX_MEMBERS = 1000
#: Ops waiting for a parent: bounded apart, so ops naming parents that will never come
#: cannot take up the whole set.
MAX_PENDING = 1000
#: One encoded op: the fixed fields, a longest name and MAX_PARENTS parents (34 bytes each).
OP_MAX = 9216
PERSON = b"tazcom-gop"

KINDS = ("create", "invite", "accept", "decline", "leave", "remove", "promote")
Kind = Literal["create", "invite", "accept", "decline", "leave", "remove", "promote"]
#: Kinds whose author acts on itself: target nil or the author.
SELF_KINDS = frozenset({"create", "accept", "decline", "leave"})

Id = Annotated[bytes, Len(ID_BYTES, ID_BYTES)]
PubKey = Annotated[bytes, Len(KEY_BYTES, KEY_BYTES)]


@record
class OpBody(ArrayRecord):
    """``[1, group, kind, author, target, parents, ts, name]``: what an op id hashes."""

    CODE: ClassVar[str] = "bad_op"
    TAG: ClassVar[int] = VERSION

    group: Id
    kind: Kind
    author: PubKey
    target: PubKey | None
    parents: Annotated[tuple[Id, ...], Len(0, MAX_PARENTS)]
    ts: Annotated[int, Range(0, 2**63 - 1)]
    name: Annotated[str, Len(1, NAME_MAX, utf8=True)] | None


@dataclasses.dataclass(frozen=True, slots=True)
class Op:
    """One membership operation; ``id`` = BLAKE2b-256 of its encoding (``encode``)."""

    id: bytes
    group: bytes
    kind: str
    author: bytes
    target: bytes | None
    parents: tuple[bytes, ...]
    ts: int
    name: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """What ``add`` did with an op. ``status``: ``effective``, ``ineffective`` (stored,
    changed nothing; ``code`` says why), ``pending`` (stored, a parent is missing) or
    ``rejected`` (not stored; ``code``)."""

    status: str
    code: str | None = None

    @property
    def accepted(self) -> bool:
        return self.status != "rejected"


def _body(op: Op) -> OpBody:
    return OpBody(op.group, op.kind, op.author, op.target, op.parents, op.ts, op.name)


def _digest(body: OpBody) -> bytes:
    return hashlib.blake2b(codec.pack(body.to_array()), digest_size=ID_BYTES,
                           person=PERSON).digest()


def _rules(body: OpBody) -> None:
    """The shape rules a schema cannot say; raises ``RemoteProtocolError`` ``bad_op``."""
    def bad(why: str) -> None:
        raise RemoteProtocolError(why, code="bad_op")

    # Sorted and unique: one set of parents has one encoding, hence one id.
    if any(a >= b for a, b in zip(body.parents, body.parents[1:], strict=False)):
        bad("parents must be sorted and distinct")
    if body.kind == "create":
        if body.parents:
            bad("a create has no parents")
        if body.name is None:
            bad("a create has a name")
    else:
        if not body.parents:
            bad(f"{body.kind} needs parents")
        if body.name is not None:
            bad("only a create has a name")
    if body.kind in SELF_KINDS:
        if body.target not in (None, body.author):
            bad(f"{body.kind} targets its author")
    elif body.target is None or body.target == body.author:
        bad(f"{body.kind} targets another key")


def _from_body(body: OpBody) -> Op:
    return Op(_digest(body), body.group, body.kind, body.author, body.target, body.parents,
              body.ts, body.name)


def make_op(kind: str, group: bytes, author: bytes, target: bytes | None = None,
            parents: Iterable[bytes] = (), ts: int = 0, name: str | None = None) -> Op:
    """A well-formed op with its id (parents sorted, duplicates dropped); raises
    ``RemoteProtocolError`` ``bad_op`` for one that ``add`` would refuse as malformed."""
    try:
        body = OpBody(group, kind, author, target, tuple(sorted(set(parents))), ts, name)
    except SchemaError as e:
        raise RemoteProtocolError(e.message, code="bad_op") from None
    _rules(body)
    return _from_body(body)


def encode(op: Op) -> bytes:
    """The canonical encoding of ``op`` (what its id hashes)."""
    return codec.pack(_body(op).to_array())


def decode(data: bytes) -> Op:
    """The op in ``data``, its id computed; raises ``RemoteProtocolError`` (``too_large``,
    ``bad_op``)."""
    try:
        body = OpBody.from_array(codec.unpack(data, OP_MAX))
    except RemoteProtocolError as e:
        if e.code == "too_large":
            raise
        raise RemoteProtocolError(e.message, code="bad_op") from None
    _rules(body)
    return _from_body(body)


def check(op: Any) -> None:
    """Raise ``RemoteProtocolError`` ``bad_op`` unless ``op`` is a well-formed ``Op`` whose
    id is its hash."""
    if not isinstance(op, Op):
        raise RemoteProtocolError("not an Op", code="bad_op")
    try:
        body = _body(op)
    except SchemaError as e:
        raise RemoteProtocolError(e.message, code="bad_op") from None
    _rules(body)
    if _digest(body) != op.id:
        raise RemoteProtocolError("id is not the hash of the op", code="bad_op")


class _Fold:
    """The state after applying ops one by one in fold order."""

    def __init__(self) -> None:
        self.name = ""
        self.members: dict[bytes, int] = {}  # key -> join order (for the headless rule)
        self.joined = 0
        self.admins: set[bytes] = set()
        self.invited: set[bytes] = set()
        self.epoch = 0
        self.epoch_members: list[set[bytes]] = [set()]
        self.order: list[bytes] = []
        self.codes: dict[bytes, str | None] = {}  # applied op -> None (effective) or code
        self.op_epoch: dict[bytes, int] = {}

    def _join(self, key: bytes) -> None:
        self.members[key] = self.joined
        self.joined += 1
        self.epoch_members[self.epoch].add(key)

    def _gone(self, key: bytes) -> None:
        self.members.pop(key, None)
        self.admins.discard(key)
        self.invited.discard(key)
        self.epoch += 1
        self.epoch_members.append(set(self.members))
        if self.members and not self.admins:  # never headless: the oldest member leads
            self.admins.add(min(self.members, key=self.members.__getitem__))

    def _rule(self, op: Op) -> str | None:
        """Apply ``op`` if its author has the right now; else the code of what it lacks."""
        k, a, t = op.kind, op.author, op.target
        if k == "create":
            self.name = op.name or ""
            self._join(a)
            self.admins.add(a)
        elif k in ("invite", "remove", "promote") and a not in self.admins:
            return "not_admin"
        elif k == "invite":
            assert t is not None
            if t in self.members:
                return "already_member"
            if t in self.invited:
                return "already_invited"
            if len(self.members) + len(self.invited) >= MAX_MEMBERS:
                return "too_many"
            self.invited.add(t)
        elif k in ("accept", "decline"):
            if a not in self.invited:
                return "not_invited"
            self.invited.discard(a)
            if k == "accept":
                self._join(a)
        elif k == "leave":
            if a not in self.members:
                return "not_member"
            self._gone(a)
        elif k == "remove":
            assert t is not None
            if t not in self.members and t not in self.invited:
                return "not_member"
            self._gone(t)
        else:  # promote
            assert t is not None
            if t not in self.members:
                return "not_member"
            if t in self.admins:
                return "already_admin"
            self.admins.add(t)
        return None

    def apply(self, op: Op) -> str | None:
        code = self._rule(op)
        self.order.append(op.id)
        self.codes[op.id] = code
        self.op_epoch[op.id] = self.epoch
        return code


class GroupState:
    """The membership of one group, from the set of ops it was given (see module doc)."""

    def __init__(self, root: Op) -> None:
        self.group_id = root.group
        self._root = root.id
        self._ops: dict[bytes, Op] = {}
        self._children: dict[bytes, list[bytes]] = {}  # parent id (known or not) -> ops
        self._fold = _Fold()
        self._heads: set[bytes] = set()
        self._pending: set[bytes] = set()

    @classmethod
    def create(cls, op: Op) -> GroupState:
        """The state of the group ``op`` creates; raises ``RemoteProtocolError``
        (``bad_op``, or ``unknown_group`` for a well-formed op that is not a create)."""
        check(op)
        if op.kind != "create":
            raise RemoteProtocolError("a group starts with its create", code="unknown_group")
        state = cls(op)
        state.add(op)
        return state

    # --- adding ops ------------------------------------------------------------------

    def add(self, op: Any) -> Verdict:
        """Store ``op`` and fold it in; never raises, changes nothing when it refuses."""
        try:
            check(op)
        except RemoteProtocolError as e:
            return Verdict("rejected", e.code)
        if op.group != self.group_id:
            return Verdict("rejected", "unknown_group")
        if op.id in self._ops:
            return Verdict("rejected", "replay")
        if op.kind == "create" and op.id != self._root:
            return Verdict("rejected", "bad_op")  # one root per group (module doc)
        if len(self._ops) >= MAX_OPS:
            return Verdict("rejected", "too_many")
        ready = all(p in self._fold.codes for p in op.parents)
        if not ready and len(self._pending) >= MAX_PENDING:
            return Verdict("rejected", "too_many")

        self._ops[op.id] = op
        for p in op.parents:
            self._children.setdefault(p, []).append(op.id)
        if not ready:
            self._pending.add(op.id)
            return Verdict("pending")
        if self._heads.issubset(op.parents) and not self._children.get(op.id):
            # It comes after every op we applied and frees no pending one: append.
            self._fold.apply(op)
            self._heads = {op.id}
        else:
            self._refold()
        code = self._fold.codes[op.id]
        return Verdict("effective") if code is None else Verdict("ineffective", code)

    def _refold(self) -> None:
        fold = _Fold()
        waiting = {i: len(op.parents) for i, op in self._ops.items()}
        ready = [self._root]
        heads: set[bytes] = set()
        while ready:
            i = heapq.heappop(ready)
            fold.apply(self._ops[i])
            heads.add(i)
            heads.difference_update(self._ops[i].parents)
            for c in self._children.get(i, ()):
                waiting[c] -= 1
                if not waiting[c]:
                    heapq.heappush(ready, c)
        self._fold = fold
        self._heads = heads
        self._pending = set(self._ops).difference(fold.codes)

    # --- reading the state -----------------------------------------------------------

    @property
    def name(self) -> str:
        return self._fold.name

    @property
    def members(self) -> frozenset[bytes]:
        return frozenset(self._fold.members)

    @property
    def admins(self) -> frozenset[bytes]:
        return frozenset(self._fold.admins)

    @property
    def invited(self) -> frozenset[bytes]:
        return frozenset(self._fold.invited)

    @property
    def epoch(self) -> int:
        return self._fold.epoch

    @property
    def heads(self) -> tuple[bytes, ...]:
        """The ops no other folded op names as parent, sorted: a new op's parents."""
        return tuple(sorted(self._heads))

    @property
    def effective_heads(self) -> tuple[bytes, ...]:
        """The parents a new local op names: the effective ops no effective op names as a
        parent, sorted. An ineffective op (a non-admin's ``remove``...) is never named: it
        may have reached this replica alone, and an op naming it would wait for it forever
        at every other member (an op's parents are what its author *applied*)."""
        codes = self._fold.codes
        named: set[bytes] = set()
        for i in self._fold.order:
            if codes[i] is None:
                named.update(self._ops[i].parents)
        return tuple(sorted(i for i in self._fold.order if codes[i] is None and i not in named))

    @property
    def pending(self) -> frozenset[bytes]:
        return frozenset(self._pending)

    @property
    def ineffective(self) -> dict[bytes, str]:
        """Folded ops that changed nothing, with the code of the right their author lacked."""
        return {i: c for i, c in self._fold.codes.items() if c is not None}

    def __len__(self) -> int:
        return len(self._ops)

    def __contains__(self, op_id: object) -> bool:
        return op_id in self._ops

    def get(self, op_id: bytes) -> Op | None:
        return self._ops.get(op_id)

    def effective(self, op_id: bytes) -> bool:
        """Whether ``op_id`` is folded and changed the state (False if pending or unknown)."""
        return op_id in self._fold.codes and self._fold.codes[op_id] is None

    def epoch_of_op(self, op_id: bytes) -> int | None:
        """The epoch in force just after ``op_id`` in the fold; None if not folded."""
        return self._fold.op_epoch.get(op_id)

    def members_at(self, epoch: int) -> frozenset[bytes]:
        """Everyone who was a member at some moment of ``epoch`` (empty if no such epoch)."""
        if not 0 <= epoch < len(self._fold.epoch_members):
            return frozenset()
        return frozenset(self._fold.epoch_members[epoch])

    def ops_since(self, heads: Iterable[bytes]) -> list[Op]:
        """The folded ops a peer whose heads are ``heads`` lacks, parents first (heads we
        do not know are ignored: the peer is ahead there)."""
        known: set[bytes] = set()
        stack = [h for h in heads if h in self._fold.codes]
        while stack:
            i = stack.pop()
            if i not in known:
                known.add(i)
                stack.extend(self._ops[i].parents)
        return [self._ops[i] for i in self._fold.order if i not in known]

    def snapshot(self) -> dict[str, Any]:
        """Everything the set of ops determines, comparable between replicas."""
        f = self._fold
        return {
            "group": self.group_id,
            "name": f.name,
            "members": sorted(f.members),
            "admins": sorted(f.admins),
            "invited": sorted(f.invited),
            "epoch": f.epoch,
            "heads": self.heads,
            "order": tuple(f.order),
            "ineffective": sorted(self.ineffective.items()),
            "pending": sorted(self._pending),
            "members_at": [sorted(m) for m in f.epoch_members],
        }
