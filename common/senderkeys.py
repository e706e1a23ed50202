"""Sender keys for private groups (issue 16): one symmetric ratchet per member and epoch.
No I/O.

Theory of operation
-------------------
Each member, in each group epoch, owns a *sender chain*: a fresh random 32-byte chain key
``CK_0`` and an index. Message ``i`` is sealed with

    MK_i     = BLAKE2b-256(key=CK_i, data=0x01, person="tazcom-gmsg")
    CK_{i+1} = BLAKE2b-256(key=CK_i, data=0x02, person="tazcom-gchain")

using XChaCha20-Poly1305, nonce ``u64be(i)`` + 16 zero bytes, associated data = the
caller's encoded header (group id, epoch, sender, index). A message is its plaintext plus
a 16-byte tag whatever the group size: the sender encrypts once and the mesh floods one
ciphertext. The sender drops ``CK_i`` as soon as it has derived ``MK_i`` and
``CK_{i+1}``, so a later compromise of its state reveals no earlier message.

Distribution: ``SenderChain.export()`` gives a ``SenderKey`` (the chain key at the
current index). The caller seals it to each member's DM key; a member turns it into a
``ReceiverChain`` that can read every message from that index on, never an earlier one
(the hash only runs forward).

Receiving tolerates a lossy, reordering flood: the receiver derives forward to the
message's index and keeps the message keys it skipped, at most ``MAX_SKIP`` ahead of its
position and ``MAX_KEPT`` stored (oldest dropped). A message key is deleted once used, so a
replay is refused. Every check that bounds work (``MAX_SKIP``) runs before any derivation,
and state changes only after the tag verified: a forged message costs at most ``MAX_SKIP``
hashes and changes nothing.

Removal: re-keying to epoch ``e+1`` gives every remaining member a new random chain and
the removed member no ``SenderKey`` for it. New chain keys are fresh randomness,
independent of every old chain key, so nothing the removed member holds derives them.

``KeyStore`` holds one group's receiver chains per (sender, epoch), refusing keys from
non-members (the caller supplies the membership at that epoch) and from epochs more than
``KEEP_EPOCHS`` behind the newest it knows.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import nacl.bindings
import nacl.exceptions

from .errors import LocalProtocolError, RemoteProtocolError, SchemaError

KEY_BYTES = 32
TAG = 16
#: How far past its position a receiver derives for one message.
MAX_SKIP = 2000
#: Skipped message keys kept per chain for late messages; the oldest go first.
MAX_KEPT = 2000
#: Epochs this far behind the newest known still decrypt (late messages across a re-key).
KEEP_EPOCHS = 2
#: Indexes are u64: the nonce holds them in 8 bytes.
INDEX_LIMIT = 2**64

_MSG_PERSON = b"tazcom-gmsg"
_CHAIN_PERSON = b"tazcom-gchain"


def _message_key(chain_key: bytes) -> bytes:
    return hashlib.blake2b(b"\x01", key=chain_key, person=_MSG_PERSON, digest_size=32).digest()


def _next_chain_key(chain_key: bytes) -> bytes:
    return hashlib.blake2b(b"\x02", key=chain_key, person=_CHAIN_PERSON,
                           digest_size=32).digest()


def nonce(index: int) -> bytes:
    """The nonce for message ``index``. Index nonces are safe because every message key
    seals exactly one message (it is derived for that index alone and deleted after use),
    so a (key, nonce) pair never repeats; the nonce need not be random."""
    return index.to_bytes(8, "big") + bytes(16)


def _is_index(value: object) -> bool:
    # bool is an int subclass; a True index is a caller bug or a malformed message.
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class SenderKey:
    """What a reader needs to follow ``sender``'s chain in ``group`` at ``epoch`` from
    ``index`` on. Secret: travels only sealed to a member's DM key."""

    sender: bytes
    group: bytes
    epoch: int
    index: int
    chain_key: bytes = field(repr=False)

    def problem(self) -> str | None:
        """Why this key is malformed, or None."""
        if not isinstance(self.sender, bytes) or not isinstance(self.group, bytes):
            return "sender and group are bytes"
        if not _is_index(self.epoch) or self.epoch < 0:
            return f"epoch {self.epoch!r} is not a non-negative int"
        if not _is_index(self.index) or not 0 <= self.index < INDEX_LIMIT:
            return f"index {self.index!r} is not a u64"
        if not isinstance(self.chain_key, bytes) or len(self.chain_key) != KEY_BYTES:
            return f"a chain key is {KEY_BYTES} bytes"
        return None


