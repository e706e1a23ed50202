"""One link between two nodes, as a sans-IO state machine.

Theory of operation
-------------------
Bytes from TCP and the current time go in (``receive_data(data, now)``,
``handle_timer(now)``); events come out, bytes to write accumulate
(``data_to_send()``) and ``next_deadline()`` says when to call back. The
gateway only reads, feeds, writes and re-arms a timer, so every rule below is
tested without sockets (docs/protocol.md, "Links").

1. Handshake: Noise XX (``common.noise``), prologue ``tazcom-link``. Message 1
   (initiator: ``e``) carries no payload. Messages 2 and 3 carry an
   ``IdentityProof``: the sender's Ed25519 key and its signature of
   ``"tazcom-noise-static:" || the sender's Noise static key``. Noise proves the
   sender holds that static key; the signature binds it to the identity. A
   dialer that expected a given key rejects any other (``wrong_key``); a
   proof of another ``v`` than 1 is refused with ``bad_version``. Until the
   handshake completes there is no cipher to say why, so a failed handshake
   ends with a bare TCP close; from then on ``close`` carries the reject code.
2. HELLO: each side's first transport message. Versions are negotiated
   (highest common); none in common closes with ``unsupported_version``.
   While waiting for the peer's HELLO a side answers ``ping`` and takes
   ``pong``, ``rekey`` and ``close``; ``app`` or a second HELLO is ``bad_state``.
   Each HELLO says the sender's wall clock (``clock_ms``, when the shell gave
   ``wall``); ``LinkVerified`` reports it with ours at its arrival, an offset
   sample for the mesh clock (common/clock.py).
3. OPEN: ``app`` messages flow both ways; ``ping``/``pong`` keep the link
   alive; each side rekeys its sending cipher after ``rekey`` signalling.
   Parts: to a peer that said ``part/1`` a bulk message (a file chunk) may go as
   ``part`` messages of at most 16 KiB (``send_part``), so that chat goes between them;
   the receiver joins them, in order, into one ``MessageReceived`` when the ``last``
   arrives. One message is in progress at a time: a ``part`` of another kind meanwhile
   is ``bad_state``, a message over the ``app`` limit ``too_large`` (so what a link
   holds of one is bounded); other messages may come between its parts.
4. CLOSE: a peer's ``close`` ends the link whatever it holds; only a reject
   code (``[a-z][a-z0-9_]{0,47}``) passes as its reason, anything else (or a
   ``close`` whose fields do not decode) is ``bad_close``, the peer's value
   escaped in the detail.

The state table fails closed: input in a state that does not expect it
closes the link. Every decoder meets a plaintext of any msgpack shape with a
reject code (``bad_message`` for a ``t`` that is no str, ``bad_version`` for a
``v`` that is no int...); should one ever raise something else
(``DECODER_FAULTS``), the link closes with ``bad_message`` all the same.
Limits, each closing the link with its reject code:
``handshake_timeout`` (not OPEN within 10 s), ``slow_sender`` (a frame
started but unfinished for 5 s), ``timeout`` (nothing received for 9 s while
OPEN), ``rate_limited`` (more frames per second than allowed), plus every
decoding and crypto failure.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

from . import codec, noise
from .errors import LocalProtocolError, RemoteProtocolError, SchemaError
from .keys import DOMAIN_NOISE_STATIC, fingerprint
from .limits import APP_BODY_MAX
from .messages import (
    MAX_PLAINTEXT,
    App,
    Close,
    Hello,
    IdentityProof,
    Message,
    Part,
    Ping,
    Pong,
    Rekey,
    app_fields,
    decode_message_obj,
    decode_proof,
    encode_app,
    encode_message,
    encode_proof,
    shown,
)
from .wire import FrameDecoder, encode_frame

PROLOGUE = b"tazcom-link"
LINK_VERSIONS = (1, 1)
HANDSHAKE_MAX_FRAME = 1024
MSG1_LEN = noise.DH_LEN
#: The hello cap of a node that takes ``part`` messages: only such a peer is sent them.
PART_CAP = "part/1"
#: The shape of a reject code (docs/protocol.md §8), which a peer's ``close`` reason must have.
REJECT_CODE = re.compile(r"[a-z][a-z0-9_]{0,47}")
#: The reason we report for a peer's ``close`` whose reason is not a reject code, or whose
#: fields do not decode: the link ends all the same (the peer said so).
BAD_CLOSE = "bad_close"
#: What a decoder can raise on a value of a shape it did not expect. Every decoder refuses
#: malformed input with a reject code (tests/unit/test_fuzz_decoders.py); should one ever
#: miss a shape, the link still ends with ``bad_message``, one log line, no traceback.
DECODER_FAULTS = (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError,
                  RecursionError)


class State(enum.Enum):
    INITIATOR_EXPECT_MSG2 = "initiator_expect_msg2"
    RESPONDER_EXPECT_MSG1 = "responder_expect_msg1"
    RESPONDER_EXPECT_MSG3 = "responder_expect_msg3"
    EXPECT_HELLO = "expect_hello"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, kw_only=True)
class LinkLimits:
    handshake_timeout: float = 10.0
    frame_timeout: float = 5.0
    keepalive: float = 3.0
    dead_after: float = 9.0
    rekey_interval: float = 3600.0
    rekey_frames: int = 2**20
    #: Token bucket on received frames: sustained rate and burst.
    frames_per_second: float = 20000.0
    frame_burst: float = 40000.0


# --- events ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkVerified:
    """The peer proved ``key`` and both HELLOs were exchanged."""

    key: bytes
    nickname: str
    version: int
    caps: tuple[str, ...]
    handshake_hash: bytes
    #: The peer's wall clock in its hello (unix s), and ours when the hello arrived (the
    #: ``wall`` given to ``receive_data``): an offset sample (common/clock.py). None when
    #: either was not said.
    peer_clock: float | None = None
    our_clock: float | None = None

    @property
    def clock_offset(self) -> float | None:
        """The peer's clock minus ours (seconds), or None."""
        if self.peer_clock is None or self.our_clock is None:
            return None
        return self.peer_clock - self.our_clock


