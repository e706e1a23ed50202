"""Every decoder of what a stranger can send, fed msgpack of any SHAPE.

The rule (issue 12, "safe among strangers"): bad input gets a reject code and
one log line naming the peer, never a traceback, never a crash. So each
decoder below, given any msgpack value at all, either returns a valid message
or raises ``RemoteProtocolError`` whose ``code`` is a reject code; any other
exception is a bug (a ``t`` that was a list made ``MESSAGES.get`` raise
``TypeError: unhashable type``, and the link died as ``connection_lost``).

Inputs come from three places:

1. hypothesis ``recursive`` strategies: nested lists and maps (keys of any
   type, not only str), ints to 64 bits, floats with NaN and infinities,
   bytes, str with control characters, bools, nil, ext types;
2. mutations of valid messages of every family: a field dropped, replaced by
   a value of another shape, wrapped in a list, an extra field, a type or an
   array element swapped;
3. the seed corpus ``tests/data/fuzz/decoders.json``, replayed every run: the
   nastiest inputs, and every input that ever broke a decoder (add yours).

``TAZCOM_FUZZ_EXAMPLES`` raises the number of examples for a long run.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tazcom.common import certs, codec, envelope, events, messages, routing, rpc
from tazcom.common.errors import RemoteProtocolError, RequestFailed
from tazcom.common.link import LinkClosed, MessageDropped
from tazcom.common.schema import _plain

from .examples import build
from .test_link import connected

CODE = re.compile(r"[a-z][a-z0-9_]{0,47}")
CORPUS = Path(__file__).resolve().parents[1] / "data" / "fuzz" / "decoders.json"
EXAMPLES = int(os.environ.get("TAZCOM_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
ORIGIN = bytes(range(32))
#: In a list of frames: a mutated valid link message here.
MUTATE = object()
SIG = b"\x00" * 64
#: A certificate of the right shape (its signature is zeros: refused when checked).
CERT = codec.pack([1, b"d" * 32, 1, 2, 1, SIG])

# -- shapes ------------------------------------------------------------------------------------

NASTY_INTS = st.sampled_from([0, 1, -1, 2**31, 2**32, 2**53, 2**63 - 1, 2**63, 2**64 - 1,
                              -(2**63), -(2**31) - 1])
NASTY_FLOATS = st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 1.0, 1e308,
                                5e-324, 2.0**64])
NASTY_TEXT = st.sampled_from(["", "\x1b[2J\x1b]0;owned\x07", "\u202egnp.exe", "\x00", "é" * 40,
                              "app", "close", "router", "x" * 300, "\ud800".encode(
                                  "utf-8", "surrogatepass").decode("utf-8", "replace")])
KEYS = st.text(max_size=8) | st.sampled_from(["t", "v", "id", "op", "kind", "body", "reason"])
#: What a map key can be in msgpack (``codec.unpack`` takes str keys only; the rest is
#: refused there, but packed by a hostile peer all the same).
ANY_KEYS = KEYS | st.integers(-5, 5) | st.binary(max_size=4) | st.none() | st.booleans() \
    | st.floats(allow_nan=False)
LEAVES = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | NASTY_INTS
          | st.floats() | NASTY_FLOATS | st.binary(max_size=70) | st.text(max_size=24)
          | NASTY_TEXT
          | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))
          | st.builds(msgpack.Timestamp, st.integers(0, 2**34), st.integers(0, 999_999_999)))
SHAPES = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(KEYS, inner, max_size=6)
    | st.dictionaries(ANY_KEYS, inner, max_size=3),
    max_leaves=24)
#: Smaller shapes, for the many fields of one message.
SMALL = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(ANY_KEYS, inner, max_size=3), max_leaves=5)


def pack(obj: Any) -> bytes | None:
    """``obj`` as msgpack, as a hostile peer would pack it (None if msgpack cannot)."""
    try:
        return msgpack.packb(obj, use_bin_type=True, strict_types=False)
    except (TypeError, ValueError, OverflowError):
        return None


@st.composite
def mutated(draw: st.DrawFn, valid: Any) -> Any:
    """``valid`` (a decoded map or array) with one to three faults anywhere in it."""
    obj = _plain(valid)
    for _ in range(draw(st.integers(1, 3))):
        obj = _mutate_once(draw, obj)
    return obj


def _mutate_once(draw: st.DrawFn, obj: Any) -> Any:
    if isinstance(obj, dict) and obj and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(obj, key=repr)))
        obj = dict(obj)
        how = draw(st.sampled_from(["drop", "replace", "wrap", "swap", "descend", "extra"]))
        if how == "drop":
            del obj[key]
        elif how == "replace":
            obj[key] = draw(SMALL)
        elif how == "wrap":
            obj[key] = [obj[key]]
        elif how == "swap":
            obj[key] = obj[draw(st.sampled_from(sorted(obj, key=repr)))] if len(obj) > 1 \
                else draw(LEAVES)
        elif how == "descend":
            obj[key] = _mutate_once(draw, obj[key])
        else:
            obj[draw(KEYS)] = draw(SMALL)
        return obj
    if isinstance(obj, list) and obj and draw(st.booleans()):
        obj = list(obj)
        i = draw(st.integers(0, len(obj) - 1))
        how = draw(st.sampled_from(["replace", "wrap", "descend", "truncate", "extend",
                                    "swap", "dict"]))
        if how == "replace":
            obj[i] = draw(SMALL)
        elif how == "wrap":
            obj[i] = [obj[i]]
        elif how == "descend":
            obj[i] = _mutate_once(draw, obj[i])
        elif how == "truncate":
            del obj[i:]
        elif how == "extend":
            obj += draw(st.lists(SMALL, min_size=1, max_size=3))
        elif how == "swap":
            j = draw(st.integers(0, len(obj) - 1))
            obj[i], obj[j] = obj[j], obj[i]
        else:
            return {"t": obj[0] if obj else None, "items": obj}
        return obj
    return draw(SMALL) if draw(st.booleans()) else [obj]


# -- the rule ----------------------------------------------------------------------------------


def refused_or_valid(decode: Any, *args: Any) -> Any:
    """``decode(*args)``: a value, or None when it refused with a reject code. Any other
    exception propagates: the fuzzer then fails and shrinks it to the smallest input."""
    try:
        return decode(*args)
    except RemoteProtocolError as e:
        assert CODE.fullmatch(e.code), f"{e.code!r} is no reject code"
        assert isinstance(e.message, str)
        return None


# -- the decoders, by family ------------------------------------------------------------------


def link_message(data: bytes) -> Any:
    """A transport plaintext: the hot path ``app_fields`` never raises, and agrees with the
    full decoder."""
    obj = refused_or_valid(codec.unpack, data, messages.MAX_PLAINTEXT)
    if obj is None:
        return refused_or_valid(messages.decode_message, data)
    fast = messages.app_fields(obj)
    msg = refused_or_valid(messages.decode_message_obj, obj)
    if fast is not None:
        assert isinstance(msg, messages.App) and (msg.kind, msg.body) == fast
    return msg


def proof(data: bytes) -> Any:
    return refused_or_valid(messages.decode_proof, data)


def router_message(data: bytes) -> Any:
    msg = refused_or_valid(routing.decode, data)
    if isinstance(msg, routing.Envs):
        assert msg.entries and all(CODE.fullmatch(code) for code, _ in msg.bad)
    return msg


def envelope_signed(data: bytes) -> Any:
    env = refused_or_valid(envelope.parse, data, SIG)
    if env is not None:  # and its certificate and signature: refused with a code, too
        refused_or_valid(certs.Verifier(), env)
    return env


def cert(data: bytes) -> Any:
    return refused_or_valid(certs.parse, data)


def revoke_body(data: bytes) -> Any:
    return refused_or_valid(envelope.revoked_key, data)


def room_body(data: bytes) -> Any:
    return refused_or_valid(envelope.room_text, data)


def receipt_body(data: bytes) -> Any:
    return refused_or_valid(envelope.receipt_ids, data)


def profile_body(data: bytes) -> Any:
    return refused_or_valid(envelope.profile_fields, data)


def dm_plaintext(data: bytes) -> Any:
    return refused_or_valid(envelope.dm_inner, data, ORIGIN)


def bus_event(data: bytes, topic: str = "peer.discovered") -> Any:
    return refused_or_valid(events.decode_event, [topic.encode(), data])


def request(data: bytes) -> Any:
    return refused_or_valid(rpc.decode_request, data, 1 << 20)


def reply(data: bytes) -> Any:
    """A reply to a request: parsed as the type the request expects; an error reply is
    ``RequestFailed`` (a request's error, not a fault)."""
    obj = refused_or_valid(codec.unpack, data, 1 << 20)
    try:
        return refused_or_valid(rpc.parse_reply, obj, rpc.Opened)
    except RequestFailed as e:
        assert isinstance(e.code, str) and isinstance(e.message, str)
        return None


DECODERS = {
    "link": link_message, "proof": proof, "router": router_message,
    "envelope": envelope_signed, "room": room_body, "receipt": receipt_body,
    "profile": profile_body, "dm_inner": dm_plaintext, "event": bus_event,
    "request": request, "reply": reply, "cert": cert, "revoke": revoke_body,
}
TOPICS = sorted(events.EVENTS)


# -- valid messages of every family, to mutate -------------------------------------------------


def _link_samples() -> list[Any]:
    out = []
    for cls in messages.MESSAGES.values():
        d = build(cls).to_dict()
        d.update(t=cls.TYPE, v=cls.V)
        out.append(d)
    return out


def _router_samples() -> list[Any]:
    return [build(cls).to_array() for cls in routing.ROUTER_MESSAGES.values()] + [
        [0, [[0, b"s" * 40, SIG], [3, b"t" * 40, SIG]]]]


def _envelope_samples() -> list[Any]:
    to = bytes(32)
    dm = envelope.seal_dm(origin=ORIGIN, text="hi", recipient_enc_key=bytes(range(1, 33)))
    return [
        [1, envelope.KIND_ROOM, ORIGIN, 1, 5, None, b"hello"],
        [1, envelope.KIND_DM, ORIGIN, 2, 5, to, dm],
        [1, envelope.KIND_RECEIPT, ORIGIN, 3, 5, to, envelope.receipt_body([b"i" * 16])],
        [1, envelope.KIND_PROFILE, ORIGIN, 4, 5, None,
         envelope.profile_body("nick", b"e" * 32, [b"l" * 32])],
        [2, envelope.KIND_ROOM, ORIGIN, 5, 5, None, b"hello", CERT],
        [2, envelope.KIND_DM, ORIGIN, 6, 5, to, dm, CERT],
        [2, envelope.KIND_PROFILE, ORIGIN, 7, 5, None,
         envelope.profile_body("nick", b"e" * 32, [b"l" * 32], since=9), CERT],
        [2, envelope.KIND_REVOKE, ORIGIN, 8, 5, None, envelope.revoke_body(b"d" * 32, 5),
         None],
    ]


def _event_samples() -> list[tuple[str, Any]]:
    out = []
    for topic, cls in events.EVENTS.items():
        d = build(cls).to_dict()
        d["v"] = cls.V
        out.append((topic, d))
    return out


def _request_samples() -> list[Any]:
    return [codec.unpack(rpc.encode_request(build(cls), 7), 1 << 20)
            for cls in rpc.REQUESTS.values()]


LINK = _link_samples()
ROUTER = _router_samples()
ENVELOPES = _envelope_samples()
EVENTS = _event_samples()
REQUESTS = _request_samples()
BODIES = {
    "profile": [{"nick": "n", "enc": b"e" * 32, "links": [b"l" * 32]}],
    "receipt": [[b"i" * 16, b"j" * 16]],
    "dm_inner": [{"from": ORIGIN, "text": "hi"}],
    "proof": [{"v": 1, "key": b"k" * 32, "sig": SIG}],
    "revoke": [[b"d" * 32, 5]],
    "cert": [[1, b"d" * 32, 1, 2, 1, SIG]],
}


def test_the_samples_are_valid() -> None:
    """What the fuzzer mutates decodes as it is (else mutations prove little)."""
    assert all(link_message(codec.pack(d)) is not None for d in LINK)
    assert all(router_message(codec.pack(a)) is not None for a in ROUTER)
    assert all(envelope_signed(codec.pack(a)) is not None for a in ENVELOPES)
    assert all(bus_event(codec.pack(d), t) is not None for t, d in EVENTS)
    assert all(request(codec.pack(d)) is not None for d in REQUESTS)
    for name, samples in BODIES.items():
        assert all(DECODERS[name](codec.pack(s)) is not None for s in samples), name


# -- 1. any shape --------------------------------------------------------------------------------


@FUZZ
@given(obj=SHAPES, name=st.sampled_from(sorted(DECODERS)), topic=st.sampled_from(TOPICS))
def test_any_shape_is_refused_with_a_code_or_decoded(obj: Any, name: str, topic: str) -> None:
    data = pack(obj)
    if data is None:
        return
    if name == "event":
        bus_event(data, topic)
    else:
        DECODERS[name](data)


@FUZZ
@given(obj=SHAPES, t=st.sampled_from([*messages.MESSAGES, None]), v=SHAPES)
def test_link_messages_of_any_shape(obj: Any, t: str | None, v: Any) -> None:
    """Maps that look like link messages: a real ``t`` (or none), any ``v``, any fields."""
    msg = obj if isinstance(obj, dict) else {"x": obj}
    if t is not None:
        msg = {**msg, "t": t, "v": v if isinstance(v, int) and v % 2 else 1}
    for candidate in (msg, {**msg, "t": obj}, {"t": t, "v": v}):
        data = pack(candidate)
        if data is not None:
            link_message(data)


@FUZZ
@given(tag=st.integers(-1, 5), rest=st.lists(SMALL, max_size=3),
       entries=st.lists(SMALL, min_size=1, max_size=5))
def test_router_messages_of_any_shape(tag: int, rest: list[Any], entries: list[Any]) -> None:
    for candidate in ([tag, *rest], [0, entries], [0, [list(ROUTER[-1][1][0]), *entries]]):
        data = pack(candidate)
        if data is not None:
            router_message(data)


@FUZZ
@given(fields=st.lists(SMALL, min_size=7, max_size=7), kind=st.integers(0, 5))
def test_envelopes_of_any_shape(fields: list[Any], kind: int) -> None:
    for candidate in (fields, [1, kind, *fields[2:]], [1, kind, ORIGIN, *fields[3:]]):
        data = pack(candidate)
        if data is not None:
            envelope_signed(data)


# -- 2. mutations of valid messages --------------------------------------------------------------


@FUZZ
@given(data=st.data(), family=st.sampled_from(["link", "router"]))
def test_mutated_link_and_router_messages(data: st.DataObject, family: str) -> None:
    samples = LINK if family == "link" else ROUTER
    packed = pack(data.draw(mutated(data.draw(st.sampled_from(samples)))))
    if packed is not None:
        DECODERS[family](packed)


@FUZZ
@given(data=st.data())
def test_mutated_envelopes_and_bodies(data: st.DataObject) -> None:
    fields = data.draw(st.sampled_from(ENVELOPES))
    packed = pack(data.draw(mutated(fields)))
    if packed is not None:
        envelope_signed(packed)
    # a valid envelope around a mutated body of its kind
    name = {1: "room", 2: "dm_inner", 3: "receipt", 4: "profile", 5: "revoke"}[fields[1]]
    inner = data.draw(mutated(data.draw(st.sampled_from(BODIES.get(name, [["x"]])))))
    body = pack(inner)
    if body is not None:
        DECODERS[name](body)
        if len(body) <= envelope.MAX_BODY:
            envelope_signed(pack([*fields[:6], body, *fields[7:]]))
    cert_packed = pack(data.draw(mutated(BODIES["cert"][0])))
    if cert_packed is not None:
        cert(cert_packed)
    proof_packed = pack(data.draw(mutated(BODIES["proof"][0])))
    if proof_packed is not None:
        proof(proof_packed)


@FUZZ
@given(data=st.data())
def test_mutated_events_and_requests(data: st.DataObject) -> None:
    topic, event = data.draw(st.sampled_from(EVENTS))
    packed = pack(data.draw(mutated(event)))
    if packed is not None:
        bus_event(packed, topic)
    packed = pack(data.draw(mutated(data.draw(st.sampled_from(REQUESTS)))))
    if packed is not None:
        request(packed)
        reply(packed)


# -- 3. through a real link: the guard is never what refuses -------------------------------------


@settings(max_examples=max(60, EXAMPLES // 4), deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(objs=st.lists(SHAPES | st.just(MUTATE), min_size=1, max_size=4), data=st.data())
def test_an_open_link_meets_any_shape_with_a_code(objs: list[Any], data: st.DataObject) -> None:
    """Frames of any shape (and mutated valid messages) on an open, authenticated link:
    dropped or closing with a reject code, told to the peer; the link's last-resort guard
    (``undecodable input``) never has to act."""
    a, b = connected()
    for obj in objs:
        if obj is MUTATE:
            obj = data.draw(mutated(data.draw(st.sampled_from(LINK))))
        plain = pack(obj)
        if plain is None or len(plain) > messages.MAX_PLAINTEXT:
            continue
        assert a._send is not None
        frame = a._send.encrypt_with_ad(b"", plain)
        events_ = b.receive_data(len(frame).to_bytes(2, "big") + frame, 2)
        for ev in events_:
            if isinstance(ev, LinkClosed | MessageDropped):
                assert CODE.fullmatch(ev.reason), ev
                assert not ev.detail.startswith("undecodable input"), (obj, ev)
        if b.closed:
            break


# -- 4. the seed corpus ------------------------------------------------------------------------


def _corpus() -> list[dict[str, Any]]:
    return json.loads(CORPUS.read_text())["inputs"]


@pytest.mark.parametrize("case", _corpus(), ids=lambda c: c["name"])
def test_seed_corpus(case: dict[str, Any]) -> None:
    """Each input of ``tests/data/fuzz/decoders.json`` through its decoder: refused with the
    code it names (``expect``), or decoded (``expect`` null), never another exception."""
    data = bytes.fromhex(case["hex"])
    decoder = DECODERS[case["decoder"]]
    try:
        if case["decoder"] == "event":
            result = decoder(data, case.get("topic", "peer.discovered"))
        else:
            result = decoder(data)
    except RemoteProtocolError:  # pragma: no cover - refused_or_valid catches these
        raise
    expect = case.get("expect", "any")
    if expect == "any":
        return
    if expect is None:
        assert result is not None, "decodes"
        return
    assert result is None, f"refused with {expect}"
    with pytest.raises(RemoteProtocolError) as info:
        _raw(case["decoder"])(data, case)
    assert info.value.code == expect


def _raw(name: str) -> Any:
    """The decoder itself (raising), for the code a corpus entry expects."""
    return {
        "link": lambda d, c: messages.decode_message(d),
        "router": lambda d, c: routing.decode(d),
        "envelope": lambda d, c: envelope.parse(d, SIG),
        "request": lambda d, c: rpc.decode_request(d, 1 << 20),
        "event": lambda d, c: events.decode_event([c.get("topic", "peer.discovered").encode(),
                                                  d]),
        "profile": lambda d, c: envelope.profile_fields(d),
        "receipt": lambda d, c: envelope.receipt_ids(d),
        "room": lambda d, c: envelope.room_text(d),
        "dm_inner": lambda d, c: envelope.dm_inner(d, ORIGIN),
        "proof": lambda d, c: messages.decode_proof(d),
        "reply": lambda d, c: rpc.parse_reply(codec.unpack(d, 1 << 20), rpc.Opened),
    }[name]


def test_the_corpus_names_its_decoders_and_codes() -> None:
    cases = _corpus()
    assert len({c["name"] for c in cases}) == len(cases)
    for c in cases:
        assert c["decoder"] in DECODERS and bytes.fromhex(c["hex"]) is not None
        assert c.get("expect", "any") in ("any", None) or CODE.fullmatch(c["expect"])
