"""The store service: ``store.history`` for the CLI and the chat app, read-only.

The router is the one writer of ``store.sqlite`` (services/storedb.py says how the
file is kept); this service opens it with ``Store(path, reader=True)`` and never
creates or changes anything (docs/protocol.md §1 and §4, "Store records").
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any

from tazcom.common import rpc
from tazcom.common.errors import RequestFailed

from .runtime import FatalError, Runtime, run
from .storedb import Store, db_failure


async def _raise(exc: BaseException) -> None:
    raise exc


def _guarded(rt: Runtime, store: Store, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def handler(req: Any) -> Any:
        try:
            return fn(req)
        except sqlite3.DatabaseError as e:
            failure = db_failure(e, store.path)
            if failure is None:
                raise
            if isinstance(failure, FatalError):
                rt.spawn(_raise(failure), "store-fatal")  # the runtime stops with exit 78
            else:
                rt.log.error("%s failed: %s", type(req).OP, e)
            raise RequestFailed(f"store: {e}", code="store_error") from None

    return handler


async def main(rt: Runtime) -> None:
    path = rt.config.paths.store_file
    store = Store(path, reader=True)
    try:
        rt.serve({rpc.StoreHistory: _guarded(rt, store, store.history)})
        rt.ready(f"{path} (read-only; the router writes it)")
        await asyncio.Event().wait()
    finally:
        store.close()


if __name__ == "__main__":
    run("store", main)