@dataclass(frozen=True, slots=True)
class MessageReceived:
    kind: str
    body: bytes


@dataclass(frozen=True, slots=True)
class MessageDropped:
    """A well-encrypted message we could not use (unknown type, bad fields); link stays."""

    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class LinkClosed:
    reason: str
    detail: str
    by_peer: bool


Event = LinkVerified | MessageReceived | MessageDropped | LinkClosed


class Link:
    """One TCP link's protocol state. Pure: time arrives as ``now``."""

    def __init__(
        self, *, initiator: bool, identity_key: bytes, static_private: bytes,
        static_sig: bytes, nickname: str, now: float, expected_key: bytes | None = None,
        versions: tuple[int, int] = LINK_VERSIONS, caps: tuple[str, ...] = (),
        limits: LinkLimits = LinkLimits(), protocol_name: str = noise.PROTOCOL_BLAKE2B,
        ephemeral_private: bytes | None = None,
    ) -> None:
        self.initiator = initiator
        self.identity_key = identity_key
        self.expected_key = expected_key
        self.nickname = nickname
        self.versions = versions
        self.caps = caps
        self.limits = limits
        self._proof = encode_proof(IdentityProof(v=1, key=identity_key, sig=static_sig))
        self._hs = noise.HandshakeState(initiator=initiator, static_private=static_private,
                                        prologue=PROLOGUE, protocol_name=protocol_name,
                                        ephemeral_private=ephemeral_private)
        self._decoder = FrameDecoder(HANDSHAKE_MAX_FRAME)
        self._out: list[bytes] = []
        self._send: noise.CipherState | None = None
        self._recv: noise.CipherState | None = None
        self.started = now
        self.last_received = now
        self.last_sent = now
        self._partial_since: float | None = None
        self._tokens = limits.frame_burst
        self._tokens_at = now
        self._sent_since_rekey = 0
        self._rekeyed_at = now
        self._ping_n = 0
        self.peer_key: bytes | None = None
        self.peer_nickname: str | None = None
        #: The peer's hello ``caps``, once open.
        self.peer_caps: tuple[str, ...] = ()
        self.version: int | None = None
        self.close_reason: str | None = None
        self.frames_in = 0
        self.frames_out = 0
        #: Our wall clock (unix s) during the current ``receive_data``, said in our hello.
        self._wall: float | None = None
        #: The message whose parts are arriving: its kind (None: none), the bodies so far
        #: and their length; and the kind of the one we are sending in parts.
        self._part_kind: str | None = None
        self._parts: list[bytes] = []
        self._parts_len = 0
        self._sending_part: str | None = None
        if initiator:
            self.state = State.INITIATOR_EXPECT_MSG2
            self._out.append(encode_frame(self._hs.write_message(b"")))
        else:
            self.state = State.RESPONDER_EXPECT_MSG1

    # -- output ---------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        if not self._out:
            return b""
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        return data

    @property
    def is_open(self) -> bool:
        return self.state is State.OPEN

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def _write(self, msg: Message, now: float) -> None:
        self._write_plain(encode_message(msg), now)

    def _write_plain(self, plaintext: bytes, now: float) -> None:
        send = self._send
        assert send is not None
        if self._sent_since_rekey >= self.limits.rekey_frames \
                or now - self._rekeyed_at >= self.limits.rekey_interval:
            self._sent_since_rekey = 0  # first, so the rekey message itself does not recurse
            self._rekeyed_at = now
            self._write(Rekey(), now)
            send.rekey()
            self._sent_since_rekey = 0
        frame = send.encrypt_with_ad(b"", plaintext)
        self._out.append(len(frame).to_bytes(2, "big") + frame)
        self._sent_since_rekey += 1
        self.frames_out += 1
        self.last_sent = now

    def send_app(self, kind: str, body: bytes, now: float) -> None:
        """Queue an ``app`` message; raises LocalProtocolError (no_link; too_large for a body
        or kind over its limit)."""
        if self.state is not State.OPEN:
            raise LocalProtocolError("link is not open", code="no_link")
        try:
            plaintext = encode_app(kind, body)
        except SchemaError as e:
            raise LocalProtocolError(e.message, code="too_large") from None
        self._write_plain(plaintext, now)

    def send_part(self, kind: str, body: bytes, last: bool, now: float) -> None:
        """Queue one ``part`` of a message of ``kind`` (only to a peer that said ``part/1``;
        nothing else in parts until the ``last``); raises LocalProtocolError like
        ``send_app`` (``bad_state``: a part of another kind while one is in progress)."""
        if self.state is not State.OPEN:
            raise LocalProtocolError("link is not open", code="no_link")
        if self._sending_part is not None and kind != self._sending_part:
            raise LocalProtocolError(f"a part of {kind!r} amid one of {self._sending_part!r}",
                                     code="bad_state")
        try:
            plaintext = encode_message(Part(kind=kind, body=body, last=last))
        except SchemaError as e:
            raise LocalProtocolError(e.message, code="too_large") from None
        self._write_plain(plaintext, now)
        self._sending_part = None if last else kind

    def close(self, reason: str, detail: str, now: float) -> LinkClosed:
        """Close from our side, telling the peer why when we can."""
        if self.state is State.CLOSED:
            return LinkClosed(reason=self.close_reason or reason, detail=detail, by_peer=False)
        if self._send is not None:
            self._write(Close(reason=reason, message=detail), now)
        self.state = State.CLOSED
        self.close_reason = reason
        return LinkClosed(reason=reason, detail=detail, by_peer=False)

    # -- timers ------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        if self.state is State.CLOSED:
            return None
        limits = self.limits
        deadlines = []
        if self.state is not State.OPEN:
            deadlines.append(self.started + limits.handshake_timeout)
        else:
            deadlines.append(self.last_received + limits.dead_after)
            deadlines.append(self.last_sent + limits.keepalive)
        if self._partial_since is not None:
            deadlines.append(self._partial_since + limits.frame_timeout)
        return min(deadlines)

    def handle_timer(self, now: float) -> list[Event]:
        if self.state is State.CLOSED:
            return []
        limits = self.limits
        if self.state is not State.OPEN and now >= self.started + limits.handshake_timeout:
            return [self.close("handshake_timeout",
                               f"no complete handshake within {limits.handshake_timeout:g}s",
                               now)]
        if self._partial_since is not None and now >= self._partial_since + limits.frame_timeout:
            return [self.close("slow_sender",
                               f"a frame took over {limits.frame_timeout:g}s to arrive", now)]
        if self.state is State.OPEN:
            if now >= self.last_received + limits.dead_after:
                return [self.close("timeout", f"nothing received for {limits.dead_after:g}s",
                                   now)]
            if now >= self.last_sent + limits.keepalive:
                self._ping_n += 1
                self._write(Ping(n=self._ping_n), now)
        return []

    # -- input --------------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float, wall: float | None = None) -> list[Event]:
        """Bytes from the peer at ``now`` (monotonic); ``wall`` is our wall clock (unix s),
        sent in our hello and compared with the peer's (None: the time is not said)."""
        if self.state is State.CLOSED or not data:
            return []
        self._wall = wall if isinstance(wall, float | int) and 0 <= wall < 2**43 else None
        events: list[Event] = []
        try:
            frames = self._decoder.feed(data)
            if frames and self.state is State.OPEN:
                self._open_frames(frames, now, events)
            else:
                for i, frame in enumerate(frames):
                    self._frame(frame, now, events)
                    if self.state is State.CLOSED:
                        break
                    if self.state is State.OPEN:  # the rest of this read: the fast path
                        if i + 1 < len(frames):
                            self._open_frames(frames[i + 1 :], now, events)
                        break
        except RemoteProtocolError as e:
            events.append(self.close(e.code, e.message, now))
            return events
        except DECODER_FAULTS as e:
            events.append(self.close("bad_message", f"undecodable input ({type(e).__name__})",
                                     now))
            return events
        self._partial_since = (now if self._partial_since is None else self._partial_since) \
            if self._decoder.partial else None
        return events

    def _open_frames(self, frames: list[bytes], now: float, events: list[Event]) -> None:
        """Frames of an open link; ``app`` messages take a short path (the hot loop)."""
        n = len(frames)
        self.frames_in += n
        self.last_received = now
        allowed = self._take_tokens(n, now)
        decrypt = self._recv.decrypt_with_ad  # type: ignore[union-attr]
        unpack = codec.unpack
        append = events.append
        for i, frame in enumerate(frames):
            if i == allowed:
                raise RemoteProtocolError(
                    f"over {self.limits.frames_per_second:g} frames/s", code="rate_limited")
            obj = unpack(decrypt(b"", frame), MAX_PLAINTEXT)
            app = app_fields(obj)
            if app is not None:
                append(MessageReceived(kind=app[0], body=app[1]))
                continue
            msg = self._decode(obj, State.OPEN, events)
            if msg is not None:
                self._message(msg, now, events)
            if self.state is State.CLOSED:
                return

    def _take_tokens(self, n: int, now: float) -> int:
        """Spend up to ``n`` tokens of the receive bucket; returns how many were available."""
        limits = self.limits
        elapsed = max(0.0, now - self._tokens_at)  # a clock step back refills nothing
        tokens = min(limits.frame_burst, self._tokens + elapsed * limits.frames_per_second)
        self._tokens_at = max(now, self._tokens_at)
        allowed = min(n, int(tokens))
        self._tokens = tokens - allowed
        return allowed

    def _frame(self, frame: bytes, now: float, events: list[Event]) -> None:
        self.frames_in += 1
        self.last_received = now
        state = self.state
        if state is State.OPEN or state is State.EXPECT_HELLO:
            if not self._take_tokens(1, now):
                raise RemoteProtocolError(
                    f"over {self.limits.frames_per_second:g} frames/s", code="rate_limited")
            assert self._recv is not None
            obj = codec.unpack(self._recv.decrypt_with_ad(b"", frame), MAX_PLAINTEXT)
            app = app_fields(obj)
            if app is not None and state is State.OPEN:  # the hot path: one app message
                events.append(MessageReceived(kind=app[0], body=app[1]))
                return
            msg = self._decode(obj, state, events)
            if msg is not None:
                self._message(msg, now, events)
        elif state is State.RESPONDER_EXPECT_MSG1:
            if len(frame) != MSG1_LEN:
                raise RemoteProtocolError(f"message 1 must be {MSG1_LEN} bytes",
                                          code="bad_handshake")
            self._hs.read_message(frame)
            self._out.append(encode_frame(self._hs.write_message(self._proof)))
            self.state = State.RESPONDER_EXPECT_MSG3
        elif state is State.INITIATOR_EXPECT_MSG2:
            payload = self._hs.read_message(frame)
            self._check_proof(payload)
            self._out.append(encode_frame(self._hs.write_message(self._proof)))
            self._open_transport(now)
        elif state is State.RESPONDER_EXPECT_MSG3:
            payload = self._hs.read_message(frame)
            self._check_proof(payload)
            self._open_transport(now)
        else:  # pragma: no cover - CLOSED never reaches here
            raise RemoteProtocolError(f"unexpected frame in {state.value}", code="bad_state")

    def _decode(self, obj: object, state: State, events: list[Event]) -> Message | None:
        """The link message in ``obj``; None when it was dropped (an unknown type or version
        on an open link) or was a ``close`` with invalid fields (the link is closed)."""
        try:
            return decode_message_obj(obj)
        except RemoteProtocolError as e:
            if state is State.OPEN and e.code in ("unknown_type", "bad_version"):
                events.append(MessageDropped(reason=e.code, detail=e.message))
                return None
            if type(obj) is dict and obj.get("t") == Close.TYPE and e.code == "bad_message":
                self._peer_closed(obj.get("reason"), obj.get("message"), events)
                return None
            raise

    def _part(self, msg: Part, events: list[Event]) -> None:
        """One ``part``: the first of a message, or the next of the one in progress."""
        kind = self._part_kind
        if kind is None:
            kind = self._part_kind = msg.kind
        elif msg.kind != kind:
            raise RemoteProtocolError(
                f"a part of kind {shown(msg.kind)} amid a message of {shown(kind)}",
                code="bad_state")
        self._parts_len += len(msg.body)
        if self._parts_len > APP_BODY_MAX:
            raise RemoteProtocolError(f"a message in parts over {APP_BODY_MAX} bytes",
                                      code="too_large")
        self._parts.append(msg.body)
        if msg.last:
            body = b"".join(self._parts)
            self._part_kind, self._parts, self._parts_len = None, [], 0
            events.append(MessageReceived(kind=kind, body=body))

    def _peer_closed(self, reason: object, message: object, events: list[Event]) -> None:
        """The peer closed the link. Only a reject code passes as the reason; anything else
        is ``bad_close``, the peer's value escaped in the detail (docs/protocol.md §9)."""
        if type(reason) is str and REJECT_CODE.fullmatch(reason):
            closed = LinkClosed(reason=reason, detail=message if type(message) is str else "",
                                by_peer=True)
        else:
            closed = LinkClosed(reason=BAD_CLOSE, by_peer=True,
                                detail=f"close reason {shown(reason)}: {shown(message, 120)}")
        self.state = State.CLOSED
        self.close_reason = closed.reason
        events.append(closed)

    def _check_proof(self, payload: bytes) -> None:
        try:
            proof = decode_proof(payload)
        except SchemaError:
            obj = codec.unpack(payload, HANDSHAKE_MAX_FRAME)  # it decoded once: cannot fail
            v = obj.get("v") if isinstance(obj, dict) else None
            if type(v) is int and v != 1:  # a newer proof: say so, not "bad message"
                raise RemoteProtocolError(f"identity proof version {v}; we speak 1",
                                          code="bad_version") from None
            raise
        remote_static = self._hs.remote_static
        assert remote_static is not None
        try:
            nacl.signing.VerifyKey(proof.key).verify(DOMAIN_NOISE_STATIC + remote_static,
                                                     proof.sig)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError,
                nacl.exceptions.TypeError):
            raise RemoteProtocolError("identity signature over the Noise static key is invalid",
                                      code="bad_signature") from None
        if proof.key == self.identity_key:
            raise RemoteProtocolError("the peer claims our own key", code="own_key")
        if self.expected_key is not None and proof.key != self.expected_key:
            raise RemoteProtocolError(
                f"the peer proved key {fingerprint(proof.key)}, not the expected "
                f"{fingerprint(self.expected_key)}", code="wrong_key")
        self.peer_key = proof.key

    def _open_transport(self, now: float) -> None:
        self._send, self._recv = self._hs.split()
        self._decoder.max_frame = noise.MAX_MESSAGE
        self.state = State.EXPECT_HELLO
        self._rekeyed_at = now
        self._write(Hello(versions=self.versions, nickname=self.nickname, caps=self.caps,
                          clock_ms=None if self._wall is None else int(self._wall * 1000)),
                    now)

    def _message(self, msg: Message, now: float, events: list[Event]) -> None:
        if isinstance(msg, App):
            if self.state is not State.OPEN:
                raise RemoteProtocolError("app message before hello", code="bad_state")
            events.append(MessageReceived(kind=msg.kind, body=msg.body))
        elif isinstance(msg, Part):
            if self.state is not State.OPEN:
                raise RemoteProtocolError("part before hello", code="bad_state")
            self._part(msg, events)
        elif isinstance(msg, Ping):
            self._write(Pong(n=msg.n), now)
        elif isinstance(msg, Pong):
            pass
        elif isinstance(msg, Rekey):
            assert self._recv is not None
            self._recv.rekey()
        elif isinstance(msg, Close):
            self._peer_closed(msg.reason, msg.message, events)
        elif isinstance(msg, Hello):
            if self.state is not State.EXPECT_HELLO:
                raise RemoteProtocolError("a second hello", code="bad_state")
            lo, hi = max(self.versions[0], msg.versions[0]), min(self.versions[1],
                                                                 msg.versions[1])
            if lo > hi or msg.versions[0] > msg.versions[1]:
                raise RemoteProtocolError(
                    f"unsupported version: we speak {self.versions[0]}..{self.versions[1]}, "
                    f"the peer {msg.versions[0]}..{msg.versions[1]}",
                    code="unsupported_version")
            self.version = hi
            self.peer_nickname = msg.nickname
            self.peer_caps = tuple(msg.caps)
            self.state = State.OPEN
            assert self.peer_key is not None
            events.append(LinkVerified(
                key=self.peer_key, nickname=msg.nickname, version=hi, caps=msg.caps,
                handshake_hash=self._hs.handshake_hash,
                peer_clock=None if msg.clock_ms is None else msg.clock_ms / 1000,
                our_clock=self._wall))
        else:  # pragma: no cover - every Message subclass is handled above
            raise RemoteProtocolError(f"unexpected {msg.TYPE}", code="bad_state")

