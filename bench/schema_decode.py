"""Cost per message of building, encoding, decoding and validating, against msgspec.

Three messages that cross a node for every chat message: a ``chat.message``
bus event, a link ``app`` message (kind ``router``) and a router ``envs``
message of 10 envelopes. For each: microseconds to build the record
(constructors validate), to encode it, and to decode and validate its bytes
with TAZCOM's own schema; then the same bytes decoded and validated by
msgspec typed structs declared with the same limits, and whether msgspec
encodes the same value to the same bytes (the wire format must not change).

    python -m bench.schema_decode [--seconds 0.3]

Issue 11 measured this before choosing the schema mechanism (docs/perf/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Annotated, Literal

from tazcom.common import codec, messages, routing
from tazcom.common.events import ChatMessage, decode_event, encode_event

KEY = "ab" * 32
TEXT = "hello, mesh " * 8


def per_call(fn: Callable[[], object], seconds: float) -> float:
    """Best microseconds per call over a few rounds of ``seconds`` each."""
    best = float("inf")
    n = 1
    while True:  # calibrate: a round of n calls takes about 10 ms
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t0 > 0.01:
            break
        n *= 2
    rounds = max(3, int(seconds / 0.01))
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def chat_message() -> ChatMessage:
    return ChatMessage(src="router", ts=1_700_000_000.25, id="cd" * 16, kind="room",
                       origin=KEY, to=None, sent=1_700_000_000_250, text=TEXT, own=False,
                       hops=2, status="")


def envs_entries() -> list[tuple[int, bytes, bytes]]:
    return [(i % 8, os.urandom(180), os.urandom(64)) for i in range(10)]


try:
    import msgspec
    from msgspec import Meta
except ImportError:  # the figures then show TAZCOM's alone
    msgspec = None  # type: ignore[assignment]

if msgspec is not None:
    HexKeyS = Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]

    class ChatMessageS(msgspec.Struct, frozen=True, kw_only=True):
        src: Annotated[str, Meta(pattern="^[a-z][a-z0-9_-]{0,31}$")]
        ts: Annotated[float, Meta(ge=0, le=2**40)]
        id: Annotated[str, Meta(pattern="^[0-9a-f]{32}$")]
        kind: Literal["room", "dm"]
        origin: HexKeyS
        to: HexKeyS | None = None
        sent: Annotated[int, Meta(ge=0, le=2**53)]
        text: Annotated[str, Meta(max_length=4096)]
        own: bool = False
        hops: Annotated[int, Meta(ge=0, le=16)] = 0
        status: Literal["", "queued", "sent", "relayed", "delivered", "failed"] = ""
        v: Literal[1]

    class AppS(msgspec.Struct, frozen=True, tag_field="t", tag="app"):
        kind: Annotated[str, Meta(min_length=1, max_length=32)]
        body: Annotated[bytes, Meta(max_length=65455)]
        v: Literal[1]

    EntryS = tuple[Annotated[int, Meta(ge=0, le=16)],
                   Annotated[bytes, Meta(min_length=1, max_length=4992)],
                   Annotated[bytes, Meta(min_length=64, max_length=64)]]
    Id16S = Annotated[bytes, Meta(min_length=16, max_length=16)]

    class EnvsS(msgspec.Struct, frozen=True, array_like=True, tag=0):
        entries: Annotated[list[EntryS], Meta(min_length=1, max_length=64)]

    class CustodyS(msgspec.Struct, frozen=True, array_like=True, tag=1):
        ids: Annotated[list[Id16S], Meta(min_length=1, max_length=1024)]


def msgspec_types() -> dict[str, object] | None:
    if msgspec is None:
        return None
    return {"msgspec": msgspec, "chat": msgspec.msgpack.Decoder(ChatMessageS),
            "app": msgspec.msgpack.Decoder(AppS),
            "router": msgspec.msgpack.Decoder(EnvsS | CustodyS),
            "ChatMessageS": ChatMessageS, "AppS": AppS, "EnvsS": EnvsS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=0.3)
    parser.add_argument("--json", action="store_true", help="print one JSON line only")
    args = parser.parse_args()
    s = args.seconds

    ev = chat_message()
    frames = encode_event(ev)
    body = os.urandom(600)
    app_bytes = messages.encode_app("router", body)
    entries = envs_entries()
    envs_bytes = routing.encode_envs(entries)

    def app_decode() -> object:
        return messages.app_fields(codec.unpack(app_bytes, messages.MAX_PLAINTEXT))

    rows: list[tuple[str, float, float | None]] = []
    ms = msgspec_types()
    same: dict[str, bool] = {}
    if ms is not None:
        enc = ms["msgspec"].msgpack.Encoder()  # type: ignore[attr-defined]
        chat_s = ms["chat"].decode(frames[1])  # type: ignore[attr-defined]
        app_s = ms["app"].decode(app_bytes)  # type: ignore[attr-defined]
        envs_s = ms["router"].decode(envs_bytes)  # type: ignore[attr-defined]
        same = {"chat.message": enc.encode(chat_s) == frames[1],
                "app": enc.encode(app_s) == app_bytes,
                "envs": enc.encode(envs_s) == envs_bytes}
        dec_chat = per_call(lambda: ms["chat"].decode(frames[1]), s)  # type: ignore[attr-defined]
        dec_app = per_call(lambda: ms["app"].decode(app_bytes), s)  # type: ignore[attr-defined]
        dec_envs = per_call(lambda: ms["router"].decode(envs_bytes), s)  # type: ignore[attr-defined]
        new_chat = per_call(lambda: ms["ChatMessageS"](  # type: ignore[operator]
            src="router", ts=1.0, id="cd" * 16, kind="room", origin=KEY, sent=1, text=TEXT,
            hops=2, v=1), s)
    else:
        dec_chat = dec_app = dec_envs = new_chat = None  # type: ignore[assignment]

    rows.append(("chat.message: build", per_call(chat_message, s), new_chat))
    rows.append(("chat.message: encode", per_call(lambda: encode_event(ev), s), None))
    rows.append(("chat.message: decode+validate", per_call(lambda: decode_event(frames), s),
                 dec_chat))
    rows.append(("app (600 B): encode", per_call(lambda: messages.encode_app("router", body), s),
                 None))
    rows.append(("app (600 B): decode+validate", per_call(app_decode, s), dec_app))
    rows.append(("app (600 B): decode+validate, generic",
                 per_call(lambda: messages.decode_message(app_bytes), s), dec_app))
    rows.append(("router envs x10: encode", per_call(lambda: routing.encode_envs(entries), s),
                 None))
    rows.append(("router envs x10: decode+validate",
                 per_call(lambda: routing.decode(envs_bytes), s), dec_envs))

    out = {"bench": "schema decode", "unit": "us per message",
           "rows": [{"name": n, "tazcom_us": round(t, 3),
                     "msgspec_us": None if m is None else round(m, 3)} for n, t, m in rows],
           "msgspec_same_bytes": same}
    if args.json:
        print(json.dumps(out))
        return
    print(f"\nschema: us per message  ({platform.machine()}, Python {sys.version.split()[0]})")
    print(f"{'':40}  {'tazcom':>8}  {'msgspec':>8}")
    for name, t, m in rows:
        print(f"{name:40}  {t:8.2f}  {'-' if m is None else f'{m:.2f}':>8}")
    if same:
        print("msgspec encodes the same bytes: "
              + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in same.items()))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
