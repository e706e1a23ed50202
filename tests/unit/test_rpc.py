"""Every request and reply: round trip and rejection of malformed shapes."""

from __future__ import annotations

import typing

import pytest

from tazcom.common import codec, rpc
from tazcom.common.errors import RemoteProtocolError, RequestFailed
from tazcom.common.schema import fields as schema_fields

from .examples import build, invalid_values

ALL = sorted(rpc.REQUESTS.items())


@pytest.mark.parametrize(("op", "cls"), ALL, ids=[o for o, _ in ALL])
def test_request_round_trip(op: str, cls: type) -> None:
    req = build(cls)
    req_id, back = rpc.decode_request(rpc.encode_request(req, 42), 1 << 20)
    assert (req_id, back) == (42, req)


@pytest.mark.parametrize(("op", "cls"), ALL, ids=[o for o, _ in ALL])
def test_reply_round_trip(op: str, cls: type) -> None:
    reply = build(cls.REPLY)
    data = codec.unpack(rpc.encode_reply(9, reply), 1 << 22)
    assert rpc.peek_reply_id(data) == 9
    assert rpc.parse_reply(data, cls.REPLY) == reply


@pytest.mark.parametrize(("op", "cls"), ALL, ids=[o for o, _ in ALL])
def test_request_fields_reject_bad_values(op: str, cls: type) -> None:
    body = codec.unpack(rpc.encode_request(build(cls), 1), 1 << 20)
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in schema_fields(cls):
        for bad in invalid_values(hints[f.name]):
            with pytest.raises(RemoteProtocolError) as info:
                rpc.decode_request(codec.pack({**body, f.name: bad}), 1 << 20)
            assert info.value.req_id == 1  # so the server can answer with an error


def test_error_reply() -> None:
    data = codec.unpack(rpc.encode_error(5, "no_link", "peer is not connected"), 1000)
    with pytest.raises(RequestFailed) as info:
        rpc.parse_reply(data, rpc.Empty)
    assert info.value.code == "no_link"
    assert "not connected" in info.value.message


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (codec.pack([1]), "bad_request"),
        (codec.pack({"v": 1, "op": "ping"}), "bad_request"),
        (codec.pack({"v": 1, "id": -1, "op": "ping"}), "bad_request"),
        (codec.pack({"v": 1, "id": True, "op": "ping"}), "bad_request"),
        (codec.pack({"v": 2, "id": 1, "op": "ping"}), "bad_version"),
        (codec.pack({"v": 1, "id": 1, "op": "launch.missiles"}), "unknown_op"),
        (codec.pack({"v": 1, "id": 1}), "unknown_op"),
        (codec.pack({"v": 1, "id": 1, "op": ["ping"]}), "unknown_op"),  # unhashable
        (codec.pack({"v": 1, "id": 1, "op": {"ping": 1}}), "unknown_op"),
        (codec.pack({"v": 1, "id": 1, "op": 7}), "unknown_op"),
        (codec.pack({"v": True, "id": 1, "op": "ping"}), "bad_version"),
        (codec.pack({"v": 1.0, "id": 1, "op": "ping"}), "bad_version"),
        (codec.pack({"v": [1], "id": 1, "op": "ping"}), "bad_version"),
        (b"\xc1\xc1", "bad_encoding"),
    ],
)
def test_malformed_requests(body: bytes, code: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        rpc.decode_request(body, 1 << 16)
    assert info.value.code == code


def test_bad_reply_envelope() -> None:
    with pytest.raises(RemoteProtocolError):
        rpc.parse_reply({"v": 3, "id": 1, "ok": True}, rpc.Empty)
    with pytest.raises(RemoteProtocolError):
        rpc.parse_reply("nope", rpc.Empty)


@pytest.mark.parametrize(("op", "cls"), ALL, ids=[o for o, _ in ALL])
def test_no_field_collides_with_the_envelope(op: str, cls: type) -> None:
    reserved = {"v", "id", "op", "ok", "error", "message"}
    for record in (cls, cls.REPLY):
        clash = reserved & {f.name for f in schema_fields(record)}
        assert not clash, f"{record.__name__} uses envelope names {clash}"


def test_identity_open_answers_each_box_alone() -> None:
    """A box that does not open, or that no DM body can be (under 48 bytes, over the DM
    limit), is None; the others open (one box never fails the request)."""
    import os

    import nacl.public

    from tazcom.common import envelope
    from tazcom.common.keyfile import Secrets
    from tazcom.common.limits import DM_BODY_MAX, ENVELOPE_BODY_MAX
    from tazcom.services.identity import Identity

    ident = Identity(Secrets(ed25519_seed=os.urandom(32), x25519_secret=os.urandom(32)), "x")
    enc = bytes(ident.box_secret.public_key)
    box = envelope.seal_dm(origin=ident.public, text="hi", recipient_enc_key=enc)
    big = nacl.public.SealedBox(ident.box_secret.public_key).encrypt(b"x" * (DM_BODY_MAX - 47))
    assert len(big) == DM_BODY_MAX + 1
    boxes = (b"", b"x" * 47, box, b"y" * 48, big, b"z" * ENVELOPE_BODY_MAX, box)
    req = rpc.decode_request(rpc.encode_request(rpc.OpenSealed(boxes=boxes), 1), 1 << 20)[1]
    opened = ident.open(req)  # type: ignore[arg-type]
    assert [x is not None for x in opened.items] == [False, False, True, False, False, False,
                                                      True]
    assert envelope.dm_inner(opened.items[2], ident.public) == "hi"


def test_identity_sign_many_cannot_be_failed_by_one_item() -> None:
    """Every item of ``identity.sign_many`` the request admits is signed: only the domain,
    which is the whole request's, can fail it."""
    import os

    import nacl.signing

    from tazcom.common.keyfile import Secrets
    from tazcom.common.keys import DOMAIN_BENCH
    from tazcom.services.identity import Identity

    ident = Identity(Secrets(ed25519_seed=os.urandom(32), x25519_secret=os.urandom(32)), "x")
    items = (b"", b"\x00", b"x" * 65536, os.urandom(100))
    sigs = ident.sign_many(rpc.SignMany(domain=DOMAIN_BENCH, items=items)).sigs
    vk = nacl.signing.VerifyKey(ident.public)
    for data, sig in zip(items, sigs, strict=True):
        vk.verify(DOMAIN_BENCH + data, sig)
