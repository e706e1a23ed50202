"""File manifests (common/filemanifest.py): what decodes is exactly what was encoded, and
every lie or oversize is refused with a code before anything is fetched."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tazcom.common import codec, filecrypt
from tazcom.common.errors import RemoteProtocolError
from tazcom.common.filemanifest import (
    MANIFEST_MAX,
    SEALED_META_MAX,
    DMManifest,
    RoomManifest,
    RoomMeta,
    Secret,
    decode,
    decode_secret,
    encode,
    encode_secret,
)
from tazcom.common.filetree import CHUNK, FILE_MAX

FID = bytes(range(32))
DM_SIZE = filecrypt.cipher_size(1000)


def room(**meta: Any) -> list[Any]:
    return [1, FID, 1000, CHUNK, {"name": "photo.jpg", "mime": "image/jpeg", **meta}]


def test_room_and_dm_manifests_round_trip() -> None:
    m = RoomManifest(FID, 1000, CHUNK, RoomMeta(name="photo.jpg", mime="image/jpeg"))
    assert decode(encode(m), dm=False) == m
    assert codec.unpack(encode(m), 4096) == room()
    d = DMManifest(FID, DM_SIZE, CHUNK, bytes(100))
    assert decode(encode(d), dm=True) == d
    assert decode(codec.pack([1, FID, 0, CHUNK, {"name": "x"}]), dm=False).meta.mime == ""


def test_the_largest_manifests_fit_their_limits() -> None:
    big = RoomManifest(FID, FILE_MAX, CHUNK, RoomMeta(name="é" * 127 + "a", mime="a" * 64))
    assert len(encode(big)) <= MANIFEST_MAX
    assert decode(encode(big), dm=False) == big
    sealed = DMManifest(FID, FILE_MAX, CHUNK, bytes(SEALED_META_MAX))
    assert decode(encode(sealed), dm=True) == sealed
    secret = Secret(author=bytes(32), name="é" * 127 + "a", mime="a" * 64, key=bytes(32))
    assert len(encode_secret(secret)) + 48 <= SEALED_META_MAX  # 48: the sealed box


BAD: dict[str, tuple[list[Any], bool, str]] = {
    "version": ([2, *room()[1:]], False, "bad_version"),
    "over_file_max": ([1, FID, FILE_MAX + 1, CHUNK, room()[4]], False, "too_large"),
    "huge_size": ([1, FID, 2**64 - 1, CHUNK, room()[4]], False, "too_large"),
    "negative_size": ([1, FID, -1, CHUNK, room()[4]], False, "bad_manifest"),
    "float_size": ([1, FID, 10.0, CHUNK, room()[4]], False, "bad_manifest"),
    "chunk_size": ([1, FID, 1000, CHUNK // 2, room()[4]], False, "bad_manifest"),
    "short_id": ([1, FID[:31], 1000, CHUNK, room()[4]], False, "bad_manifest"),
    "id_as_str": ([1, FID.hex(), 1000, CHUNK, room()[4]], False, "bad_manifest"),
    "empty_name": (room(name=""), False, "bad_manifest"),
    "long_name": (room(name="é" * 128), False, "bad_manifest"),  # 256 bytes of UTF-8
    "name_not_str": (room(name=b"x"), False, "bad_manifest"),
    "long_mime": (room(mime="a" * 65), False, "bad_manifest"),
    "mime_control": (room(mime="text/plain\n"), False, "bad_manifest"),
    "mime_not_ascii": (room(mime="imagé/x"), False, "bad_manifest"),
    "no_name": ([1, FID, 1000, CHUNK, {"mime": ""}], False, "bad_manifest"),
    "meta_bytes_for_room": ([1, FID, 1000, CHUNK, bytes(100)], False, "bad_manifest"),
    "meta_map_for_dm": ([1, FID, DM_SIZE, CHUNK, room()[4]], True, "bad_manifest"),
    "sealed_too_short": ([1, FID, DM_SIZE, CHUNK, bytes(47)], True, "bad_manifest"),
    "sealed_too_long": ([1, FID, DM_SIZE, CHUNK, bytes(SEALED_META_MAX + 1)], True,
                        "bad_manifest"),
    "dm_size_no_ciphertext": ([1, FID, 10, CHUNK, bytes(100)], True, "bad_manifest"),
    "dm_size_tag_only_chunk": ([1, FID, CHUNK + 16, CHUNK, bytes(100)], True, "bad_manifest"),
    "dm_over_file_max": ([1, FID, FILE_MAX + 1, CHUNK, bytes(100)], True, "too_large"),
    "extra_field": ([*room(), 0], False, "bad_manifest"),
    "missing_field": (room()[:4], False, "bad_manifest"),
    "not_a_list": ({"v": 1}, False, "bad_manifest"),  # type: ignore[dict-item]
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_manifests_are_refused_with_a_code(case: str) -> None:
    raw, dm, code = BAD[case]
    with pytest.raises(RemoteProtocolError) as e:
        decode(codec.pack(raw), dm=dm)
    assert e.value.code == code, e.value


def test_garbage_and_oversize_bodies() -> None:
    with pytest.raises(RemoteProtocolError) as e:
        decode(b"\xc1", dm=False)
    assert e.value.code == "bad_encoding"
    with pytest.raises(RemoteProtocolError) as e:
        decode(codec.pack(room()) + b"\0", dm=False)
    assert e.value.code == "bad_encoding"
    with pytest.raises(RemoteProtocolError) as e:
        decode(bytes(MANIFEST_MAX + 1), dm=False)
    assert e.value.code == "too_large"


def test_encode_refuses_what_decode_would() -> None:
    with pytest.raises(RemoteProtocolError) as e:
        encode(RoomManifest(FID, FILE_MAX + 1, CHUNK, RoomMeta(name="a")))
    assert e.value.code == "too_large"
    with pytest.raises(RemoteProtocolError):
        encode(DMManifest(FID, 5, CHUNK, bytes(64)))
    with pytest.raises(RemoteProtocolError):
        RoomManifest(FID, 1, CHUNK - 1, RoomMeta(name="a"))


def test_unknown_meta_keys_are_ignored() -> None:
    assert decode(codec.pack(room(thumb=b"x")), dm=False).meta.name == "photo.jpg"
    s = decode_secret(codec.pack({"from": bytes(32), "name": "a", "mime": "", "key": bytes(32),
                                  "new": 1}))
    assert s == Secret(author=bytes(32), name="a", mime="", key=bytes(32))


def test_the_secret_round_trips_and_is_checked() -> None:
    s = Secret(author=bytes(32), name="report.pdf", mime="application/pdf",
               key=bytes(range(32)))
    assert decode_secret(encode_secret(s)) == s
    a = bytes(32)
    for bad in ({"from": a, "name": "a", "mime": "", "key": bytes(31)},
                {"from": a, "name": "", "mime": "", "key": bytes(32)},
                {"from": a, "name": "a", "key": bytes(32)}, [1, 2], {"name": "a"},
                {"name": "a", "mime": "", "key": bytes(32)},
                {"from": bytes(31), "name": "a", "mime": "", "key": bytes(32)}):
        with pytest.raises(RemoteProtocolError) as e:
            decode_secret(codec.pack(bad))
        assert e.value.code == "bad_manifest"
    with pytest.raises(RemoteProtocolError) as e:
        decode_secret(bytes(SEALED_META_MAX + 1))
    assert e.value.code == "too_large"


@settings(max_examples=150, deadline=None, derandomize=True)
@given(body=st.one_of(st.binary(max_size=200),
                      st.lists(st.one_of(st.integers(-2, 2**65), st.binary(max_size=40),
                                         st.text(max_size=5), st.none(),
                                         st.dictionaries(st.text(max_size=5),
                                                         st.text(max_size=5), max_size=3)),
                               max_size=6).map(codec.pack)),
       dm=st.booleans())
def test_anything_decodes_or_is_refused_with_a_protocol_error(body: bytes, dm: bool) -> None:
    try:
        m = decode(body, dm=dm)
    except RemoteProtocolError:
        return
    assert decode(encode(m), dm=dm) == m
