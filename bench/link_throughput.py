"""Encrypted frames per second over one link, against plain TCP with the same framing.

One sending and one receiving process on loopback. The link path sends ``app``
messages through ``common.link.Link`` (msgpack, ChaChaPoly, u16 framing) and
the receiver decrypts, decodes and counts them. The plain path sends frames of
the same size (u16 length || the same plaintext) over asyncio TCP and the
receiver splits them with the same FrameDecoder. Goal: the link reaches at
least 0.3 of the plain frames/s for 200-byte payloads.

    python -m bench.link_throughput [--frames N] [--size 200]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import time

from bench.linkpeer import Identity, LinkProtocol
from bench.report import Figure, print_report
from tazcom.common import codec
from tazcom.common.messages import App, app_fields, encode_app, encode_message
from tazcom.common.wire import FrameDecoder, encode_frame

BATCH = 256


class PlainReceiver(asyncio.Protocol):
    def __init__(self, n: int, done: asyncio.Future) -> None:
        self.n, self.done, self.got = n, done, 0
        self.decoder = FrameDecoder()
        self.first = 0.0

    def data_received(self, data: bytes) -> None:
        if not self.got:
            self.first = time.perf_counter()
        for frame in self.decoder.feed(data):
            # the same message decoding the link does
            assert app_fields(codec.unpack(frame[:-16], 1 << 16)) is not None
            self.got += 1
        if self.got >= self.n and not self.done.done():
            self.done.set_result(time.perf_counter() - self.first)


def receiver(kind: str, n: int, port_q: mp.Queue, out: mp.Queue) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()
        if kind == "plain":
            server = await loop.create_server(lambda: PlainReceiver(n, done), "127.0.0.1", 0)
        else:
            state = {"got": 0, "first": 0.0}

            def on_message(_body: bytes) -> None:
                if not state["got"]:
                    state["first"] = time.perf_counter()
                state["got"] += 1
                if state["got"] >= n and not done.done():
                    done.set_result(time.perf_counter() - state["first"])

            ident = Identity("receiver")
            server = await loop.create_server(
                lambda: LinkProtocol(ident.link(False), on_message), "127.0.0.1", 0)
        port_q.put(server.sockets[0].getsockname()[1])
        out.put(await asyncio.wait_for(done, 120))

    asyncio.run(main())


async def send(kind: str, port: int, n: int, size: int) -> None:
    loop = asyncio.get_running_loop()
    body = bytes(size)
    if kind == "plain":
        transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        tag = bytes(16)  # so a plain frame is as long as an encrypted one
        for i in range(0, n, BATCH):
            frames = [encode_frame(encode_app("router", body) + tag)
                      for _ in range(min(BATCH, n - i))]
            transport.write(b"".join(frames))
            while transport.get_write_buffer_size() > 1 << 20:
                await asyncio.sleep(0)
    else:
        ident = Identity("sender")
        transport, proto = await loop.create_connection(
            lambda: LinkProtocol(ident.link(True)), "127.0.0.1", port)
        await proto.verified
        link = proto.link
        for i in range(0, n, BATCH):
            now = time.monotonic()
            for _ in range(min(BATCH, n - i)):
                link.send_app("router", body, now)
            proto.flush()
            while transport.get_write_buffer_size() > 1 << 20:
                await asyncio.sleep(0)
    await asyncio.sleep(0.5)
    transport.close()


def run(kind: str, n: int, size: int) -> float:
    port_q: mp.Queue = mp.Queue()
    out: mp.Queue = mp.Queue()
    proc = mp.Process(target=receiver, args=(kind, n, port_q, out))
    proc.start()
    port = port_q.get(timeout=10)
    asyncio.run(send(kind, port, n, size))
    elapsed = out.get(timeout=120)
    proc.join()
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=200)
    args = ap.parse_args()
    figures = []
    for size in sorted({args.size, 16000}):
        n = args.frames if size <= 1000 else max(2000, args.frames // 20)
        plain = run("plain", n, size)
        link = run("link", n, size)
        frame_bytes = len(encode_message(App(kind="router", body=bytes(size)))) + 18
        figures.append(Figure(f"encrypted frames/s, {size}-byte payloads", link, "fr/s", plain,
                              "plain TCP, same framing", ">= 0.3 x plain" if size == 200
                              else "report", link >= 0.3 * plain if size == 200 else None))
        figures.append(Figure(f"encrypted MB/s, {size}-byte payloads",
                              link * frame_bytes / 1e6, "MB/s", plain * frame_bytes / 1e6,
                              "plain TCP, same framing", "report"))
    print_report("one link on loopback", figures)


if __name__ == "__main__":
    main()
