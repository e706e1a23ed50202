"""The wire does not change: every message built on the one schema encodes to the bytes
the code before it wrote (issue 11, "One definition per message").

``GOLDEN`` was printed by the code before the change (commit 93bccde) for the inputs
below; the random tests compare each encoder with the old formula, written out here.
"""

from __future__ import annotations

import random

import pytest

from tazcom.common import announce, codec, envelope, messages, routing, rpc
from tazcom.common.events import ChatMessage, LinkDown, PeerInfo, PeerUpdated, encode_event

K1, K2 = bytes(range(32)), bytes(range(32, 64))
SIG = bytes(range(64))
I1, I2 = bytes(range(16)), bytes(range(16, 32))

GOLDEN = {
    "envs": (
        "9200929300c40a7369676e65642d6f6e65c440000102030405060708090a0b0c0d0e0f1011121314"
        "15161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c"
        "3d3e3f9307c5012c7373737373737373737373737373737373737373737373737373737373737373"
        "73737373737373737373737373737373737373737373737373737373737373737373737373737373"
        "73737373737373737373737373737373737373737373737373737373737373737373737373737373"
        "73737373737373737373737373737373737373737373737373737373737373737373737373737373"
        "73737373737373737373737373737373737373737373737373737373737373737373737373737373"
        "73737373737373737373737373737373737373737373737373737373737373737373737373737373"
        "73737373737373737373737373737373737373737373737373737373737373737373737373737373"
        "73737373737373737373737373737373737373737373737373737373c4403f3e3d3c3b3a39383736"
        "3534333231302f2e2d2c2b2a292827262524232221201f1e1d1c1b1a191817161514131211100f0e"
        "0d0c0b0a09080706050403020100"
    ),
    "custody": "920192c410000102030405060708090a0b0c0d0e0fc410101112131415161718191a1b1c1d1e1f",
    "summary": (
        "92029293ce000737a80cc410000102030405060708090a0b0c0d0e0f93ce000737a900c410000000"
        "00000000000000000000000000"
    ),
    "summary_empty": "920290",
    "ids": (
        "9303ce000737a892c410000102030405060708090a0b0c0d0e0fc410101112131415161718191a1b"
        "1c1d1e1f"
    ),
    "ids_empty": "93030590",
    "signed_room": (
        "970101c420000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f07cf00"
        "00018bcfe5687bc0c40668c3a96c6c6f"
    ),
    "signed_dm": (
        "970102c420000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1fcf0000"
        "01000000000005c420202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e"
        "3fc46400000000000000000000000000000000000000000000000000000000000000000000000000"
        "00000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "0000000000000000000000000000000000000000000000"
    ),
    "receipt": "92c410000102030405060708090a0b0c0d0e0fc410101112131415161718191a1b1c1d1e1f",
    "profile": (
        "83a46e69636ba5616c696365a3656e63c420202122232425262728292a2b2c2d2e2f303132333435"
        "363738393a3b3c3d3e3fa56c696e6b7392c420000102030405060708090a0b0c0d0e0f1011121314"
        "15161718191a1b1c1d1e1fc420202122232425262728292a2b2c2d2e2f303132333435363738393a"
        "3b3c3d3e3f"
    ),
    "profile_nolinks": (
        "83a46e69636ba7626f6220e29c93a3656e63c420000102030405060708090a0b0c0d0e0f10111213"
        "1415161718191a1b1c1d1e1fa56c696e6b7390"
    ),
    "dm_inner": (
        "82a466726f6dc420000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
        "a474657874a87073737420e29c93"
    ),
    "app": (
        "84a46b696e64a6726f75746572a4626f6479c4640102010201020102010201020102010201020102"
        "01020102010201020102010201020102010201020102010201020102010201020102010201020102"
        "01020102010201020102010201020102010201020102010201020102010201020102010201020102"
        "a174a3617070a17601"
    ),
    "hello": (
        "85a876657273696f6e73920101a86e69636b6e616d65a5616c696365a46361707391a56170702f31"
        "a174a568656c6c6fa17601"
    ),
    "close": (
        "84a6726561736f6ea774696d656f7574a76d657373616765af6e6f7468696e6720666f7220392073"
        "a174a5636c6f7365a17601"
    ),
    "proof": (
        "83a17601a36b6579c420000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d"
        "1e1fa3736967c440000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
        "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
    ),
    "chat_message": (
        "8ca3737263a6726f75746572a27473cb41d954fc40200000a26964d9203030303130323033303430"
        "353036303730383039306130623063306430653066a46b696e64a2646da66f726967696ed9403030"
        "30313032303330343035303630373038303930613062306330643065306631303131313231333134"
        "31353136313731383139316131623163316431653166a2746fd94032303231323232333234323532"
        "36323732383239326132623263326432653266333033313332333333343335333633373338333933"
        "6133623363336433653366a473656e74cf0000018bcfe5687ba474657874a6686920e29c93a36f77"
        "6ec3a4686f707300a6737461747573a6717565756564a17601"
    ),
    "peer_updated": (
        "86a3737263a9646973636f76657279a27473cb4000000000000000a565706f636803a373657104a4"
        "7065657289a36b6579d9403030303130323033303430353036303730383039306130623063306430"
        "6530663130313131323133313431353136313731383139316131623163316431653166ab66696e67"
        "65727072696e74b3303132332d343536372d383961622d63646566a86e69636b6e616d65a5616c69"
        "6365a961646472657373657391ad31302e302e302e313a34323432a57374617465a8766572696669"
        "6564a96c6173745f7365656ecb4014000000000000a573696e6365cb3ff0000000000000a4686f70"
        "7301a5616c657274c0a17601"
    ),
    "link_down": (
        "8da3737263a767617465776179a27473cb4000000000000000a565706f636803a373657104a46c69"
        "6e6b09a761646472657373ad31302e302e302e313a34323432a9646972656374696f6ea36f7574a3"
        "6b6579c0a6726561736f6ea774696d656f7574a664657461696ca464656164a762795f70656572c2"
        "aa706565725f7374617465a46e6f6e65a17601"
    ),
    "post": (
        "86a9636c69656e745f6964c41063636363636363636363636363636363a2746fc420202122232425"
        "262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3fa474657874a568656c6c6fa17601"
        "a269642aa26f70ab726f757465722e706f7374"
    ),
    "error": (
        "85a17601a269642aa26f6bc2a56572726f72a66e6f5f6b6579a76d657373616765b46e6f206b6579"
        "20666f722074686174206e6f6465"
    ),
    "txt": (
        "74763d313b6b3d303030313032303330343035303630373038303930613062306330643065306631"
        "303131313231333134313531363137313831393161316231633164316531663b703d343234323b6e"
        "3d616c6963653b743d313730303030303030303b"
    ),
}


