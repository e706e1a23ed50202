"""The body of a file manifest, envelope kind 6 ``file`` (docs/files.md, "The manifest").
No I/O.

The body is ``msgpack([1, file_id, size, chunk_size, meta])``:

* a **room file** (the envelope's ``to`` nil): ``meta`` = ``{"name": str, "mime": str}``,
  name 1..255 UTF-8 bytes, mime 0..64 printable ASCII;
* a **DM file** (``to`` the recipient): ``meta`` = a sealed box (to the recipient's DM
  key, made and opened by the router, like a DM) of ``msgpack({"name", "mime", "key"})``
  (``Secret`` here), so relays learn only that a file of ``size`` bytes goes from the
  origin to the recipient. ``size`` is then the ciphertext's, and must be a size some
  ciphertext has (``filecrypt.plain_size``).

Which of the two a body is depends on the envelope (``to``), not on the body, so
``decode`` is told. A size over ``FILE_MAX`` is ``too_large`` (a relay or a recipient can
refuse it before anything is fetched); every other fault is ``bad_manifest``, an unknown
version ``bad_version``. Unknown keys of a room ``meta`` or a ``Secret`` are ignored, so a
newer origin may add some.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from . import codec
from .errors import RemoteProtocolError
from .filecrypt import KEY_BYTES, plain_size
from .filetree import CHUNK, FILE_MAX, HASH
from .limits import SEALED_BOX_MIN
from .schema import ArrayRecord, Key, Len, Match, Range, Record, record

KIND_FILE = 6  # envelope.KIND_FILE (envelope imports this module)
VERSION = 1
NAME_MAX = 255
MIME_MAX = 64
#: The sealed meta of a DM file: a box (48 bytes) around at most name, mime, key and the
#: map around them (about 380 bytes); a bigger one is refused unopened.
SEALED_META_MAX = 512
#: A whole manifest body: the fields above and room meta with the longest name and mime.
MANIFEST_MAX = 1024

Hash = Annotated[bytes, Len(HASH, HASH)]
Size = Annotated[int, Range(0, 2**64 - 1)]
#: Version 1 fixes the chunk size (docs/files.md, "Limits").
ChunkSize = Annotated[int, Range(CHUNK, CHUNK)]
Name = Annotated[str, Len(1, NAME_MAX, utf8=True)]
Mime = Annotated[str, Len(0, MIME_MAX), Match(r"[ -~]*")]


@record
class RoomMeta(Record):
    """What a room file says about itself, in clear."""

    CODE: ClassVar[str] = "bad_manifest"

    #: The announced name: only a suggestion, made safe before it touches a disk.
    name: Name
    mime: Mime = ""


@record
class Secret(Record):
    """The plaintext of a DM file's sealed meta: its author (the envelope's origin, so a
    box cannot be re-sent under another origin), name, type and file key."""

    CODE: ClassVar[str] = "bad_manifest"

    author: Annotated[bytes, Len(KEY_BYTES, KEY_BYTES), Key("from")]
    name: Name
    mime: Mime
    key: Annotated[bytes, Len(KEY_BYTES, KEY_BYTES)]


@record
class RoomManifest(ArrayRecord):
    """``[1, file_id, size, chunk_size, {"name", "mime"}]``."""

    CODE: ClassVar[str] = "bad_manifest"
    TAG: ClassVar[int] = VERSION
    TAG_CODE: ClassVar[str | None] = "bad_version"

    file_id: Hash
    size: Size
    chunk_size: ChunkSize
    meta: RoomMeta


@record
class DMManifest(ArrayRecord):
    """``[1, file_id, size, chunk_size, sealed]``: ``sealed`` holds a ``Secret``."""

    CODE: ClassVar[str] = "bad_manifest"
    TAG: ClassVar[int] = VERSION
    TAG_CODE: ClassVar[str | None] = "bad_version"

    file_id: Hash
    size: Size
    chunk_size: ChunkSize
    meta: Annotated[bytes, Len(SEALED_BOX_MIN, SEALED_META_MAX)]


Manifest = RoomManifest | DMManifest


def _limits(m: Manifest) -> None:
    if m.size > FILE_MAX:
        raise RemoteProtocolError(f"a file of {m.size} bytes; at most {FILE_MAX}",
                                  code="too_large")
    if isinstance(m, DMManifest) and plain_size(m.size, m.chunk_size) is None:
        raise RemoteProtocolError(f"no encrypted file is {m.size} bytes long (a chunk "
                                  "shorter than its tag)", code="bad_manifest")


def encode(m: Manifest) -> bytes:
    """The envelope body of ``m``; raises ``RemoteProtocolError`` for a manifest that
    ``decode`` would refuse (a local caller's mistake, caught before it is signed)."""
    _limits(m)
    return codec.pack(m.to_array())


def decode(body: bytes, *, dm: bool) -> Manifest:
    """The manifest in an envelope body; ``dm``: the envelope has a recipient. Raises
    ``RemoteProtocolError`` (``bad_manifest``, ``bad_version``, ``too_large``,
    ``bad_encoding``)."""
    raw = codec.unpack(body, MANIFEST_MAX)
    m: Manifest = DMManifest.from_array(raw) if dm else RoomManifest.from_array(raw)
    _limits(m)
    return m


def encode_secret(s: Secret) -> bytes:
    """What the router seals to the recipient as a DM file's ``meta``."""
    return codec.pack(s.to_dict())


def decode_secret(plain: bytes) -> Secret:
    """The opened ``meta`` of a DM file; raises ``RemoteProtocolError`` (``bad_manifest``,
    ``bad_encoding``, ``too_large``)."""
    return Secret.from_dict(codec.unpack(plain, SEALED_META_MAX))
