"""Meshes of real nodes in network namespaces, for the mesh benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import zmq.asyncio

from tazcom.common import rpc
from tazcom.services.busclient import RpcClient
from tazcom.services.runtime import load_from_env
from tests.harness import BULK, Node, short_tmp, wait_for
from tests.netns import Lan, lan, why_unavailable


class Lab:
    def __init__(self, net: Lan, root: Path) -> None:
        self.net = net
        self.root = root
        self.nodes: dict[str, Node] = {}
        for host in net.links:
            # benchmarks post in bulk: the flood limits raised (they print BULK_NOTE)
            self.nodes[host] = Node(root / host, f"n-{host}", netns=net.ns(host),
                                    interfaces=",".join(net.interfaces[host]), config=BULK)

    def start(self, timeout: float = 120) -> None:
        for node in self.nodes.values():
            node.start()
        for node in self.nodes.values():
            node.wait_up(timeout)

    def wait_links(self, pairs: list[tuple[str, str]], timeout: float = 60) -> None:
        for a, b in pairs:
            self.nodes[a].wait_peer(f"n-{b}", ("verified",), timeout=timeout)

    def wait_mesh(self, host: str, others: list[str], timeout: float = 60) -> None:
        node = self.nodes[host]
        for other in others:
            wait_for(lambda o=other: (p := node.peers().get(f"n-{o}"))
                     and p["state"] in ("verified", "mesh"), timeout, f"{host} to know {other}")


@contextlib.contextmanager
def lab(links: dict[str, list[int]]) -> Iterator[Lab]:
    reason = why_unavailable()
    if reason:
        raise SystemExit(f"skipped: {reason}")
    root = short_tmp("tzb")
    with lan(links) as net:
        the_lab = Lab(net, root)
        try:
            yield the_lab
        finally:
            for node in the_lab.nodes.values():
                node.stop()
            shutil.rmtree(root, ignore_errors=True)


async def post_many(node: Node, texts: list[str], in_flight: int = 64,
                    to: bytes | None = None) -> list[bytes]:
    """Post through the node's own request path (as the CLI and the chat app do)."""
    ctx = zmq.asyncio.Context()
    client = RpcClient(ctx, load_from_env(node.env), "router")
    sem = asyncio.Semaphore(in_flight)
    ids: list[bytes] = [b""] * len(texts)

    async def one(i: int, text: str) -> None:
        async with sem:
            reply = await client.call(rpc.Post(client_id=os.urandom(16), to=to, text=text),
                                      timeout=10, retries=3)
            ids[i] = reply.message_id

    try:
        await asyncio.gather(*(one(i, t) for i, t in enumerate(texts)))
    finally:
        client.close()
        ctx.destroy(linger=0)
    return ids
