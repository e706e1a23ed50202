"""The identity service: the only process that reads the node's secret keys.

On first start it creates ``identity.key`` (mode 0600, created exclusively so
two starts cannot race). Later starts load it, and refuse, with one log line
and exit code 78, a file that is corrupt, not ours, or readable by anyone
else: the key is never silently replaced. Other processes ask it over
``run/identity.sock`` for the public key, for signatures over ``domain || data``
(docs/protocol.md, "identity.*"), and for certificates of the router's delegated
signing keys. Envelopes are signed by the router with a delegated key; the
long-term key signs envelopes only to revoke one (docs/security.md). Requests are handled
synchronously in arrival order, so a pipelining client gets one signature per
request at the speed of libsodium plus one msgpack round trip.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import nacl.bindings
import nacl.exceptions
import nacl.public
import nacl.signing

from tazcom.common import rpc, tables
from tazcom.common.errors import KeyFileError, RemoteProtocolError
from tazcom.common.events import IdentityChanged
from tazcom.common.keyfile import Secrets, format_keyfile, parse_keyfile
from tazcom.common.keys import DOMAIN_CERT, DOMAIN_ENVELOPE, SIGNING_DOMAINS, fingerprint
from tazcom.common.limits import CERT_VALIDITY_MAX, DM_BODY_MAX, SEALED_BOX_MIN

from .runtime import Runtime, run


def load_or_create(path: Path) -> tuple[Secrets, bool]:
    """Read the key file, or create it if absent. Returns (secrets, created)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return _create(path), True
    except OSError as e:
        raise KeyFileError(f"{path}: cannot open ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{path}: is not a regular file")
        if st.st_uid != os.getuid():
            raise KeyFileError(f"{path}: is owned by uid {st.st_uid}, not by us")
        if st.st_mode & 0o077:
            raise KeyFileError(
                f"{path}: has mode {stat.S_IMODE(st.st_mode):04o}; others may read the "
                f"secret key. Check who did, then: chmod 600 {path}")
        data = os.read(fd, 8192)
    finally:
        os.close(fd)
    try:
        return parse_keyfile(data), False
    except KeyFileError as e:
        raise KeyFileError(f"{path}: {e.message}; not replacing it (move it away to "
                           f"start as a new node)") from None


def _create(path: Path) -> Secrets:
    secrets = Secrets(ed25519_seed=os.urandom(32), x25519_secret=os.urandom(32))
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".new")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        os.unlink(tmp)  # left by a start that died half-way; it never held a used key
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, format_keyfile(secrets).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another start won the race: never overwrite a key
    except FileExistsError:
        os.unlink(tmp)
        raise KeyFileError(f"{path}: created concurrently by another process") from None
    os.unlink(tmp)
    return secrets


