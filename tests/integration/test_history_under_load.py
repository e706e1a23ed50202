"""History while the router commits a flood (issues 12 and 13).

The store service was merged into the router, which answers ``store.history`` on
``store.sock`` from the same event loop that commits envelopes. A neighbour on loopback
(tests/flooder.py, four origins) floods the node with room messages as fast as the
node's raised limits (tests.harness.BULK) let it, while the node's own user posts now
and then. Meanwhile ``store.history`` is asked, and ``tazcom history --json`` is run:
every answer comes within the CLI's 1.5 s and holds the user's newest message posted
(committed) before it was asked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from tazcom.common import rpc
from tests.harness import BULK, ROOT, request

#: The CLI gives the store 1.5 s per attempt.
ANSWER_LIMIT = 1.5
FLOOD_SECONDS = 8
CONFIG = BULK + '\n[discovery]\nservice_type = "_tazcomhist._tcp.local."\n'


def honest_seen(texts: list[str]) -> int:
    return max((int(t.split()[1]) for t in texts if t.startswith("honest ")), default=0)


def test_history_answers_during_a_flood(make_node) -> None:
    node = make_node("hana", config=CONFIG).start().wait_up()
    port = request(node, "gateway", rpc.GetGatewayInfo()).port
    flooder = subprocess.Popen(
        [sys.executable, "-m", "tests.flooder", f"127.0.0.1:{port}", "--rate", "3000",
         "--seconds", str(FLOOD_SECONDS), "--sybils", "3"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    service: list[float] = []
    cli: list[float] = []
    posted = 0
    accepted_before = request(node, "router", rpc.GetRouterStats()).accepted
    try:
        while flooder.poll() is None:
            posted += 1
            request(node, "router", rpc.Post(client_id=os.urandom(16), to=None,
                                             text=f"honest {posted}"), timeout=10)
            started = time.perf_counter()
            reply = request(node, "store", rpc.StoreHistory(limit=1000), timeout=5.0)
            service.append(time.perf_counter() - started)
            assert service[-1] < ANSWER_LIMIT, f"store.history took {service[-1]:.2f} s"
            assert honest_seen([m.text or "" for m in reply.messages]) == posted
            if len(service) % 5 == 1:  # a CLI process now and then (each costs ~0.5 s)
                started = time.perf_counter()
                proc = node.cli("history", "--json", "--limit", "1000", check=False)
                cli.append(time.perf_counter() - started)
                assert proc.returncode == 0, proc.stderr
                rows = [json.loads(line) for line in proc.stdout.splitlines()]
                assert rows and honest_seen([r["text"] or "" for r in rows]) == posted
    finally:
        if flooder.poll() is None:
            flooder.kill()
        out, _ = flooder.communicate(timeout=30)
    sent = json.loads(out.strip().splitlines()[-1])["sent"]
    accepted = request(node, "router", rpc.GetRouterStats()).accepted - accepted_before
    assert accepted >= sent // 4, f"the flood was not being committed ({accepted}/{sent})"
    assert len(service) >= 3 and cli, "too few reads overlapped the flood"
    print(f"store.history during a flood of {sent} envelopes ({accepted} committed): "
          f"{len(service)} answers, slowest {max(service) * 1000:.0f} ms (limit "
          f"{ANSWER_LIMIT * 1000:.0f} ms); tazcom history --json: {len(cli)} runs, slowest "
          f"{max(cli) * 1000:.0f} ms")
