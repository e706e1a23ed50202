"""Request sockets under pipelined load, on the event loop the services use (uvloop)."""

from __future__ import annotations

import asyncio
import os

import uvloop
import zmq.asyncio

from tazcom.common import rpc
from tazcom.services.busclient import RpcClient, RpcServer
from tazcom.services.runtime import load_from_env
from tests.harness import short_tmp


def test_pipelined_async_handlers_never_stall() -> None:
    # Replies sent while the server waits used to swallow ZMQ_FD's edge under uvloop,
    # leaving requests unread until a client timed out.
    home = short_tmp()
    config = load_from_env({**os.environ, "TAZCOM_HOME": str(home)})
    config.paths.run.mkdir(mode=0o700)

    async def main() -> int:
        ctx = zmq.asyncio.Context()

        async def handler(_req: rpc.Post) -> rpc.PostResult:
            await asyncio.sleep(0.0005)  # noqa: sleep-ok - a handler that yields is the case
            return rpc.PostResult(message_id=b"x" * 16, status="queued")

        server = RpcServer(ctx, config, "router", {rpc.Post: handler})
        serving = asyncio.ensure_future(server.serve_forever())
        client = RpcClient(ctx, config, "router")
        sem = asyncio.Semaphore(64)

        async def one() -> None:
            async with sem:
                await client.call(rpc.Post(client_id=os.urandom(16), text="x"), timeout=5,
                                  retries=0)

        try:
            await asyncio.gather(*(one() for _ in range(5000)))
            return server.handled
        finally:
            serving.cancel()
            client.close()
            server.close()
            ctx.destroy(linger=0)

    runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    with runner:
        assert runner.run(main()) == 5000
