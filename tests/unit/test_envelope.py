"""Envelopes: sign/verify, ids, every malformed shape, DM sealing and bodies."""

from __future__ import annotations

import contextlib
import os
import random

import nacl.public
import nacl.signing
import pytest

from tazcom.common import codec, envelope
from tazcom.common.envelope import (
    KIND_DM,
    KIND_PROFILE,
    KIND_RECEIPT,
    KIND_ROOM,
    EnvelopeError,
)
from tazcom.common.keys import DOMAIN_ENVELOPE

SK = nacl.signing.SigningKey(b"\x11" * 32)
ORIGIN = bytes(SK.verify_key)
BOB_BOX = nacl.public.PrivateKey(b"\x22" * 32)
BOB = bytes(nacl.signing.SigningKey(b"\x33" * 32).verify_key)


def make(kind: int = KIND_ROOM, *, to: bytes | None = None, body: bytes = b"hello",
         seq: int = 1, ts: int = 1_700_000_000_000, sk: nacl.signing.SigningKey = SK
         ) -> envelope.Envelope:
    signed = envelope.signed_bytes(kind=kind, origin=bytes(sk.verify_key), seq=seq, ts=ts,
                                   to=to, body=body)
    return envelope.parse(signed, sk.sign(DOMAIN_ENVELOPE + signed).signature)


def test_sign_verify_and_id() -> None:
    env = make()
    envelope.verify(env)
    assert env.id == envelope.message_id(env.signed) and len(env.id) == 16
    assert make(seq=2).id != env.id
    assert envelope.room_text(env.body) == "hello"


def test_wrong_or_altered_signature_rejected() -> None:
    env = make()
    other = nacl.signing.SigningKey(os.urandom(32))
    forged = envelope.parse(env.signed, other.sign(DOMAIN_ENVELOPE + env.signed).signature)
    with pytest.raises(EnvelopeError) as info:
        envelope.verify(forged)
    assert info.value.code == "bad_signature"
    altered = bytearray(env.signed)
    altered[-1] ^= 1
    tampered = envelope.parse(bytes(altered), env.sig)
    with pytest.raises(EnvelopeError):
        envelope.verify(tampered)
    # a signature for another domain (an mDNS record) is not an envelope signature
    wrong_domain = envelope.parse(env.signed, SK.sign(b"tazcom-mdns-txt:" + env.signed).signature)
    with pytest.raises(EnvelopeError):
        envelope.verify(wrong_domain)


def _signed(fields: list) -> bytes:
    return codec.pack(fields)


GOOD = [1, KIND_ROOM, ORIGIN, 1, 1_700_000_000_000, None, b"hi"]


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        (GOOD[:6], "bad_envelope"),
        ([3, *GOOD[1:]], "bad_version"),
        ([True, *GOOD[1:]], "bad_version"),
        ([1, 9, *GOOD[2:]], "bad_kind"),
        ([1, KIND_ROOM, ORIGIN[:31], *GOOD[3:]], "bad_envelope"),
        ([1, KIND_ROOM, ORIGIN, -1, *GOOD[4:]], "bad_envelope"),
        ([1, KIND_ROOM, ORIGIN, 1, "now", None, b"hi"], "bad_envelope"),
        ([1, KIND_ROOM, ORIGIN, 1, 5, BOB, b"hi"], "bad_envelope"),       # room with recipient
        ([1, KIND_DM, ORIGIN, 1, 5, None, b"x" * 60], "bad_envelope"),   # DM without one
        ([1, KIND_DM, ORIGIN, 1, 5, b"short", b"x" * 60], "bad_envelope"),
        ([1, KIND_DM, ORIGIN, 1, 5, BOB, b""], "bad_envelope"),          # no box is that small
        ([1, KIND_DM, ORIGIN, 1, 5, BOB, b"x" * 47], "bad_envelope"),
        ([1, KIND_DM, ORIGIN, 1, 5, BOB, b"x" * 4353], "too_large"),       # nor that large
        ([1, KIND_ROOM, ORIGIN, 1, 5, None, "text not bytes"], "bad_envelope"),
        ([1, KIND_ROOM, ORIGIN, 1, 5, None, b"\xff\xfe"], "bad_envelope"),  # not UTF-8
        ([1, KIND_ROOM, ORIGIN, 1, 5, None, b"x" * 4500], "too_large"),
        ([1, KIND_RECEIPT, ORIGIN, 1, 5, BOB, codec.pack([])], "bad_envelope"),
        ([1, KIND_RECEIPT, ORIGIN, 1, 5, BOB, codec.pack([b"short"])], "bad_envelope"),
        ([1, KIND_PROFILE, ORIGIN, 1, 5, None, codec.pack({"nick": ""})], "bad_envelope"),
        ([1, KIND_PROFILE, ORIGIN, 1, 5, None,
          codec.pack({"nick": "a", "enc": b"x" * 32, "links": [b"y"]})], "bad_envelope"),
    ],
)
def test_malformed_envelopes(fields: list, code: str) -> None:
    with pytest.raises(EnvelopeError) as info:
        envelope.parse(_signed(fields), b"\x00" * 64)
    assert info.value.code == code


