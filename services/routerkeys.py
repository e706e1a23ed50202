"""The router's keys, executed: ``common.keyring.KeyRing`` decides, this module asks
identity for certificates and revocation signatures, keeps ``$TAZCOM_HOME/router.keys``,
and signs and opens for the router (docs/protocol.md §10, "Delegated signing keys";
docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tazcom.common import rpc
from tazcom.common.errors import ConfigError, RequestFailed, TazcomError
from tazcom.common.keyring import CERT_BACKDATE, CERT_S, DM_KEY_KEEP, ROTATE_S, DmKey, KeyRing
from tazcom.common.keys import DOMAIN_ENVELOPE, fingerprint
from tazcom.common.limits import CERT_VALIDITY_MAX

from .runtime import Runtime

#: Bytes per identity request, well under rpc.max_request_bytes (256 KiB).
PUT_BYTES = 160_000


def by_size(items: list, size_of: Callable[[Any], int], budget: int = PUT_BYTES,
            most: int = 256) -> list[list]:
    """Split ``items`` so that each request stays under the RPC size limit."""
    chunks: list[list] = [[]]
    size = 0
    for item in items:
        n = size_of(item)
        if chunks[-1] and (size + n > budget or len(chunks[-1]) >= most):
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += n
    return [c for c in chunks if c]


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


class RouterKeys:
    def __init__(self, rt: Runtime, *, on_cert: Callable[[bytes | None], None],
                 on_rotate: Callable[[DmKey], None],
                 clock: Callable[[], float] = time.time) -> None:
        self.rt = rt
        #: The mesh time (the router's ``wall``): certificates and DM keys are dated by it.
        self.clock = clock
        raw = rt.config.raw.get("router", {})
        cert_s = int(raw.get("cert_validity_s", CERT_S))
        rotate_s = int(raw.get("dm_key_rotate_s", ROTATE_S))
        if not 20 <= cert_s <= CERT_VALIDITY_MAX - CERT_BACKDATE or rotate_s < 20:
            raise ConfigError(f"router.cert_validity_s must be 20.."
                              f"{CERT_VALIDITY_MAX - CERT_BACKDATE} and "
                              f"router.dm_key_rotate_s at least 20, not {cert_s}, {rotate_s}")
        self.path = rt.config.paths.home / "router.keys"
        self.ring = load_ring(self.path, cert_s, rotate_s, rt, clock)
        self.identity = rt.client("identity")
        self.on_cert, self.on_rotate = on_cert, on_rotate
        self.wake = asyncio.Event()
        #: One certificate request at a time: the ring has one pending key.
        self._certifying = asyncio.Lock()

    # -- signing and opening, for the router's actions --------------------------------------

    def sign(self, items: list[bytes]) -> list[bytes]:
        """With the delegated key, here: no round trip on the message path."""
        if not self.ring.usable(self.clock()):
            self.wake.set()
            raise RequestFailed("no certified signing key: identity has not certified one "
                                "(is it running?)", code="no_signing_key")
        return [self.ring.sign(item) for item in items]

    async def sign_long_term(self, items: list[bytes]) -> list[bytes]:
        """By identity, with the long-term key: revocations only (identity checks)."""
        sigs: list[bytes] = []
        for chunk in by_size(items, len):
            reply = await self.identity.call(rpc.SignMany(domain=DOMAIN_ENVELOPE,
                                                          items=tuple(chunk)), retries=20)
            sigs += reply.sigs
        return sigs

    def open(self, boxes: list[bytes]) -> Any:
        """With the router's DM keys, newest first. A box none of them opens may be older
        than this router's keys (sealed to the key identity held before keys moved here):
        identity is asked for those only."""
        plains = [self.ring.open(b) for b in boxes]
        missing = [i for i, p in enumerate(plains) if p is None]
        if not missing:
            return plains

        async def ask_identity() -> list[bytes | None]:
            try:
                reply = await self.identity.call(
                    rpc.OpenSealed(boxes=tuple(boxes[i] for i in missing[:256])), retries=1)
            except TazcomError:
                return plains
            for i, p in zip(missing, reply.items, strict=False):
                plains[i] = p
            return plains
        return ask_identity()

    # -- certificates, rotation, revocation -----------------------------------------------------

    async def certify(self, *, wait: bool = False) -> bool:
        """Ask identity to certify our next signing key; True when done."""
        async with self._certifying:
            return await self._certify(wait)

    async def _certify(self, wait: bool) -> bool:
        dkey, nb, na = self.ring.cert_request(self.clock())
        req = rpc.Certify(dkey=dkey, not_before=nb, not_after=na)
        try:
            if wait:
                reply = await self.rt.call_until_ready("identity", req)
            else:
                reply = await self.identity.call(req, timeout=1.0, retries=0)
        except TazcomError as e:
            if not wait:
                self.identity._reset()
            self.rt.log.warning("identity did not certify a signing key (%s); the current "
                                "one is valid %s", getattr(e, "message", e), self.validity())
            return False
        self.ring.certified(dkey, reply.cert)
        save_ring(self.path, self.ring)
        self.on_cert(self.ring.signer.cert)
        self.rt.log.info("signing key %s certified by identity until %s", fingerprint(dkey),
                         _when(na))
        return True

    def validity(self) -> str:
        s = self.ring.signer
        left = s.not_after - self.clock()
        return f"for {left / 3600:.1f} h more" if s.cert and left > 0 else "nowhere (expired)"

    async def loop(self) -> None:
        """Renew the certificate, rotate the DM key, erase old ones, as they fall due."""
        retry = 1.0
        while True:
            now = self.clock()
            if self.ring.renew_due(now):
                retry = 1.0 if await self.certify() else min(retry * 2, 8.0)
            changed = False
            if self.ring.rotate_due(now):
                self.on_rotate(self.ring.rotate(now))
                self.rt.log.info("DM key rotated; the old one is kept %d h more",
                                 DM_KEY_KEEP // 3600)
                changed = True
            gone = self.ring.erase_due(now)
            if gone:
                self.rt.log.info("erased %d DM key(s) no DM can still need", len(gone))
                changed = True
            if changed:
                save_ring(self.path, self.ring)
            delay = self.ring.next_deadline(self.clock()) - self.clock()
            if self.ring.renew_due(self.clock()):
                delay = retry
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), max(0.05, min(delay, 3600)))

    async def revoked(self, dkey: bytes, at_ms: int) -> None:
        """Our revocation of ``dkey`` is out: never sign with it again; certify a fresh key
        if it was the one in use."""
        self.ring.revoked_now(dkey)
        save_ring(self.path, self.ring)
        self.rt.log.warning("revoked signing key %s from %s", fingerprint(dkey),
                            _when(at_ms / 1000))
        if not self.ring.usable(self.clock()):
            await self.certify()

    def table(self) -> rpc.SigningKeys:
        s, dm = self.ring.signer, self.ring.current
        return rpc.SigningKeys(
            key=s.public.hex() if s.cert else None, not_before=s.not_before,
            not_after=s.not_after, enc_key=dm.public.hex(), enc_since=dm.since,
            old_enc_keys=tuple(k.public.hex() for k in self.ring.dm[1:]),
            revoked=tuple(k.hex() for k in self.ring.revoked))


def load_ring(path: Path, cert_s: int, rotate_s: int, rt: Runtime,
              clock: Callable[[], float] = time.time) -> KeyRing:
    """The router's keys from ``router.keys``; a new ring if there is none. A file that is
    unreadable is set aside (never silently overwritten) and a new ring made: the keys in it
    are short-lived, and a fresh certificate replaces them."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        ring = KeyRing.new(clock(), cert_s=cert_s, rotate_s=rotate_s)
        save_ring(path, ring)
        return ring
    try:
        return KeyRing.load(data, cert_s=cert_s, rotate_s=rotate_s)
    except ValueError as e:
        aside = path.with_name(f"{path.name}.bad-{int(time.time())}")
        os.replace(path, aside)
        rt.log.error("%s: %s; moved to %s, starting with new keys", path, e, aside.name)
        ring = KeyRing.new(clock(), cert_s=cert_s, rotate_s=rotate_s)
        save_ring(path, ring)
        return ring


def save_ring(path: Path, ring: KeyRing) -> None:
    """Atomically, mode 0600, synced: a crash leaves the old ring or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, ring.dump())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
