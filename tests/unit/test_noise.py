"""common/noise.py against the published Noise test vectors, plus rejection tests.

The vectors (tests/data/noise_vectors.json) are the Noise_XX_25519_ChaChaPoly
BLAKE2b/SHA256 entries of the cacophony and snow vector files; their origin is
recorded in the file's "source" field.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import nacl.bindings
import pytest

from tazcom.common.errors import LocalProtocolError, RemoteProtocolError
from tazcom.common.noise import (
    DH_LEN,
    MAX_MESSAGE,
    PROTOCOL_BLAKE2B,
    PROTOCOL_SHA256,
    TAG_LEN,
    CipherState,
    HandshakeState,
    NoiseError,
    x25519_keypair,
)

VECTORS_FILE = Path(__file__).resolve().parent.parent / "data" / "noise_vectors.json"
VECTORS = json.loads(VECTORS_FILE.read_text())["vectors"]
PROTOCOLS = [PROTOCOL_BLAKE2B, PROTOCOL_SHA256]

INIT_STATIC = bytes(range(1, 33))
RESP_STATIC = bytes(range(101, 133))
INIT_EPHEMERAL = bytes(range(201, 233))
RESP_EPHEMERAL = bytes(range(33, 65))
PROLOGUE = b"tazcom-test"
PAYLOADS = (b"hello responder", b"hello initiator", b"and that is it")

# Encodings of X25519 points of order 1, 2, 4 or 8 (u = 0, 1, the two order-8
# points, p - 1, p, p + 1), which must never be accepted from a peer.
LOW_ORDER_POINTS = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    (2**255 - 19 - 1).to_bytes(32, "little"),
    (2**255 - 19).to_bytes(32, "little"),
    (2**255 - 19 + 1).to_bytes(32, "little"),
]


def _pair(protocol: str = PROTOCOL_BLAKE2B) -> tuple[HandshakeState, HandshakeState]:
    init = HandshakeState(initiator=True, static_private=INIT_STATIC, prologue=PROLOGUE,
                          protocol_name=protocol, ephemeral_private=INIT_EPHEMERAL)
    resp = HandshakeState(initiator=False, static_private=RESP_STATIC, prologue=PROLOGUE,
                          protocol_name=protocol, ephemeral_private=RESP_EPHEMERAL)
    return init, resp


def _stages(protocol: str = PROTOCOL_BLAKE2B) -> list[tuple[HandshakeState, bytes]]:
    """For each handshake message: (its reader just before reading it, the message)."""
    init, resp = _pair(protocol)
    stages = []
    for i, payload in enumerate(PAYLOADS):
        writer, reader = (init, resp) if i % 2 == 0 else (resp, init)
        message = writer.write_message(payload)
        stages.append((copy.deepcopy(reader), message))
        assert reader.read_message(message) == payload
    return stages


def _completed(protocol: str = PROTOCOL_BLAKE2B) -> tuple[HandshakeState, HandshakeState]:
    init, resp = _pair(protocol)
    for i, payload in enumerate(PAYLOADS):
        writer, reader = (init, resp) if i % 2 == 0 else (resp, init)
        assert reader.read_message(writer.write_message(payload)) == payload
    return init, resp


STAGES = {p: _stages(p) for p in PROTOCOLS}


def _flip(message: bytes, position: int, bit: int = 0) -> bytes:
    changed = bytearray(message)
    changed[position] ^= 1 << bit
    return bytes(changed)


# --- published vectors -------------------------------------------------------


def test_vector_file_holds_only_xx() -> None:
    assert len(VECTORS) >= 2
    assert {v["protocol_name"] for v in VECTORS} == set(PROTOCOLS)


@pytest.mark.parametrize(
    "vector", VECTORS, ids=[f"{i}-{v['protocol_name']}" for i, v in enumerate(VECTORS)]
)
def test_vector(vector: dict) -> None:
    assert not vector.get("init_psks") and not vector.get("resp_psks")
    h = bytes.fromhex
    protocol = vector["protocol_name"]
    init = HandshakeState(initiator=True, static_private=h(vector["init_static"]),
                          prologue=h(vector["init_prologue"]), protocol_name=protocol,
                          ephemeral_private=h(vector["init_ephemeral"]))
    resp = HandshakeState(initiator=False, static_private=h(vector["resp_static"]),
                          prologue=h(vector["resp_prologue"]), protocol_name=protocol,
                          ephemeral_private=h(vector["resp_ephemeral"]))
    messages = vector["messages"]
    assert len(messages) > 3

    for i, m in enumerate(messages[:3]):
        writer, reader = (init, resp) if i % 2 == 0 else (resp, init)
        assert writer.my_turn_to_write and not reader.my_turn_to_write
        ciphertext = writer.write_message(h(m["payload"]))
        assert ciphertext.hex() == m["ciphertext"], f"handshake message {i}"
        assert reader.read_message(ciphertext) == h(m["payload"])

    assert init.complete and resp.complete
    assert not init.my_turn_to_write and not resp.my_turn_to_write
    assert init.remote_static == x25519_keypair(h(vector["resp_static"]))[1]
    assert resp.remote_static == x25519_keypair(h(vector["init_static"]))[1]
    assert init.handshake_hash == resp.handshake_hash
    if "handshake_hash" in vector:
        assert init.handshake_hash.hex() == vector["handshake_hash"]

    init_send, init_recv = init.split()
    resp_send, resp_recv = resp.split()
    # The vectors alternate over the whole list: message i is the initiator's
    # when i is even, so the first transport message (i = 3) is the responder's.
    for i, m in enumerate(messages[3:], start=3):
        send, recv = (init_send, resp_recv) if i % 2 == 0 else (resp_send, init_recv)
        ciphertext = send.encrypt_with_ad(b"", h(m["payload"]))
        assert ciphertext.hex() == m["ciphertext"], f"transport message {i}"
        assert recv.decrypt_with_ad(b"", ciphertext) == h(m["payload"])


# --- normal operation --------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_fresh_keys_interoperate(protocol: str) -> None:
    init_priv, init_pub = x25519_keypair()
    resp_priv, resp_pub = x25519_keypair()
    init = HandshakeState(initiator=True, static_private=init_priv, protocol_name=protocol)
    resp = HandshakeState(initiator=False, static_private=resp_priv, protocol_name=protocol)
    assert init.remote_static is None and resp.remote_static is None
    m1 = init.write_message(b"")
    assert len(m1) == DH_LEN
    assert resp.read_message(m1) == b""
    m2 = resp.write_message(b"")
    assert len(m2) == 2 * DH_LEN + 2 * TAG_LEN
    assert init.read_message(m2) == b""
    assert init.remote_static == resp_pub and resp.remote_static is None
    m3 = init.write_message(b"x")
    assert len(m3) == DH_LEN + 2 * TAG_LEN + 1
    assert resp.read_message(m3) == b"x"
    assert resp.remote_static == init_pub
    assert len(init.handshake_hash) == (64 if protocol == PROTOCOL_BLAKE2B else 32)
    assert init.handshake_hash == resp.handshake_hash

    init_send, init_recv = init.split()
    resp_send, resp_recv = resp.split()
    assert init.split() == (init_send, init_recv)  # the same pair, never a second one
    for n in range(3):
        assert resp_recv.decrypt_with_ad(b"", init_send.encrypt_with_ad(b"", b"a%d" % n)) == (
            b"a%d" % n
        )
        assert init_recv.decrypt_with_ad(b"ad", resp_send.encrypt_with_ad(b"ad", b"b")) == b"b"
    assert init_send.n == resp_recv.n == 3


def test_keypair() -> None:
    private, public = x25519_keypair()
    assert len(private) == len(public) == DH_LEN
    assert x25519_keypair(private) == (private, public)
    assert x25519_keypair() != (private, public)
    with pytest.raises(LocalProtocolError):
        x25519_keypair(b"short")


def test_api_misuse_is_local() -> None:
    init, resp = _pair()
    with pytest.raises(LocalProtocolError):
        resp.write_message(b"")  # the initiator speaks first
    with pytest.raises(LocalProtocolError):
        init.split()
    with pytest.raises(LocalProtocolError):
        _ = init.handshake_hash
    with pytest.raises(LocalProtocolError):
        HandshakeState(initiator=True, static_private=INIT_STATIC,
                       protocol_name="Noise_XX_25519_AESGCM_SHA256")
    with pytest.raises(LocalProtocolError):
        HandshakeState(initiator=True, static_private=b"\x01" * 31)
    with pytest.raises(LocalProtocolError):
        CipherState(b"\x00" * 31)
    with pytest.raises(LocalProtocolError):
        CipherState().rekey()
    with pytest.raises(LocalProtocolError):
        CipherState(bytes(32)).set_nonce(2**64)
    init.write_message(b"")
    with pytest.raises(LocalProtocolError):
        init.write_message(b"")  # twice in a row


def test_noise_error_is_a_remote_protocol_error() -> None:
    assert issubclass(NoiseError, RemoteProtocolError)
    assert NoiseError("x", code="decrypt_failed").code == "decrypt_failed"


def test_message_size_limit_on_write() -> None:
    init, _ = _pair()
    with pytest.raises(LocalProtocolError) as info:
        init.write_message(bytes(MAX_MESSAGE - DH_LEN + 1))
    assert info.value.code == "too_large"
    assert init.my_turn_to_write  # a refused write changes nothing
    assert len(init.write_message(bytes(MAX_MESSAGE - DH_LEN))) == MAX_MESSAGE

    init, resp = _pair()
    resp.read_message(init.write_message(b""))
    with pytest.raises(LocalProtocolError):
        resp.write_message(bytes(MAX_MESSAGE - 2 * DH_LEN - 2 * TAG_LEN + 1))
    m2 = resp.write_message(bytes(MAX_MESSAGE - 2 * DH_LEN - 2 * TAG_LEN))
    assert len(m2) == MAX_MESSAGE
    assert len(init.read_message(m2)) == MAX_MESSAGE - 2 * DH_LEN - 2 * TAG_LEN


# --- rejections --------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_flipped_bit_in_first_message_fails_the_handshake(protocol: str) -> None:
    # Message 1 is not authenticated yet; the change shows up in h, so the
    # initiator refuses message 2.
    reader, message = STAGES[protocol][0]
    for position in range(len(message)):
        resp = copy.deepcopy(reader)
        init, _ = _pair(protocol)
        init.write_message(PAYLOADS[0])
        try:
            resp.read_message(_flip(message, position, position % 8))
        except NoiseError as e:
            assert e.code == "bad_handshake"
            continue
        with pytest.raises(NoiseError) as info:
            init.read_message(resp.write_message(PAYLOADS[1]))
        assert info.value.code in ("decrypt_failed", "bad_handshake")


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("index", [1, 2])
def test_flipped_bit_is_refused(protocol: str, index: int) -> None:
    reader, message = STAGES[protocol][index]
    for position in range(len(message)):
        state = copy.deepcopy(reader)
        with pytest.raises(NoiseError) as info:
            state.read_message(_flip(message, position, position % 8))
        assert info.value.code in ("decrypt_failed", "bad_handshake")
        assert not state.complete


@pytest.mark.parametrize("index", [1, 2])
def test_truncated_messages_are_refused(index: int) -> None:
    reader, message = STAGES[PROTOCOL_BLAKE2B][index]
    for length in range(len(message)):
        with pytest.raises(NoiseError):
            copy.deepcopy(reader).read_message(message[:length])


def test_truncated_first_message_is_refused() -> None:
    reader, message = STAGES[PROTOCOL_BLAKE2B][0]
    for length in range(len(message)):
        resp = copy.deepcopy(reader)
        if length < DH_LEN:
            with pytest.raises(NoiseError) as info:
                resp.read_message(message[:length])
            assert info.value.code == "bad_handshake"
            continue
        # A shorter payload is still a well-formed message 1; h differs.
        resp.read_message(message[:length])
        init, _ = _pair()
        init.write_message(PAYLOADS[0])
        with pytest.raises(NoiseError):
            init.read_message(resp.write_message(PAYLOADS[1]))


@pytest.mark.parametrize("index", [0, 1, 2])
def test_oversized_message_is_refused(index: int) -> None:
    reader, message = STAGES[PROTOCOL_BLAKE2B][index]
    state = copy.deepcopy(reader)
    with pytest.raises(NoiseError) as info:
        state.read_message(message + bytes(MAX_MESSAGE + 1 - len(message)))
    assert info.value.code == "bad_handshake"
    assert state.read_message(message) == PAYLOADS[index]  # a length check changes nothing


def test_reading_out_of_turn_is_refused() -> None:
    init, resp = _pair()
    with pytest.raises(NoiseError) as info:
        init.read_message(bytes(100))  # the initiator writes first
    assert info.value.code == "bad_handshake"
    m1 = init.write_message(b"")
    resp.read_message(m1)
    with pytest.raises(NoiseError):
        resp.read_message(m1)  # a replayed message 1: the responder must write now
    init.read_message(resp.write_message(b""))
    m3 = init.write_message(b"")
    resp.read_message(m3)
    for state in (init, resp):
        with pytest.raises(NoiseError) as info:
            state.read_message(m3)
        assert info.value.code == "bad_handshake"


def test_failed_handshake_stays_failed() -> None:
    reader, message = STAGES[PROTOCOL_BLAKE2B][1]
    state = copy.deepcopy(reader)
    with pytest.raises(NoiseError):
        state.read_message(_flip(message, len(message) - 1))
    with pytest.raises(NoiseError) as info:
        state.read_message(message)
    assert info.value.code == "bad_handshake"
    assert not state.my_turn_to_write
    with pytest.raises(LocalProtocolError):
        state.write_message(b"")


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p.hex()[:8])
def test_low_order_ephemeral_is_refused(point: bytes) -> None:
    _, resp = _pair()
    with pytest.raises(NoiseError) as info:
        resp.read_message(point + b"payload")
    assert info.value.code == "bad_handshake"

    reader, message = STAGES[PROTOCOL_BLAKE2B][1]
    with pytest.raises(NoiseError) as info:
        copy.deepcopy(reader).read_message(point + message[DH_LEN:])
    assert info.value.code == "bad_handshake"


def test_low_order_static_is_refused() -> None:
    # A peer claiming a low-order static key can only be built from inside.
    init, resp = _pair()
    resp._s_public = bytes(32)
    resp.read_message(init.write_message(b""))
    with pytest.raises(NoiseError) as info:
        init.read_message(resp.write_message(b""))
    assert info.value.code == "bad_handshake"
    assert init.remote_static is None


def test_replayed_transport_message_is_refused() -> None:
    init, resp = _completed()
    send, _ = init.split()
    _, recv = resp.split()
    first = send.encrypt_with_ad(b"", b"one")
    second = send.encrypt_with_ad(b"", b"two")
    assert recv.decrypt_with_ad(b"", first) == b"one"
    for bad in (first, second[:-1], second[:TAG_LEN - 1], b"", _flip(second, 0)):
        with pytest.raises(NoiseError) as info:
            recv.decrypt_with_ad(b"", bad)
        assert info.value.code == "decrypt_failed"
        assert recv.n == 1  # a failure does not use up the nonce
    with pytest.raises(NoiseError):
        recv.decrypt_with_ad(b"other ad", second)
    assert recv.decrypt_with_ad(b"", second) == b"two"


def test_nonce_exhaustion() -> None:
    send, recv = CipherState(bytes(range(32))), CipherState(bytes(range(32)))
    send.set_nonce(2**64 - 2)
    recv.set_nonce(2**64 - 2)
    assert recv.decrypt_with_ad(b"", send.encrypt_with_ad(b"", b"last")) == b"last"
    with pytest.raises(NoiseError) as info:
        send.encrypt_with_ad(b"", b"one too many")
    assert info.value.code == "nonce_exhausted"
    with pytest.raises(NoiseError) as info:
        recv.decrypt_with_ad(b"", bytes(32))
    assert info.value.code == "nonce_exhausted"


def test_cipher_state_without_key_passes_through() -> None:
    cs = CipherState()
    assert not cs.has_key()
    assert cs.encrypt_with_ad(b"ad", b"clear") == b"clear"
    assert cs.decrypt_with_ad(b"ad", b"clear") == b"clear"
    assert cs.n == 0


def test_cipher_state_nonce_encoding() -> None:
    key = bytes(range(32))
    cs = CipherState(key)
    cs.set_nonce(0x0102030405060708)
    nonce = bytes(4) + (0x0102030405060708).to_bytes(8, "little")
    expected = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(b"m", b"a", nonce, key)
    assert cs.encrypt_with_ad(b"a", b"m") == expected


# --- rekey -------------------------------------------------------------------


def test_rekey_follows_the_spec() -> None:
    key = bytes(range(32))
    cs = CipherState(key)
    cs.set_nonce(5)
    cs.rekey()
    assert cs.n == 5  # rekey keeps n (section 11.3)
    max_nonce = bytes(4) + (2**64 - 1).to_bytes(8, "little")
    new_key = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
        bytes(32), b"", max_nonce, key)[:32]
    nonce = bytes(4) + (5).to_bytes(8, "little")
    expected = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(b"m", b"", nonce, new_key)
    assert cs.encrypt_with_ad(b"", b"m") == expected


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_rekey_both_sides(protocol: str) -> None:
    init, resp = _completed(protocol)
    send, recv = init.split()
    peer_send, peer_recv = resp.split()
    assert peer_recv.decrypt_with_ad(b"", send.encrypt_with_ad(b"", b"before")) == b"before"

    unrekeyed = copy.copy(send)
    send.rekey()
    peer_recv.rekey()
    after = send.encrypt_with_ad(b"", b"same")
    assert after != unrekeyed.encrypt_with_ad(b"", b"same")
    assert peer_recv.decrypt_with_ad(b"", after) == b"same"

    peer_send.rekey()
    message = peer_send.encrypt_with_ad(b"", b"x")
    with pytest.raises(NoiseError) as info:  # only one side rekeyed so far
        recv.decrypt_with_ad(b"", message)
    assert info.value.code == "decrypt_failed"
    recv.rekey()
    assert recv.decrypt_with_ad(b"", message) == b"x"


# --- garbage -----------------------------------------------------------------


def test_random_garbage_raises_only_noise_error() -> None:
    rng = random.Random(20240611)
    stages = list(STAGES[PROTOCOL_BLAKE2B])
    init, resp = _completed()
    fresh_init, _ = _pair()
    # Also states that must refuse anything: complete, and waiting to write.
    stages += [(init, b""), (resp, b""), (fresh_init, b"")]
    accepted = 0
    for _ in range(2000):
        reader, message = rng.choice(stages)
        kind = rng.randrange(4)
        if kind == 0 or not message:
            data = rng.randbytes(rng.randrange(0, 200))
        elif kind == 1:
            data = rng.randbytes(rng.choice([MAX_MESSAGE, MAX_MESSAGE + 1, 70000]))
        elif kind == 2:  # a real message with a few bytes changed
            changed = bytearray(message)
            for _ in range(rng.randrange(1, 4)):
                changed[rng.randrange(len(changed))] = rng.randrange(256)
            data = bytes(changed)
        else:  # a real prefix with a random tail
            data = message[:rng.randrange(len(message))] + rng.randbytes(rng.randrange(0, 64))
        state = copy.deepcopy(reader)
        try:
            state.read_message(data)
        except NoiseError as e:
            assert e.code in ("decrypt_failed", "bad_handshake")
        else:
            # Only message 1 carries no authentication.
            assert reader is stages[0][0] or data == message
            accepted += 1
    assert accepted < 2000