class SenderChain:
    """Our own chain in one group epoch: seals messages in index order."""

    def __init__(self, sender: bytes, group: bytes, epoch: int, chain_key: bytes,
                 index: int = 0) -> None:
        problem = SenderKey(sender, group, epoch, index, chain_key).problem()
        if problem:
            raise LocalProtocolError(f"sender chain: {problem}")
        self.sender = sender
        self.group = group
        self.epoch = epoch
        self._index = index
        self._chain_key = chain_key

    @classmethod
    def new(cls, sender: bytes, group: bytes, epoch: int) -> SenderChain:
        """A fresh chain: random ``CK_0`` (never derived from an earlier epoch's chain, which
        is what locks a removed member out), index 0."""
        return cls(sender, group, epoch, os.urandom(KEY_BYTES))

    @property
    def index(self) -> int:
        """The index the next message will get."""
        return self._index

    def encrypt(self, plaintext: bytes, header_ad: bytes) -> tuple[int, bytes]:
        """Seal ``plaintext`` at the next index; returns (index, ciphertext), the ciphertext
        being ``len(plaintext) + TAG`` bytes."""
        if self._index >= INDEX_LIMIT:
            raise LocalProtocolError("sender chain exhausted; re-key the group")
        index = self._index
        mk = _message_key(self._chain_key)
        sealed = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            plaintext, header_ad, nonce(index), mk)
        # Replacing the only reference drops CK_i (forward secrecy); Python cannot wipe
        # the old bytes object, but nothing reachable holds it any more.
        self._chain_key = _next_chain_key(self._chain_key)
        self._index = index + 1
        return index, sealed

    def export(self) -> SenderKey:
        """The state a new reader needs, valid from the current index on."""
        return SenderKey(self.sender, self.group, self.epoch, self._index, self._chain_key)


class ReceiverChain:
    """Our copy of another member's chain in one group epoch."""

    def __init__(self, key: SenderKey) -> None:
        problem = key.problem() if isinstance(key, SenderKey) else "not a SenderKey"
        if problem:
            raise RemoteProtocolError(f"sender key: {problem}", code="bad_sender_key")
        self.sender = key.sender
        self.group = key.group
        self.epoch = key.epoch
        #: The index whose key ``_chain_key`` is; every index below is used, kept or gone.
        self._index = key.index
        self._chain_key = key.chain_key
        #: Skipped message keys by index, ascending (derived in order, so insertion order).
        self._skipped: OrderedDict[int, bytes] = OrderedDict()
        #: Below this index nothing can be opened: before the key we got, or dropped.
        self._floor = key.index

    @classmethod
    def from_key(cls, key: SenderKey) -> ReceiverChain:
        return cls(key)

    def dump(self) -> list[Any]:
        """Our position in the chain, for the node's disk: ``[sender, epoch, index,
        chain_key, floor, [[index, message_key], ...]]`` (secret)."""
        return [self.sender, self.epoch, self._index, self._chain_key, self._floor,
                [[i, k] for i, k in self._skipped.items()]]

    @classmethod
    def load(cls, group: bytes, row: list[Any]) -> ReceiverChain:
        sender, epoch, index, chain_key, floor, skipped = row
        chain = cls(SenderKey(sender, group, epoch, index, chain_key))
        chain._floor = floor
        chain._skipped = OrderedDict((i, k) for i, k in skipped)
        return chain

    @property
    def index(self) -> int:
        """The lowest index not yet derived past."""
        return self._index

    @property
    def kept(self) -> int:
        """How many skipped message keys wait for late messages."""
        return len(self._skipped)

    def decrypt(self, index: int, ciphertext: bytes, header_ad: bytes) -> bytes:
        """Open message ``index``. Refusals are ``RemoteProtocolError`` with code
        ``old_message`` (before what we can open), ``duplicate`` (already opened),
        ``too_far`` (more than ``MAX_SKIP`` ahead), ``decrypt_failed`` (bad tag, wrong
        header) or ``bad_message`` (wrong types); the chain is unchanged on any refusal."""
        if not _is_index(index):
            raise SchemaError(f"message index {index!r} is not an int")
        if not isinstance(ciphertext, bytes) or not isinstance(header_ad, bytes):
            raise SchemaError("ciphertext and header are bytes")
        if index < self._index:
            return self._open_skipped(index, ciphertext, header_ad)
        # The bound comes first: a forged far index must not buy a long derivation.
        if index - self._index > MAX_SKIP or index >= INDEX_LIMIT:
            raise RemoteProtocolError(f"message {index} is more than {MAX_SKIP} past "
                                      f"{self._index}", code="too_far")
        skipped: list[tuple[int, bytes]] = []
        ck = self._chain_key
        for i in range(self._index, index):
            skipped.append((i, _message_key(ck)))
            ck = _next_chain_key(ck)
        plain = self._open(index, _message_key(ck), ciphertext, header_ad)
        # Verified: commit.
        self._skipped.update(skipped)
        while len(self._skipped) > MAX_KEPT:
            dropped, _ = self._skipped.popitem(last=False)
            self._floor = dropped + 1
        self._chain_key = _next_chain_key(ck)
        self._index = index + 1
        return plain

    def _open_skipped(self, index: int, ciphertext: bytes, header_ad: bytes) -> bytes:
        mk = self._skipped.get(index)
        if mk is None:
            if index < self._floor:
                raise RemoteProtocolError(f"message {index} is older than the keys kept "
                                          f"(from {self._floor})", code="old_message")
            # At or above the floor, every index below _index was kept or consumed.
            raise RemoteProtocolError(f"message {index} was already opened", code="duplicate")
        plain = self._open(index, mk, ciphertext, header_ad)
        del self._skipped[index]
        return plain

    @staticmethod
    def _open(index: int, mk: bytes, ciphertext: bytes, header_ad: bytes) -> bytes:
        if len(ciphertext) < TAG:
            raise RemoteProtocolError(f"message {index}: shorter than a tag",
                                      code="decrypt_failed")
        try:
            return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                ciphertext, header_ad, nonce(index), mk)
        except nacl.exceptions.CryptoError:
            raise RemoteProtocolError(f"message {index} does not open (altered message or "
                                      "header, or another chain)", code="decrypt_failed") from None