def current() -> dict[str, bytes]:
    out = {}
    out["envs"] = routing.encode_envs([(0, b"signed-one", SIG), (7, b"s" * 300, SIG[::-1])])
    out["custody"] = routing.encode_custody([I1, I2])
    out["summary"] = routing.encode_summary([(473_000, 12, I1), (473_001, 0, bytes(16))])
    out["summary_empty"] = routing.encode_summary([])
    out["ids"] = routing.encode_ids(473_000, [I1, I2])
    out["ids_empty"] = routing.encode_ids(5, [])
    out["signed_room"] = envelope.signed_bytes(kind=1, origin=K1, seq=7, ts=1_700_000_000_123,
                                               to=None, body=envelope.room_body("héllo"))
    out["signed_dm"] = envelope.signed_bytes(kind=2, origin=K1, seq=2**40, ts=5, to=K2,
                                             body=b"\x00" * 100)
    out["receipt"] = envelope.receipt_body([I1, I2])
    out["profile"] = envelope.profile_body("alice", K2, [K2, K1])
    out["profile_nolinks"] = envelope.profile_body("bob ✓", K1)
    out["dm_inner"] = envelope.dm_plaintext(origin=K1, text="psst ✓")
    out["app"] = messages.encode_app("router", b"\x01\x02" * 50)
    out["hello"] = messages.encode_message(
        messages.Hello(versions=(1, 1), nickname="alice", caps=("app/1",)))
    out["close"] = messages.encode_message(
        messages.Close(reason="timeout", message="nothing for 9 s"))
    out["proof"] = messages.encode_proof(messages.IdentityProof(v=1, key=K1, sig=SIG))
    out["chat_message"] = encode_event(ChatMessage(
        src="router", ts=1_700_000_000.5, id=I1.hex(), kind="dm", origin=K1.hex(), to=K2.hex(),
        sent=1_700_000_000_123, text="hi ✓", own=True, hops=0, status="queued"))[1]
    peer = PeerInfo(key=K1.hex(), fingerprint="0123-4567-89ab-cdef", nickname="alice",
                    addresses=("10.0.0.1:4242",), state="verified", last_seen=5.0, since=1.0,
                    hops=1)
    out["peer_updated"] = encode_event(
        PeerUpdated(src="discovery", ts=2.0, epoch=3, seq=4, peer=peer))[1]
    out["link_down"] = encode_event(LinkDown(
        src="gateway", ts=2.0, epoch=3, seq=4, link=9, address="10.0.0.1:4242",
        direction="out", key=None, reason="timeout", detail="dead", by_peer=False))[1]
    out["post"] = rpc.encode_request(rpc.Post(client_id=b"c" * 16, to=K2, text="hello"), 42)
    out["error"] = rpc.encode_error(42, "no_key", "no key for that node")
    txt = announce.unsigned_txt(key=K1, port=4242, nickname="alice", now=1_700_000_000.9)
    out["txt"] = b"".join(k + b"=" + v + b";" for k, v in txt.items())
    return out


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_same_bytes_as_before(name: str) -> None:
    assert current()[name].hex() == GOLDEN[name]


