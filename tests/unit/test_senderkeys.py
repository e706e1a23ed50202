"""Group sender keys (common/senderkeys.py): chains round-trip, tolerate reordering and
loss within bounds, refuse replays and forgeries without changing state, keep forward
secrecy, and lock a removed member out after a re-key."""

from __future__ import annotations

import copy
import hashlib
import os

import nacl.bindings
import nacl.exceptions
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tazcom.common import senderkeys
from tazcom.common.errors import LocalProtocolError, RemoteProtocolError
from tazcom.common.senderkeys import (
    KEEP_EPOCHS,
    MAX_KEPT,
    MAX_SKIP,
    TAG,
    KeyStore,
    ReceiverChain,
    SenderChain,
    SenderKey,
)

GROUP = b"G" * 16
ALICE, BOB, CAROL, MALLORY = (bytes([n]) * 32 for n in (1, 2, 3, 4))


def ad(sender: bytes, epoch: int, index: int, group: bytes = GROUP) -> bytes:
    return group + epoch.to_bytes(8, "big") + sender + index.to_bytes(8, "big")


def send(chain: SenderChain, plain: bytes) -> tuple[int, bytes, bytes]:
    """Seal with the header the caller would build; returns (index, ciphertext, header)."""
    index = chain.index
    header = ad(chain.sender, chain.epoch, index)
    got, sealed = chain.encrypt(plain, header)
    assert got == index
    return index, sealed, header


def code_of(fn, *args) -> str:
    with pytest.raises(RemoteProtocolError) as info:
        fn(*args)
    return info.value.code


def snapshot(chain: ReceiverChain) -> tuple:
    return (chain._index, chain._chain_key, list(chain._skipped.items()), chain._floor)


def test_derivation_matches_the_spec():
    ck0 = bytes(range(32))
    chain = SenderChain(ALICE, GROUP, 0, ck0)
    _, sealed = chain.encrypt(b"hi", b"h")
    mk0 = hashlib.blake2b(b"\x01", key=ck0, person=b"tazcom-gmsg", digest_size=32).digest()
    ck1 = hashlib.blake2b(b"\x02", key=ck0, person=b"tazcom-gchain", digest_size=32).digest()
    assert nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
        sealed, b"h", bytes(24), mk0) == b"hi"
    assert chain.export().chain_key == ck1 and chain.index == 1
    assert senderkeys.nonce(258) == b"\0" * 6 + b"\x01\x02" + bytes(16)


def test_round_trip_in_order():
    chain = SenderChain.new(ALICE, GROUP, 3)
    rx = ReceiverChain.from_key(chain.export())
    for n in range(50):
        plain = os.urandom(n)
        index, sealed, header = send(chain, plain)
        assert index == n and len(sealed) == n + TAG
        assert rx.decrypt(index, sealed, header) == plain
    assert rx.kept == 0 and rx.index == 50


def test_sender_key_does_not_print_its_secret():
    key = SenderChain.new(ALICE, GROUP, 0).export()
    assert key.chain_key.hex() not in repr(key) and repr(key.chain_key) not in repr(key)


