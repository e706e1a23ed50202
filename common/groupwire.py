"""The bodies of the private-group envelopes (docs/groups.md, "Wiring"). No I/O.

Every body is a msgpack array whose first item is its version (``VERSION``); the envelope
kind says which body it is (the router signs, seals and relays; ``groupcore`` reads):

===================  ==================================================  ====================
``group_op``         ``[1, op]``                                          sealed to each member
``group_welcome``    ``[1, group, [op, ...]]``                            sealed to an invitee
``group_key``        ``[1, sender, group, epoch, index, chain_key]``      sealed to each member
``group_msg``        ``[1, group, epoch, index, ciphertext]``             published to the group
===================  ==================================================  ====================

``op`` is an encoded ``groupstate`` op (``groupstate.encode``); a welcome carries the
group's create first, then every op the inviter has folded, parents first. A message's
sender is its envelope's origin; its associated data is ``header_ad`` and its plaintext,
once opened, the msgpack map ``{"text": str}`` (``Text``).

Limits: an op ``groupstate.OP_MAX`` bytes, a welcome ``WELCOME_OPS_MAX`` ops in at most
``WELCOME_MAX`` bytes, a ciphertext the text limit plus the map and the tag. Faults raise
``RemoteProtocolError``: oversized input ``too_large``, not msgpack ``bad_encoding``, a
version other than 1 ``bad_version``, more than ``WELCOME_OPS_MAX`` ops ``too_many``, any
other malformed body ``bad_message`` (an op inside that does not decode: ``bad_op``).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from . import codec, groupstate, senderkeys
from .errors import RemoteProtocolError
from .limits import KEY_BYTES, TEXT_MAX
from .schema import UINT64_MAX, ArrayRecord, Len, Range, Record, record

VERSION = 1
KIND_OP = "group_op"
KIND_WELCOME = "group_welcome"
KIND_KEY = "group_key"
KIND_MSG = "group_msg"
KINDS = (KIND_OP, KIND_WELCOME, KIND_KEY, KIND_MSG)

#: Ops in one welcome piece: the history an invitee needs to fold the group.
WELCOME_OPS_MAX = 2000
WELCOME_MAX = 256 * 1024
#: A body that travels sealed in one ``group_ctl`` envelope (common/envelope.py): a
#: welcome longer than this goes in pieces (``encode_welcomes``).
SEALED_BODY_MAX = 4600
#: Epochs are counted by removals: far below 2^32 in any real group.
EPOCH_MAX = 2**32 - 1
#: The plaintext map ``{"text": ...}``: the text plus a few bytes of msgpack.
PLAIN_MAX = TEXT_MAX + 16
CIPHER_MAX = PLAIN_MAX + senderkeys.TAG
OP_BODY_MAX = groupstate.OP_MAX + 16
KEY_BODY_MAX = 256
MSG_BODY_MAX = CIPHER_MAX + 128

GroupId = Annotated[bytes, Len(groupstate.ID_BYTES, groupstate.ID_BYTES)]
PubKey = Annotated[bytes, Len(KEY_BYTES, KEY_BYTES)]
Epoch = Annotated[int, Range(0, EPOCH_MAX)]
Index = Annotated[int, Range(0, UINT64_MAX)]
OpBytes = Annotated[bytes, Len(1, groupstate.OP_MAX)]


class _Versioned(ArrayRecord):
    TAG: ClassVar[int] = VERSION
    TAG_CODE: ClassVar[str | None] = "bad_version"


@record
class OpMsg(_Versioned):
    """``group_op``: one membership op, sealed to each member (and the op's target)."""

    op: OpBytes


@record
class Welcome(_Versioned):
    """``group_welcome``: the group's history for an invitee, create first."""

    group: GroupId
    ops: Annotated[tuple[OpBytes, ...], Len(1, WELCOME_OPS_MAX)]


@record
class KeyMsg(_Versioned):
    """``group_key``: a ``senderkeys.SenderKey``, sealed to one member."""

    sender: PubKey
    group: GroupId
    epoch: Epoch
    index: Index
    chain_key: Annotated[bytes, Len(senderkeys.KEY_BYTES, senderkeys.KEY_BYTES)]


@record
class MsgBody(_Versioned):
    """``group_msg``: one message, encrypted once for the whole group."""

    group: GroupId
    epoch: Epoch
    index: Index
    ciphertext: Annotated[bytes, Len(senderkeys.TAG, CIPHER_MAX)]


@record
class Text(Record):
    """The plaintext inside a ``group_msg``."""

    text: Annotated[str, Len(1, TEXT_MAX, utf8=True)]


def header_ad(group: bytes, epoch: int, sender: bytes, index: int) -> bytes:
    """A message's associated data: ``group || u64be(epoch) || sender || u64be(index)``."""
    return group + epoch.to_bytes(8, "big") + sender + index.to_bytes(8, "big")


def _array(data: bytes, limit: int) -> Any:
    if not isinstance(data, bytes):
        raise RemoteProtocolError("a group body is bytes", code="bad_message")
    return codec.unpack(data, limit)


# --- op ---------------------------------------------------------------------------------

def encode_op(op: groupstate.Op) -> bytes:
    return codec.pack(OpMsg(groupstate.encode(op)).to_array())


def decode_op(data: bytes) -> groupstate.Op:
    return groupstate.decode(OpMsg.from_array(_array(data, OP_BODY_MAX)).op)


# --- welcome ----------------------------------------------------------------------------

def encode_welcome(group: bytes, ops: list[groupstate.Op]) -> bytes:
    return codec.pack(Welcome(group, tuple(groupstate.encode(o) for o in ops)).to_array())


def encode_welcomes(group: bytes, ops: list[groupstate.Op],
                    limit: int = SEALED_BODY_MAX) -> list[bytes]:
    """The welcome in pieces of at most ``limit`` bytes, in the order of ``ops`` (parents
    first). Each piece starts with the create, so each decodes alone; the invitee folds the
    pieces as they come, in any order (``groupcore``: a staged welcome)."""
    create, rest = ops[0], ops[1:]
    root = groupstate.encode(create)
    pieces: list[bytes] = []
    batch: list[bytes] = [root]
    size = len(root) + 48
    for op in rest:
        raw = groupstate.encode(op)
        if len(batch) > 1 and (size + len(raw) + 4 > limit
                               or len(batch) >= WELCOME_OPS_MAX):
            pieces.append(codec.pack(Welcome(group, tuple(batch)).to_array()))
            batch, size = [root], len(root) + 48
        batch.append(raw)
        size += len(raw) + 4
    pieces.append(codec.pack(Welcome(group, tuple(batch)).to_array()))
    return pieces


def decode_welcome(data: bytes) -> tuple[bytes, list[groupstate.Op]]:
    """(group id, ops): the ops all of that group, the first its create."""
    raw = _array(data, WELCOME_MAX)
    if type(raw) is list and len(raw) == 3 and type(raw[2]) is list \
            and len(raw[2]) > WELCOME_OPS_MAX:
        raise RemoteProtocolError(f"{len(raw[2])} ops; at most {WELCOME_OPS_MAX}",
                                  code="too_many")
    w = Welcome.from_array(raw)
    ops = [groupstate.decode(o) for o in w.ops]
    if ops[0].kind != "create":
        raise RemoteProtocolError("a welcome starts with the create", code="bad_message")
    if any(o.group != w.group for o in ops):
        raise RemoteProtocolError("a welcome op of another group", code="bad_message")
    return w.group, ops


# --- key --------------------------------------------------------------------------------

def encode_key(key: senderkeys.SenderKey) -> bytes:
    return codec.pack(KeyMsg(key.sender, key.group, key.epoch, key.index,
                             key.chain_key).to_array())


def decode_key(data: bytes) -> senderkeys.SenderKey:
    k = KeyMsg.from_array(_array(data, KEY_BODY_MAX))
    return senderkeys.SenderKey(k.sender, k.group, k.epoch, k.index, k.chain_key)


# --- msg --------------------------------------------------------------------------------

def encode_msg(group: bytes, epoch: int, index: int, ciphertext: bytes) -> bytes:
    return codec.pack(MsgBody(group, epoch, index, ciphertext).to_array())


def decode_msg(data: bytes) -> MsgBody:
    return MsgBody.from_array(_array(data, MSG_BODY_MAX))


def encode_text(text: str) -> bytes:
    return codec.pack(Text(text=text).to_dict())


def decode_text(data: bytes) -> str:
    return Text.from_dict(codec.unpack(data, PLAIN_MAX)).text