def test_golden_covers_every_family() -> None:
    assert set(current()) == set(GOLDEN)


def test_router_messages_and_bodies_match_the_old_formulas() -> None:
    rng = random.Random(11)

    def blob(lo: int, hi: int) -> bytes:
        return rng.randbytes(rng.randint(lo, hi))

    for _ in range(300):
        entries = [(rng.randint(0, 16), blob(1, 600), blob(64, 64))
                   for _ in range(rng.randint(1, 64))]
        ids = [blob(16, 16) for _ in range(rng.randint(1, 300))]
        buckets = [(rng.randint(0, 2**40), rng.randint(0, 2**20), blob(16, 16))
                   for _ in range(rng.randint(0, 256))]
        bucket = rng.randint(0, 2**63)
        assert routing.encode_envs(entries) == codec.pack([0, [list(e) for e in entries]])
        assert routing.encode_custody(ids) == codec.pack([1, ids])
        assert routing.encode_summary(buckets) == codec.pack([2, [list(b) for b in buckets]])
        assert routing.encode_ids(bucket, ids) == codec.pack([3, bucket, ids])
        receipt = ids[: rng.randint(1, 256)]
        assert envelope.receipt_body(receipt) == codec.pack(list(receipt))
        links = [blob(32, 32) for _ in range(rng.randint(0, 256))]
        nick = "".join(rng.choice("abc é✓") for _ in range(rng.randint(1, 8)))
        enc = blob(32, 32)
        assert envelope.profile_body(nick, enc, links) == codec.pack(
            {"nick": nick, "enc": enc, "links": sorted(links)})
        text = "".join(rng.choice("xyz ü✓\n") for _ in range(rng.randint(0, 1000)))
        assert envelope.dm_plaintext(origin=enc, text=text) == codec.pack(
            {"from": enc, "text": text})
        assert envelope.room_body(text) == text.encode()
        fields = dict(kind=rng.randint(1, 4), origin=enc, seq=rng.randint(0, 2**63 - 1),
                      ts=rng.randint(0, 2**53 - 1), to=rng.choice([None, enc]),
                      body=blob(0, 4864))
        assert envelope.signed_bytes(**fields) == codec.pack([1, *fields.values()])
        kind = rng.choice(["router", "x", "k" * 32])
        body = blob(0, 3000)
        assert messages.encode_app(kind, body) == codec.pack(
            {"kind": kind, "body": body, "t": "app", "v": 1})