def test_a_dm_body_has_the_bounds_of_a_sealed_box() -> None:
    from tazcom.common.limits import DM_BODY_MAX, SEALED_BOX_MIN

    for n in (SEALED_BOX_MIN, DM_BODY_MAX):
        env = envelope.parse(_signed([1, KIND_DM, ORIGIN, 1, 5, BOB, b"x" * n]), b"\x00" * 64)
        assert len(env.body) == n


@pytest.mark.parametrize("signed", [b"", b"\xc1", codec.pack({"a": 1}), codec.pack(GOOD) + b"x",
                                    b"\x97" + b"\xc0" * 7, b"x" * 9000])
def test_garbage_signed_bytes(signed: bytes) -> None:
    with pytest.raises(EnvelopeError):
        envelope.parse(signed, b"\x00" * 64)


def test_bad_signature_length() -> None:
    with pytest.raises(EnvelopeError):
        envelope.parse(codec.pack(GOOD), b"\x00" * 63)


def test_fuzz_only_envelope_errors() -> None:
    rng = random.Random(9)
    good = make().signed
    for _ in range(3000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        with contextlib.suppress(EnvelopeError):
            envelope.parse(bytes(data[: rng.randint(0, len(data))]), b"\x01" * 64)


def test_dm_sealed_to_recipient_and_bound_to_origin() -> None:
    enc = bytes(BOB_BOX.public_key)
    body = envelope.seal_dm(origin=ORIGIN, text="psst", recipient_enc_key=enc)
    assert b"psst" not in body
    env = make(KIND_DM, to=BOB, body=body)
    plain = nacl.public.SealedBox(BOB_BOX).decrypt(env.body)
    assert envelope.dm_inner(plain, env.origin) == "psst"
    with pytest.raises(EnvelopeError) as info:
        envelope.dm_inner(plain, BOB)  # someone else re-signed alice's ciphertext
    assert info.value.code == "bad_author"
    with pytest.raises(EnvelopeError):
        envelope.seal_dm(origin=ORIGIN, text="x" * 5000, recipient_enc_key=enc)


def test_receipt_and_profile_bodies() -> None:
    ids = [os.urandom(16) for _ in range(3)]
    assert envelope.receipt_ids(envelope.receipt_body(ids)) == ids
    prof = envelope.profile_fields(envelope.profile_body("bob", b"e" * 32, [BOB, ORIGIN]))
    assert (prof.nickname, prof.enc_key, prof.links) == ("bob", b"e" * 32,
                                                         frozenset({BOB, ORIGIN}))
    env = make(KIND_PROFILE, body=envelope.profile_body("a", b"e" * 32))
    assert env.kind_name == "profile"
