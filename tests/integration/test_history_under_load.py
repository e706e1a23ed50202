"""History through the real store service while a flood is being committed (issue 12).

The writer is ``tests.unit.test_store_reads.write_flood`` (30,000 envelopes in
1,024-row transactions through ``Store``, as the router commits a flood, each batch
followed by one honest message; the flood claims to be 9 minutes ahead) in a process
of its own, with the node's router stopped so that it is the one writer. Meanwhile
``store.history`` is asked of the node's store service, and ``tazcom history --json``
is run: every answer comes within the CLI's 1.5 s and holds the newest honest message
committed before it was asked.
"""

from __future__ import annotations

import json
import multiprocessing
import time

from tazcom.common import rpc
from tests.harness import request
from tests.unit.test_store_reads import BATCH, write_flood

#: The CLI gives the store 1.5 s per attempt.
ANSWER_LIMIT = 1.5


def honest_seen(texts: list[str]) -> int:
    return max((int(t.split()[1]) for t in texts if t.startswith("honest ")), default=0)


def test_history_answers_during_a_flood(make_node) -> None:
    node = make_node("hana").start().wait_up()
    node.ctl("stop", "tazcom:router")  # the flood's writer is the one writer meanwhile
    ctx = multiprocessing.get_context("spawn")
    honest_done = ctx.Value("i", 0)
    writer = ctx.Process(target=write_flood, args=(str(node.home / "store.sqlite"),
                                                   honest_done))
    service: list[float] = []
    cli: list[float] = []
    writer.start()
    try:
        while writer.is_alive():
            k = honest_done.value
            started = time.perf_counter()
            reply = request(node, "store", rpc.StoreHistory(limit=BATCH + 2), timeout=5.0)
            service.append(time.perf_counter() - started)
            assert service[-1] < ANSWER_LIMIT, f"store.history took {service[-1]:.2f} s"
            assert honest_seen([m.text or "" for m in reply.messages]) >= k
            if len(service) % 5 == 1:  # a CLI process now and then (each costs ~0.5 s)
                k = honest_done.value
                started = time.perf_counter()
                proc = node.cli("history", "--json", "--limit", str(BATCH + 2), check=False)
                cli.append(time.perf_counter() - started)
                assert proc.returncode == 0, proc.stderr
                rows = [json.loads(line) for line in proc.stdout.splitlines()]
                assert rows and honest_seen([r["text"] or "" for r in rows]) >= k
    finally:
        writer.join(60)
    assert writer.exitcode == 0
    assert len(service) >= 3 and cli, "too few reads overlapped the flood"
    print(f"store.history during the flood: {len(service)} answers, slowest "
          f"{max(service) * 1000:.0f} ms (limit {ANSWER_LIMIT * 1000:.0f} ms); "
          f"tazcom history --json: {len(cli)} runs, slowest {max(cli) * 1000:.0f} ms")