def test_out_of_order_and_duplicates():
    chain = SenderChain.new(ALICE, GROUP, 0)
    rx = ReceiverChain.from_key(chain.export())
    msgs = [send(chain, b"m%d" % i) for i in range(10)]
    for i in (5, 2, 9, 0):
        assert rx.decrypt(*msgs[i]) == b"m%d" % i
    assert rx.kept == 6  # 1, 3, 4, 6, 7, 8
    for i in (5, 2, 9, 0):
        assert code_of(rx.decrypt, *msgs[i]) == "duplicate"
    for i in (8, 1, 3, 7, 4, 6):
        assert rx.decrypt(*msgs[i]) == b"m%d" % i
    assert rx.kept == 0


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_any_delivery_order_opens_each_message_at_most_once(data):
    """Random order with drops and duplicates: every delivery opens its own plaintext
    (first time only) or is refused with a code; nothing else ever happens."""
    n = data.draw(st.integers(1, 40))
    chain = SenderChain.new(ALICE, GROUP, 1)
    rx = ReceiverChain.from_key(chain.export())
    msgs = [send(chain, b"m%d" % i) for i in range(n)]
    deliveries = data.draw(st.lists(st.integers(0, n - 1), max_size=3 * n))
    opened: set[int] = set()
    for i in deliveries:
        try:
            assert rx.decrypt(*msgs[i]) == b"m%d" % i
        except RemoteProtocolError as e:
            assert i in opened and e.code == "duplicate"
        else:
            assert i not in opened
            opened.add(i)
    assert opened == set(deliveries)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_small_bounds_drop_old_keys_and_refuse_with_codes(data):
    """With tiny MAX_SKIP/MAX_KEPT, delivery still either opens each message once or
    refuses with one of the documented codes, and a refusal changes no state."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(senderkeys, "MAX_SKIP", 5)
        mp.setattr(senderkeys, "MAX_KEPT", 4)
        n = data.draw(st.integers(1, 30))
        chain = SenderChain.new(ALICE, GROUP, 1)
        rx = ReceiverChain.from_key(chain.export())
        msgs = [send(chain, b"m%d" % i) for i in range(n)]
        deliveries = data.draw(st.lists(st.integers(0, n - 1), max_size=3 * n))
        opened: set[int] = set()
        for i in deliveries:
            before = snapshot(rx)
            try:
                assert rx.decrypt(*msgs[i]) == b"m%d" % i
            except RemoteProtocolError as e:
                assert e.code in {"duplicate", "old_message", "too_far"}
                assert e.code != "duplicate" or i in opened
                assert e.code != "too_far" or i - before[0] > 5
                assert snapshot(rx) == before
            else:
                assert i not in opened
                opened.add(i)
            assert rx.kept <= 4


def test_tampering_is_refused_and_changes_nothing():
    chain = SenderChain.new(ALICE, GROUP, 0)
    rx = ReceiverChain.from_key(chain.export())
    msgs = [send(chain, b"hello group") for _ in range(3)]
    index, sealed, header = msgs[2]
    before = snapshot(rx)
    flipped = bytes([sealed[0] ^ 1]) + sealed[1:]
    cases = [
        (index, flipped, header),                        # altered ciphertext
        (index, sealed[:-1], header),                    # truncated tag
        (index, b"", header),                            # shorter than a tag
        (index, sealed, ad(ALICE, 1, index)),            # other epoch in header
        (index, sealed, ad(BOB, 0, index)),              # other sender in header
        (index, sealed, ad(ALICE, 0, index, b"H" * 16)),  # other group in header
        (1, sealed, header),                             # moved to another index
    ]
    for case in cases:
        assert code_of(rx.decrypt, *case) == "decrypt_failed"
        assert snapshot(rx) == before
    # A forged message for a skipped index does not burn its key.
    assert rx.decrypt(*msgs[2]) == b"hello group"
    assert code_of(rx.decrypt, 0, msgs[1][1], msgs[0][2]) == "decrypt_failed"
    assert rx.decrypt(*msgs[0]) == b"hello group"
    assert rx.decrypt(*msgs[1]) == b"hello group"


def test_malformed_input_raises_only_protocol_errors():
    chain = SenderChain.new(ALICE, GROUP, 0)
    rx = ReceiverChain.from_key(chain.export())
    _, sealed, header = send(chain, b"x")
    for args in [("0", sealed, header), (True, sealed, header), (None, sealed, header),
                 (0.0, sealed, header), (0, "text", header), (0, sealed, None),
                 (-1, sealed, header), (2**64, sealed, header), (2**200, sealed, header)]:
        with pytest.raises(RemoteProtocolError):
            rx.decrypt(*args)
    assert rx.decrypt(0, sealed, header) == b"x"


def test_max_skip_bound_is_checked_before_any_derivation(monkeypatch):
    chain = SenderChain.new(ALICE, GROUP, 0)
    rx = ReceiverChain.from_key(chain.export())
    calls = []
    real = senderkeys._next_chain_key
    monkeypatch.setattr(senderkeys, "_next_chain_key", lambda ck: calls.append(1) or real(ck))
    before = snapshot(rx)
    assert code_of(rx.decrypt, 10**6, os.urandom(40), b"forged") == "too_far"
    assert code_of(rx.decrypt, MAX_SKIP + 1, os.urandom(40), b"forged") == "too_far"
    assert calls == [] and snapshot(rx) == before
    # Exactly MAX_SKIP ahead is allowed; a forgery there derives but commits nothing.
    assert code_of(rx.decrypt, MAX_SKIP, os.urandom(40), b"forged") == "decrypt_failed"
    assert snapshot(rx) == before


def test_max_skip_and_max_kept_on_a_real_chain():
    chain = SenderChain.new(ALICE, GROUP, 0)
    rx = ReceiverChain.from_key(chain.export())
    msgs = [send(chain, b"%d" % i) for i in range(MAX_SKIP + 2)]
    assert code_of(rx.decrypt, *msgs[MAX_SKIP + 1]) == "too_far"
    assert rx.decrypt(*msgs[MAX_SKIP]) == b"%d" % MAX_SKIP
    assert rx.kept == MAX_SKIP == MAX_KEPT
    assert rx.decrypt(*msgs[MAX_SKIP + 1]) == b"%d" % (MAX_SKIP + 1)
    # One more jump pushes the oldest kept keys out.
    more = [send(chain, b"late") for _ in range(10)]
    assert rx.decrypt(*more[-1]) == b"late"
    assert rx.kept == MAX_KEPT
    for i in range(9):
        assert code_of(rx.decrypt, *msgs[i]) == "old_message"
    assert rx.decrypt(*msgs[9]) == b"9"
    assert rx.decrypt(*more[0]) == b"late"


def test_forward_secrecy_of_an_exported_state():
    chain = SenderChain.new(ALICE, GROUP, 0)
    early = [send(chain, b"early %d" % i) for i in range(5)]
    key = chain.export()
    assert key.index == 5
    late = send(chain, b"late")
    rx = ReceiverChain.from_key(key)
    for msg in early:
        assert code_of(rx.decrypt, *msg) == "old_message"
    assert rx.decrypt(*late) == b"late"
    # And the raw chain key itself opens none of them: the hash runs forward only.
    ck = key.chain_key
    keys = []
    for _ in range(10):
        keys.append(senderkeys._message_key(ck))
        ck = senderkeys._next_chain_key(ck)
    for i, sealed, header in early:
        for mk in [*keys, key.chain_key]:
            with pytest.raises(nacl.exceptions.CryptoError):
                nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                    sealed, header, senderkeys.nonce(i), mk)


def test_sender_drops_used_chain_keys():
    chain = SenderChain.new(ALICE, GROUP, 0)
    ck0 = chain.export().chain_key
    send(chain, b"x")
    assert ck0 not in vars(chain).values()


def test_bad_local_and_remote_keys():
    with pytest.raises(LocalProtocolError):
        SenderChain(ALICE, GROUP, 0, b"short")
    with pytest.raises(LocalProtocolError):
        SenderChain(ALICE, GROUP, -1, bytes(32))
    for bad in [SenderKey(ALICE, GROUP, 0, -1, bytes(32)),
                SenderKey(ALICE, GROUP, 0, 2**64, bytes(32)),
                SenderKey(ALICE, GROUP, True, 0, bytes(32)),
                SenderKey(ALICE, "group", 0, 0, bytes(32)),
                SenderKey(ALICE, GROUP, 0, 0, bytes(31)), "not a key"]:
        assert code_of(ReceiverChain.from_key, bad) == "bad_sender_key"
        assert code_of(KeyStore(GROUP).add, bad, {ALICE}) == "bad_sender_key"


def test_sender_chain_exhausts_at_u64():
    chain = SenderChain(ALICE, GROUP, 0, bytes(32), index=2**64 - 1)
    assert chain.encrypt(b"", b"")[0] == 2**64 - 1
    with pytest.raises(LocalProtocolError):
        chain.encrypt(b"", b"")


# --- KeyStore -------------------------------------------------------------------------


def test_keystore_membership_group_and_no_key():
    store = KeyStore(GROUP)
    alice = SenderChain.new(ALICE, GROUP, 0)
    assert code_of(store.add, alice.export(), {BOB, CAROL}) == "not_member"
    other = SenderChain.new(ALICE, b"H" * 16, 0)
    assert code_of(store.add, other.export(), {ALICE}) == "wrong_group"
    index, sealed, header = send(alice, b"hi")
    assert code_of(store.decrypt, ALICE, 0, index, sealed, header) == "no_key"
    assert code_of(store.decrypt, [ALICE], 0, index, sealed, header) == "no_key"
    assert store.add(alice.export(), {ALICE, BOB}) is True
    # alice.export() is now at index 1: message 0 predates it.
    assert code_of(store.decrypt, ALICE, 0, index, sealed, header) == "old_message"
    assert store.decrypt(ALICE, 0, *send(alice, b"yo")) == b"yo"
    assert code_of(store.decrypt, ALICE, 1, *send(alice, b"yo")) == "no_key"


def test_keystore_ignores_a_second_key_for_the_same_chain():
    """Re-adding (even an older export) must not rewind the chain into accepting replays."""
    store = KeyStore(GROUP)
    alice = SenderChain.new(ALICE, GROUP, 0)
    first = alice.export()
    msg = send(alice, b"once")
    assert store.add(first, {ALICE})
    assert store.decrypt(ALICE, 0, *msg) == b"once"
    assert store.add(first, {ALICE}) is False
    assert code_of(store.decrypt, ALICE, 0, *msg) == "duplicate"


def test_keystore_stale_epochs():
    store = KeyStore(GROUP)
    fresh = {e: SenderChain.new(ALICE, GROUP, e) for e in range(6)}
    for e in (0, 1):
        assert store.add(fresh[e].export(), {ALICE})
    store.add(fresh[3].export(), {ALICE})
    assert store.newest_epoch == 3
    # Epoch 0 is more than KEEP_EPOCHS behind 3: refused and its chain pruned.
    assert KEEP_EPOCHS == 2
    assert not store.has(ALICE, 0) and store.has(ALICE, 1)
    assert code_of(store.add, SenderChain.new(BOB, GROUP, 0).export(), {BOB}) == "stale_epoch"
    assert store.add(SenderChain.new(BOB, GROUP, 1).export(), {BOB})
    assert code_of(store.decrypt, ALICE, 0, *send(fresh[0], b"x")) == "no_key"
    assert store.decrypt(ALICE, 1, *send(fresh[1], b"late")) == b"late"
    store.add(fresh[4].export(), {ALICE})
    assert not store.has(ALICE, 1) and store.has(ALICE, 3)


def test_removed_member_cannot_read_the_next_epoch():
    """Epoch 0: Alice, Bob, Mallory. Mallory is removed; epoch 1: fresh chains for Alice
    and Bob, keys distributed to the remaining members only. Mallory keeps every key and
    every chain state it ever had, and still cannot open an epoch-1 message."""
    members0 = {ALICE, BOB, MALLORY}
    chains0 = {m: SenderChain.new(m, GROUP, 0) for m in members0}
    stores = {m: KeyStore(GROUP) for m in members0}
    mallory_loot: list[SenderKey] = []
    for sender, chain in chains0.items():
        key = chain.export()
        for member in members0 - {sender}:
            assert stores[member].add(key, members0)
        if sender != MALLORY:
            mallory_loot.append(key)
    mallory_loot.append(chains0[MALLORY].export())
    for _ in range(3):  # traffic in epoch 0, all read it
        msg = send(chains0[ALICE], b"before")
        assert stores[MALLORY].decrypt(ALICE, 0, *msg) == b"before"
        assert stores[BOB].decrypt(ALICE, 0, *msg) == b"before"
    mallory_states = [copy.deepcopy(c) for c in stores[MALLORY]._chains.values()]
    mallory_loot.append(chains0[MALLORY].export())

    members1 = {ALICE, BOB}
    chains1 = {m: SenderChain.new(m, GROUP, 1) for m in members1}
    for sender, chain in chains1.items():
        for member in members1 - {sender}:
            assert stores[member].add(chain.export(), members1)
    for sender in members1:
        msg = send(chains1[sender], b"after removal")
        other = (members1 - {sender}).pop()
        assert stores[other].decrypt(sender, 1, *msg) == b"after removal"
        # Mallory's store has no epoch-1 chain for anyone.
        assert code_of(stores[MALLORY].decrypt, sender, 1, *msg) == "no_key"
        # Mallory cannot plant its own epoch-1 chain as a member either.
        fake = SenderChain.new(MALLORY, GROUP, 1)
        assert code_of(stores[other].add, fake.export(), members1) == "not_member"
        # Brute force with everything held: old keys (re-labelled epoch 1), old chain
        # states, their forward derivations. New chain keys are fresh random bytes, so
        # none match; the tag check says so.
        index, sealed, header = msg
        candidates = [k.chain_key for k in mallory_loot]
        candidates += [s._chain_key for s in mallory_states]
        candidates += [mk for s in mallory_states for mk in s._skipped.values()]
        for ck in candidates:
            relabelled = SenderKey(sender, GROUP, 1, 0, ck)
            rx = ReceiverChain.from_key(relabelled)
            assert code_of(rx.decrypt, index, sealed, header) == "decrypt_failed"
        assert chains1[sender].export().chain_key not in candidates


def test_hundred_members_one_ciphertext():
    members = [os.urandom(32) for _ in range(100)]
    sender = members[0]
    chain = SenderChain.new(sender, GROUP, 7)
    key = chain.export()  # sealed to each member's DM key by the caller
    stores = {m: KeyStore(GROUP) for m in members[1:]}
    for store in stores.values():
        assert store.add(key, set(members))
    plain = os.urandom(300)
    index, sealed, header = send(chain, plain)
    assert len(sealed) == len(plain) + TAG
    for store in stores.values():
        assert store.decrypt(sender, 7, index, sealed, header) == plain

    # Same plaintext, group of 3: identical ciphertext size.
    small = SenderChain.new(sender, GROUP, 7)
    assert len(send(small, plain)[1]) == len(sealed)
