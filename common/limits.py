"""Every size limit of the protocol, defined once.

Message definitions (``common.events``, ``rpc``, ``messages``, ``routing``,
``envelope``, ``announce``) take their bounds from here, and so do the
checks outside them; docs/protocol.md states the same numbers and
tests/unit/test_protocol_doc.py holds the two together. A limit derived from
another is written as the derivation, so changing one moves the others.
"""

from __future__ import annotations

# --- keys and ids ----------------------------------------------------------------------------

#: An Ed25519 public key (a node's key), an X25519 key (DMs are sealed to it).
KEY_BYTES = 32
#: An Ed25519 signature.
SIG_BYTES = 64
#: A message id: BLAKE2b-128 of the envelope's signed bytes.
ID_BYTES = 16
#: A catch-up bucket's digest (XOR of its ids).
DIGEST_BYTES = ID_BYTES

# --- people's words --------------------------------------------------------------------------

#: A nickname, in UTF-8 bytes (printable, at least 1).
NICK_MAX = 32
#: A chat text (room message or DM), in UTF-8 bytes.
TEXT_MAX = 4096
#: Free text for people (``detail``, ``alert``, a status ``reason``): longer is cut.
DETAIL_MAX = 200
#: A reject code (``reason`` of ``close``, ``link.down``, ``wire.rejected``...).
CODE_MAX = 48
#: The ``message`` of an error reply to a request: longer is cut.
ERROR_MESSAGE_MAX = 500

# --- link frames (docs/protocol.md §9) -------------------------------------------------------

#: A frame's length prefix is a u16.
FRAME_MAX = 65535
#: The AEAD tag of a Noise transport message.
AEAD_TAG = 16
#: A frame's plaintext after the handshake.
PLAINTEXT_MAX = FRAME_MAX - AEAD_TAG
#: A frame during the Noise handshake.
HANDSHAKE_FRAME_MAX = 1024
#: What an ``app`` message's map takes besides its body (``kind`` at most KIND_MAX).
APP_OVERHEAD = 64
#: The body of an ``app`` message: whatever a service sends a peer, router messages included.
APP_BODY_MAX = PLAINTEXT_MAX - APP_OVERHEAD
#: The name of the service an ``app`` message is for (``router``), and of a capability.
KIND_MAX = 32
#: A ``part`` of a bulk ``app`` message (a file chunk) cut into frames that chat can go
#: between: at 50 Mbit/s, 2.6 ms on the wire (docs/files.md, "Priorities on a link").
PART_BODY_MAX = 16 * 1024

# --- chat envelopes (docs/protocol.md §10) ---------------------------------------------------

#: What a sealed box adds to its plaintext (an ephemeral X25519 key, a Poly1305 tag): the
#: smallest box, and so the smallest DM body.
SEALED_BOX_MIN = KEY_BYTES + 16
#: A DM's body: the sealed box of the text and its author (48 bytes of box, the map).
DM_BODY_MAX = TEXT_MAX + 256
#: A delegated key's certificate ([1, dkey, not_before, not_after, purpose, sig]).
CERT_MAX = 128
#: The longest validity of a certificate, in seconds (one day, and an hour of clock slack).
CERT_VALIDITY_MAX = 25 * 3600
#: Any envelope's body.
ENVELOPE_BODY_MAX = DM_BODY_MAX + 512
#: An envelope's signed bytes (the array around the body).
SIGNED_MAX = ENVELOPE_BODY_MAX + 128 + CERT_MAX
#: Message ids in one receipt.
RECEIPT_IDS_MAX = 256
#: Neighbours listed in one profile.
PROFILE_LINKS_MAX = 256
#: The largest hop limit a node may set (``router.hop_limit``), and so the largest distance.
HOPS_MAX = 16

# --- router messages (docs/protocol.md §10, "Router messages") -------------------------------

#: Envelopes in one ``envs`` message.
ENVS_MAX = 64
#: Ids in one ``custody`` message.
CUSTODY_MAX = 1024
#: Buckets in one catch-up summary.
BUCKETS_MAX = 256
#: Ids in one catch-up ``ids`` message.
IDS_MAX = 2048
#: A router message: the body of an ``app`` message.
ROUTER_MESSAGE_MAX = APP_BODY_MAX

# --- the mDNS record (docs/protocol.md §5) ---------------------------------------------------

#: Entries in a TXT record.
TXT_ENTRIES_MAX = 16
#: Addresses (IPv4 and IPv6) taken from one record.
MDNS_ADDRESSES_MAX = 8
#: A signing time (``t``), unix seconds.
UNIX_TIME_MAX = 2**40

# --- the bus ---------------------------------------------------------------------------------

#: An event's topic, in bytes.
TOPIC_MAX = 64
#: An mDNS instance name (a DNS name).
DNS_NAME_MAX = 255
#: An address as text in an event (``a.b.c.d:port``, or whatever a bad record carried).
ADDRESS_TEXT_MAX = 64
#: Who sent what the router refused (``peer <fingerprint>``), in ``router.dropped``.
SOURCE_MAX = 80
#: Addresses a peer table keeps per peer (``PeerInfo.addresses``).
PEER_ADDRESSES_MAX = 16
