"""File link messages (common/filewire.py): round trips, every limit, and nothing but
``RemoteProtocolError`` out of any input."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tazcom.common import codec, filewire
from tazcom.common.errors import RemoteProtocolError
from tazcom.common.filetree import CHUNK, PROOF_MAX
from tazcom.common.filewire import INDICES_MAX, Chunk, NoneMsg, Want, decode, encode
from tazcom.common.limits import APP_BODY_MAX

FID = bytes(range(32))
ORIGIN = bytes(range(32, 64))
H = bytes(32)


def test_messages_round_trip() -> None:
    for msg in (Want(FID, ORIGIN, 0, (0, 5, 2**32 - 1)), Chunk(FID, 3, b"data", (H, H)),
                Chunk(FID, 0, b"", ()), NoneMsg(FID, (1,))):
        assert decode(encode(msg)) == msg
    assert codec.unpack(encode(Want(FID, ORIGIN, 0, (1, 2))), 1000) == \
        ["want", FID, ORIGIN, 0, [1, 2]]
    assert codec.unpack(encode(NoneMsg(FID, (4,))), 1000) == ["none", FID, [4]]
    assert codec.unpack(encode(Chunk(FID, 4, b"x", (H,))), 1000) == ["chunk", FID, 4, b"x", [H]]


def test_the_largest_messages_fit_one_app_body() -> None:
    big = Chunk(FID, 2**32 - 1, bytes(CHUNK), (H,) * PROOF_MAX)
    assert len(encode(big)) <= APP_BODY_MAX
    assert decode(encode(big)) == big
    want = Want(FID, ORIGIN, 0, tuple(range(2**32 - INDICES_MAX, 2**32)))
    assert decode(encode(want)) == want


BAD: dict[str, tuple[Any, str]] = {
    "not_a_list": ({"t": "want"}, "bad_message"),
    "empty": ([], "bad_message"),
    "unknown_type": (["have", FID], "unknown_type"),
    "type_not_str": ([1, FID], "unknown_type"),
    "type_list": ([["want"], FID], "unknown_type"),
    "too_many_indices": (["want", FID, ORIGIN, list(range(INDICES_MAX + 1))], "too_many"),
    "too_many_nones": (["none", FID, list(range(INDICES_MAX + 1))], "too_many"),
    "no_indices": (["want", FID, ORIGIN, []], "bad_message"),
    "repeated_index": (["want", FID, ORIGIN, [3, 4, 3]], "bad_message"),
    "repeated_none": (["none", FID, [1, 1]], "bad_message"),
    "negative_index": (["none", FID, [-1]], "bad_message"),
    "index_over_u32": (["none", FID, [2**32]], "bad_message"),
    "index_not_int": (["none", FID, ["1"]], "bad_message"),
    "short_id": (["none", FID[:31], [1]], "bad_message"),
    "short_origin": (["want", FID, ORIGIN[:31], [1]], "bad_message"),
    "data_too_large": (["chunk", FID, 0, bytes(CHUNK + 1), []], "too_large"),
    "proof_too_long": (["chunk", FID, 0, b"x", [H] * (PROOF_MAX + 1)], "too_many"),
    "short_hash": (["chunk", FID, 0, b"x", [H[:31]]], "bad_message"),
    "data_as_str": (["chunk", FID, 0, "x", []], "bad_message"),
    "chunk_index_negative": (["chunk", FID, -1, b"x", []], "bad_message"),
    "extra_field": (["none", FID, [1], 0], "bad_message"),
    "missing_field": (["chunk", FID, 0, b"x"], "bad_message"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_messages_are_refused_with_a_code(case: str) -> None:
    raw, code = BAD[case]
    with pytest.raises(RemoteProtocolError) as e:
        decode(codec.pack(raw))
    assert e.value.code == code, e.value


def test_oversize_and_garbage_bodies() -> None:
    with pytest.raises(RemoteProtocolError) as e:
        decode(bytes(APP_BODY_MAX + 1))
    assert e.value.code == "too_large"
    with pytest.raises(RemoteProtocolError) as e:
        decode(b"\x94\xa4want")  # truncated
    assert e.value.code == "bad_encoding"


def test_kind_is_file() -> None:
    assert filewire.KIND == "file"


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.one_of(
    st.binary(max_size=120),
    st.tuples(st.sampled_from(["want", "chunk", "none", "x", 0]),
              st.lists(st.one_of(st.integers(-1, 2**33), st.binary(max_size=40),
                                 st.lists(st.one_of(st.integers(-1, 2**33),
                                                    st.binary(min_size=31, max_size=33)),
                                          max_size=70),
                                 st.none(), st.text(max_size=3)), max_size=5))
    .map(lambda t: codec.pack([t[0], *t[1]]))))
def test_anything_decodes_or_is_refused_with_a_protocol_error(body: bytes) -> None:
    try:
        msg = decode(body)
    except RemoteProtocolError:
        return
    assert decode(encode(msg)) == msg
