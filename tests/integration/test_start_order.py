"""A node's services started in any order, with any delays, still converge.

On a line a - b - c (namespaces), b's six services are stopped and started again
with ``supervisorctl``, one by one in a random order with random delays, 20 times.
Each time, b must list a and c as ``verified``, a and c must list b as
``verified`` and each other as ``mesh`` (through b's router), and b's router must
have both links: whichever service came up first, every mirror ends right.
"""

from __future__ import annotations

import os
import random
import subprocess
import time

import pytest

from tazcom.common import rpc
from tests.cluster import cluster
from tests.harness import CONF, SERVICES, request, tool, wait_for
from tests.netns import why_unavailable
from tests.topology import line

REASON = why_unavailable()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(REASON is not None, reason=REASON or "")]
ROUNDS = 20


def test_services_started_in_random_order_converge_every_time() -> None:
    seed = os.getpid()
    rng = random.Random(seed)
    with cluster(line(3)) as c:
        c.fresh_nodes()
        last = c.launch(gap=0.2)
        assert c.watch(last, timeout=30).converged_after is not None
        b = c.nodes["n01"]
        times = []
        for round_ in range(ROUNDS):
            b.ctl("stop", "tazcom:*")
            order = rng.sample(SERVICES, len(SERVICES))
            delays = [round(rng.uniform(0, 0.6), 2) for _ in order]
            starters = []
            for service, delay in zip(order, delays, strict=True):
                time.sleep(delay)  # noqa: sleep-ok - the random delays are the test's input
                starters.append(b.popen([tool("supervisorctl"), "-c", str(CONF),
                                         "start", f"tazcom:{service}"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            for p in starters:
                p.wait(30)
            started = time.monotonic()
            what = f"round {round_ + 1} (seed {seed}): {list(zip(order, delays, strict=True))}"
            result = c.watch(started, timeout=30)
            assert result.converged_after is not None, f"{what}: still wrong {result.wrong}"
            wait_for(lambda: request(b, "router", rpc.GetRouterStats()).links == 2, 10,
                     f"{what}: b's router to have both links")
            times.append(result.converged_after)
        print("converged after", [round(t, 2) for t in times])
        assert not c.stop()