class KeyStore:
    """One group's receiver chains, per (sender, epoch)."""

    def __init__(self, group: bytes) -> None:
        self.group = group
        self._chains: dict[tuple[bytes, int], ReceiverChain] = {}
        self._newest: int | None = None

    @property
    def newest_epoch(self) -> int | None:
        return self._newest

    def has(self, sender: bytes, epoch: int) -> bool:
        return (sender, epoch) in self._chains

    def add(self, key: SenderKey, members_at_epoch: Collection[bytes]) -> bool:
        """Start following ``key``'s chain. Refuses (``RemoteProtocolError``) a malformed key
        (``bad_sender_key``), another group's (``wrong_group``), a sender not in
        ``members_at_epoch`` (``not_member``), an epoch more than ``KEEP_EPOCHS`` behind the
        newest known (``stale_epoch``). Returns False, changing nothing, when a chain for
        that sender and epoch is already held: a second copy of the key (or an older one)
        must not rewind the chain and reopen used message keys to replays."""
        chain = ReceiverChain(key)
        if key.group != self.group:
            raise RemoteProtocolError("a sender key for another group", code="wrong_group")
        if key.sender not in members_at_epoch:
            raise RemoteProtocolError(f"sender is not a member at epoch {key.epoch}",
                                      code="not_member")
        if self._newest is not None and key.epoch < self._newest - KEEP_EPOCHS:
            raise RemoteProtocolError(f"epoch {key.epoch} is more than {KEEP_EPOCHS} behind "
                                      f"{self._newest}", code="stale_epoch")
        if (key.sender, key.epoch) in self._chains:
            return False
        self._chains[(key.sender, key.epoch)] = chain
        if self._newest is None or key.epoch > self._newest:
            self._newest = key.epoch
            floor = self._newest - KEEP_EPOCHS
            self._chains = {k: c for k, c in self._chains.items() if k[1] >= floor}
        return True

    def dump(self) -> list[list[Any]]:
        return [c.dump() for c in self._chains.values()]

    @classmethod
    def load(cls, group: bytes, rows: list[list[Any]]) -> KeyStore:
        store = cls(group)
        for row in rows:
            chain = ReceiverChain.load(group, row)
            store._chains[(chain.sender, chain.epoch)] = chain
            if store._newest is None or chain.epoch > store._newest:
                store._newest = chain.epoch
        return store

    def decrypt(self, sender: bytes, epoch: int, index: int, ciphertext: bytes,
                header_ad: bytes) -> bytes:
        """Open a message; ``no_key`` when no chain for that sender and epoch is held (never
        received, or pruned as stale), else as ``ReceiverChain.decrypt``."""
        try:
            chain = self._chains.get((sender, epoch))
        except TypeError:  # unhashable sender or epoch from a malformed message
            chain = None
        if chain is None:
            raise RemoteProtocolError(f"no sender key for this sender at epoch {epoch!r}",
                                      code="no_key")
        return chain.decrypt(index, ciphertext, header_ad)
