"""History reads while the one writer commits a flood (issue 12: "reads must not starve").

A writer process commits 30,000 envelopes through ``Store`` in batches as the router
does (one transaction per batch), each batch followed by one honest message; the
flood claims to be 9 minutes in the future. Meanwhile a reader ``Store`` (as the store
service opens it) reads history: every read answers promptly, and holds the newest
honest message committed before it began.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import time
from pathlib import Path

from tazcom.common import rpc
from tazcom.services.storedb import Store

FLOOD = 30_000
BATCH = 1024
#: Each read answers within this (the CLI gives the store 1.5 s).
READ_LIMIT = 0.5
AHEAD_MS = 9 * 60_000


def _msg(n: int, *, origin: bytes, ts: int, text: str) -> rpc.StoredMessage:
    return rpc.StoredMessage(id=hashlib.blake2b(n.to_bytes(8, "big"), digest_size=16).digest(),
                             kind=1, origin=origin, seq=n, ts=ts, signed=b"s" * 600,
                             sig=bytes(64), text=text)


def write_flood(path: str, honest_done: multiprocessing.Value) -> None:  # type: ignore[valid-type]
    store = Store(path)
    for start in range(0, FLOOD, BATCH):
        now_ms = int(time.time() * 1000)
        store.put(rpc.StorePut(items=tuple(
            _msg(n, origin=b"\xee" * 32, ts=now_ms + AHEAD_MS, text=f"flood {n} " + "x" * 200)
            for n in range(start, min(FLOOD, start + BATCH)))))
        k = start // BATCH + 1
        store.put(rpc.StorePut(items=(_msg(FLOOD + k, origin=b"\xaa" * 32, ts=now_ms,
                                           text=f"honest {k}"),)))
        honest_done.value = k
    store.close()


def test_reads_answer_promptly_and_see_the_latest_honest_row(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    Store(path).close()  # created, as the router does at start
    ctx = multiprocessing.get_context("spawn")
    honest_done = ctx.Value("i", 0)
    writer = ctx.Process(target=write_flood, args=(str(path), honest_done))
    reader = Store(path, reader=True)
    latencies: list[float] = []
    writer.start()
    try:
        while writer.is_alive() or not latencies:
            k = honest_done.value
            started = time.perf_counter()
            got = reader.history(rpc.StoreHistory(limit=BATCH + 2)).messages
            latencies.append(time.perf_counter() - started)
            assert latencies[-1] < READ_LIMIT, f"a read took {latencies[-1]:.3f} s"
            honest = [int(m.text.split()[1]) for m in got if m.text.startswith("honest")]
            if k:
                assert got, "no rows while the flood was being committed"
                assert max(honest, default=0) >= k, (
                    f"honest message {k} was committed, the read saw up to {honest}")
            time.sleep(0.005)  # noqa: sleep-ok - the read rate (reads poll while a flood is written)
    finally:
        writer.join(60)
    assert writer.exitcode == 0
    final = reader.history(rpc.StoreHistory(limit=1)).messages
    assert [m.text for m in final] == [f"honest {-(-FLOOD // BATCH)}"]
    assert len(latencies) > 20, "too few reads overlapped the flood to say anything"
    reader.close()
