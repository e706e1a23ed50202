"""The identity key file format (``$TAZCOM_HOME/identity.key``, mode 0600).

Text, so a person can see what it is::

    # TAZCOM identity: secret. Never share, copy or paste this file.
    tazcom-identity 1
    ed25519-seed <64 lowercase hex>
    x25519-secret <64 lowercase hex>
    check <16 hex: BLAKE2b-64 of the two secrets>

``parse`` accepts exactly this shape; anything else (a truncated file, a
flipped bit caught by ``check``, a foreign file) is a ``KeyFileError``, and the
identity service stops rather than replace the key: a new key would be a new
node, and every pin of the old one would alert.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .errors import KeyFileError

MAGIC = "tazcom-identity 1"
MAX_FILE_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Secrets:
    ed25519_seed: bytes
    x25519_secret: bytes


def _check(s: Secrets) -> str:
    return hashlib.blake2b(s.ed25519_seed + s.x25519_secret, digest_size=8,
                           person=b"tazcom-keyfile").hexdigest()


def format_keyfile(s: Secrets) -> str:
    return (
        "# TAZCOM identity: secret. Never share, copy or paste this file.\n"
        f"{MAGIC}\n"
        f"ed25519-seed {s.ed25519_seed.hex()}\n"
        f"x25519-secret {s.x25519_secret.hex()}\n"
        f"check {_check(s)}\n"
    )


def parse_keyfile(data: bytes) -> Secrets:
    if len(data) > MAX_FILE_BYTES:
        raise KeyFileError("is too large to be a TAZCOM key file")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError("is not a TAZCOM key file (not text)") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not lines or lines[0] != MAGIC:
        raise KeyFileError("is not a TAZCOM key file (no 'tazcom-identity 1' line)")
    fields: dict[str, str] = {}
    for ln in lines[1:]:
        name, _, value = ln.partition(" ")
        if name in fields:
            raise KeyFileError(f"is corrupt ({name!r} twice)")
        fields[name] = value.strip()
    try:
        secrets = Secrets(ed25519_seed=_hex32(fields, "ed25519-seed"),
                          x25519_secret=_hex32(fields, "x25519-secret"))
    except KeyError as e:
        raise KeyFileError(f"is corrupt (no {e.args[0]!r} line)") from None
    if fields.get("check") != _check(secrets):
        raise KeyFileError("is corrupt (check value does not match)")
    return secrets


def _hex32(fields: dict[str, str], name: str) -> bytes:
    value = fields[name]
    if len(value) != 64 or value != value.lower():
        raise KeyFileError(f"is corrupt ({name} is not 64 lowercase hex digits)")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise KeyFileError(f"is corrupt ({name} is not hex)") from None