class Identity:
    """Holds the secrets and answers requests; no I/O."""

    def __init__(self, secrets: Secrets, nickname: str) -> None:
        signing = nacl.signing.SigningKey(secrets.ed25519_seed)
        self._sk = bytes(signing) + bytes(signing.verify_key)  # libsodium's 64-byte form
        self.public = bytes(signing.verify_key)
        self.box_secret = nacl.public.PrivateKey(secrets.x25519_secret)
        self._unseal = nacl.public.SealedBox(self.box_secret)
        self.nickname = nickname
        self.signed = 0
        self.certified = 0
        #: The gateway's mesh clock offset (common/clock.py): certificates are judged by
        #: the same corrected time the router dates them with.
        self.clock_offset = 0.0

    def info(self, _req: rpc.GetIdentity) -> rpc.IdentityInfo:
        return rpc.IdentityInfo(key=self.public.hex(), fingerprint=fingerprint(self.public),
                                nickname=self.nickname,
                                enc_key=bytes(self.box_secret.public_key).hex())

    def set_nickname(self, req: rpc.SetNickname) -> rpc.IdentityInfo:
        from tazcom.common.config import validate_nickname
        from tazcom.common.errors import ConfigError

        try:
            self.nickname = validate_nickname(req.nickname)
        except ConfigError as e:
            raise RemoteProtocolError(e.message, code="bad_nickname") from None
        return self.info(rpc.GetIdentity())

    def open(self, req: rpc.OpenSealed) -> rpc.Opened:
        """Each box's plaintext, or None for one that does not open or that no DM body can
        be: one bad box never fails the others (docs/protocol.md, ``identity.open``)."""
        out: list[bytes | None] = []
        for box in req.boxes:
            if not SEALED_BOX_MIN <= len(box) <= DM_BODY_MAX:
                out.append(None)
                continue
            try:
                out.append(self._unseal.decrypt(box))
            except nacl.exceptions.CryptoError:  # its ValueError and TypeError too
                out.append(None)
        return rpc.Opened(items=tuple(out))

    def _sign(self, domain: bytes, data: bytes) -> bytes:
        if domain not in SIGNING_DOMAINS or domain == DOMAIN_CERT:
            raise RemoteProtocolError(f"refusing to sign for domain {domain!r}",
                                      code="bad_domain")
        if domain == DOMAIN_ENVELOPE:
            self._check_revocation(data)
        self.signed += 1
        return nacl.bindings.crypto_sign(domain + data, self._sk)[:64]

    def _check_revocation(self, data: bytes) -> None:
        """The long-term key signs an envelope only to revoke a delegated key: everything
        else is signed by the router's certified key."""
        from tazcom.common import envelope

        try:
            env = envelope.parse(data, bytes(64))
        except envelope.EnvelopeError as e:
            raise RemoteProtocolError(f"not an envelope: {e.message}", code="bad_domain") \
                from None
        if env.kind != envelope.KIND_REVOKE or env.origin != self.public:
            raise RemoteProtocolError("the long-term key signs only this node's revocations "
                                      "(envelopes are signed by the router's delegated key)",
                                      code="bad_domain")

    def certify(self, req: rpc.Certify) -> rpc.Certificate:
        from tazcom.common import certs

        now = int(time.time() + self.clock_offset)
        if not req.not_before < req.not_after <= req.not_before + CERT_VALIDITY_MAX \
                or req.not_after <= now:
            raise RemoteProtocolError(
                f"a certificate runs 1..{CERT_VALIDITY_MAX} s and ends in the future",
                code="bad_cert")
        try:
            part = certs.signed_part(self.public, req.dkey, req.not_before, req.not_after,
                                     req.purpose)
        except certs.CertError as e:
            raise RemoteProtocolError(e.message, code=e.code) from None
        self.signed += 1
        sig = nacl.bindings.crypto_sign(DOMAIN_CERT + part, self._sk)[:64]
        self.certified += 1
        return rpc.Certificate(cert=certs.encode(req.dkey, req.not_before, req.not_after, sig,
                                                 req.purpose))

    def sign(self, req: rpc.Sign) -> rpc.Signature:
        return rpc.Signature(sig=self._sign(req.domain, req.data))

    def sign_many(self, req: rpc.SignMany) -> rpc.Signatures:
        return rpc.Signatures(sigs=tuple(self._sign(req.domain, d) for d in req.items))


def write_public(path: Path, public: bytes, nickname: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{public.hex()} {fingerprint(public)} {nickname}\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


async def main(rt: Runtime) -> None:
    paths = rt.config.paths
    paths.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    secrets, created = load_or_create(paths.key_file)
    ident = Identity(secrets, rt.config.nickname)
    del secrets
    write_public(paths.public_file, ident.public, ident.nickname)
    if created:
        rt.log.info("created a new identity in %s", paths.key_file)
    rt.serve({
        rpc.GetIdentity: ident.info,
        rpc.Sign: ident.sign,
        rpc.SignMany: ident.sign_many,
        rpc.Certify: ident.certify,
        rpc.OpenSealed: ident.open,
        rpc.SetNickname: lambda req: changed(ident.set_nickname(req)),
    })

    def changed(info: rpc.IdentityInfo) -> rpc.IdentityInfo:
        tmp = paths.nickname_file.with_name("nickname.tmp")
        tmp.write_text(info.nickname + "\n")
        os.replace(tmp, paths.nickname_file)
        write_public(paths.public_file, ident.public, ident.nickname)
        rt.bus.emit(IdentityChanged, key=info.key, nickname=info.nickname)
        rt.log.info("nickname is now %s", info.nickname)
        return info

    clock = None

    def on_clock(_changes: object) -> None:
        ident.clock_offset = tables.clock_offset(clock)

    clock = rt.mirror(tables.CLOCK, on_clock)
    rt.ready(f"key {fingerprint(ident.public)} ({ident.nickname})")
    await asyncio.Event().wait()


if __name__ == "__main__":
    run("identity", main)
