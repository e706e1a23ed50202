"""The file-transfer link messages, link ``app`` kind ``file`` (docs/files.md,
"Transfer"). No I/O.

Each body is a msgpack array whose first item is its type:

==========  ====================================================  ============================
``want``    ``["want", file_id, origin, size, [index, ...]]``     send me these chunks
``chunk``   ``["chunk", file_id, index, data, [hash, ...]]``       one chunk and its proof
``none``    ``["none", file_id, [index, ...]]``                   I lack these, cannot get them
==========  ====================================================  ============================

Limits (the threat is a neighbour making us allocate or loop): at most ``INDICES_MAX``
(64) distinct indices, each a u32; ``data`` at most ``CHUNK`` bytes; a proof at most
``PROOF_MAX`` (32) hashes of 32 bytes. A body is at most the link's ``APP_BODY_MAX``. A
decoded ``chunk`` is only well formed: whether it is *true* is ``filetree.verify``'s
question, asked by whoever wanted it. Faults raise ``RemoteProtocolError``: an unknown
type is ``unknown_type`` (dropped; newer nodes may add types), data over ``CHUNK``
``too_large``, over 64 indices or 32 proof hashes ``too_many``, anything else (a repeated
index, a wrong-sized hash, a missing or extra field) ``bad_message``.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from . import codec
from .errors import RemoteProtocolError
from .filetree import CHUNK, FILE_MAX, HASH, INDEX_MAX, PROOF_MAX
from .limits import APP_BODY_MAX, KEY_BYTES
from .schema import ArrayRecord, Len, Range, record

#: The link ``app`` kind these messages travel under.
KIND = "file"
#: Chunk indices in one ``want`` or ``none``: twice a requester's window.
INDICES_MAX = 64

Hash = Annotated[bytes, Len(HASH, HASH)]
Index = Annotated[int, Range(0, INDEX_MAX)]
Indices = Annotated[tuple[Index, ...], Len(1, INDICES_MAX)]


@record
class Want(ArrayRecord):
    """Send me these chunks of ``file_id``, whose origin is ``origin`` (so a relay that
    lacks them knows where to ask: its next hop toward the origin)."""

    TAG: ClassVar[str] = "want"

    file_id: Hash
    origin: Annotated[bytes, Len(KEY_BYTES, KEY_BYTES)]
    #: The file's size, which its id commits to: a relay that never saw the manifest can
    #: check chunks with it (a false size only makes every proof fail).
    size: Annotated[int, Range(0, FILE_MAX)]
    indices: Indices


@record
class Chunk(ArrayRecord):
    """Chunk ``index`` of ``file_id`` and its proof (filetree.py)."""

    TAG: ClassVar[str] = "chunk"

    file_id: Hash
    index: Index
    data: Annotated[bytes, Len(0, CHUNK)]
    proof: Annotated[tuple[Hash, ...], Len(0, PROOF_MAX)]


@record
class NoneMsg(ArrayRecord):
    """I do not have these chunks of ``file_id`` and cannot get them now: ask elsewhere."""

    TAG: ClassVar[str] = "none"

    file_id: Hash
    indices: Indices


FileMessage = Want | Chunk | NoneMsg
TYPES: dict[str, type[Want] | type[Chunk] | type[NoneMsg]] = {
    "want": Want, "chunk": Chunk, "none": NoneMsg}


def encode(msg: FileMessage) -> bytes:
    return codec.pack(msg.to_array())


def decode(body: bytes) -> FileMessage:
    """A ``file`` message from a neighbour; raises ``RemoteProtocolError`` (module
    docstring for the codes)."""
    raw = codec.unpack(body, APP_BODY_MAX)
    if type(raw) is not list or not raw:
        raise RemoteProtocolError("a file message is an array", code="bad_message")
    cls = TYPES.get(raw[0]) if type(raw[0]) is str else None
    if cls is None:
        raise RemoteProtocolError(f"unknown file message type {str(raw[0])[:20]!r}",
                                  code="unknown_type")
    # counted before the schema looks, so that an over-long list has its own code
    last = raw[-1]
    if cls is Chunk and len(raw) == 5:
        if type(raw[3]) is bytes and len(raw[3]) > CHUNK:
            raise RemoteProtocolError(f"a chunk of {len(raw[3])} bytes; at most {CHUNK}",
                                      code="too_large")
        if type(last) is list and len(last) > PROOF_MAX:
            raise RemoteProtocolError(f"a proof of {len(last)} hashes; at most {PROOF_MAX}",
                                      code="too_many")
    elif cls is not Chunk and type(last) is list and len(last) > INDICES_MAX:
        raise RemoteProtocolError(f"{len(last)} indices; at most {INDICES_MAX}",
                                  code="too_many")
    msg = cls.from_array(raw)
    if not isinstance(msg, Chunk) and len(set(msg.indices)) != len(msg.indices):
        # a repeated index would make a relay wait for, or a sender send, a chunk twice
        raise RemoteProtocolError("an index is repeated", code="bad_message")
    return msg
