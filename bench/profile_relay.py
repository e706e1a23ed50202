"""Profile the relay path: flame graphs of B's router, gateway and store during a flood.

    python -m bench.profile_relay [--messages 3000]

Runs A - B - C in namespaces, attaches py-spy to B's services while A floods
room messages through B, and writes docs/perf/relay-<service>.svg.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from pathlib import Path

from bench.meshlab import lab, post_many
from tests.harness import BusTap, wait_for

OUT = Path(__file__).resolve().parents[1] / "docs" / "perf"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--services", default="router,gateway,store")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    with lab({"a": [0], "b": [0, 1], "c": [1]}) as mesh:
        mesh.start()
        mesh.wait_links([("a", "b"), ("c", "b")])
        mesh.wait_mesh("a", ["c"])
        b, c = mesh.nodes["b"], mesh.nodes["c"]
        spies = []
        for service in args.services.split(","):
            pid = b.pid(service)
            for fmt, ext in (("flamegraph", "svg"), ("raw", "txt")):
                spies.append(subprocess.Popen(
                    [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid),
                     "-o", str(OUT / f"relay-{service}.{ext}"), "-r", "100", "--nonblocking",
                     "-f", fmt], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        tap = BusTap(c, "chat.message")
        texts = [f"profile {i:06d} " + "x" * 183 for i in range(args.messages)]
        ids = asyncio.run(post_many(mesh.nodes["a"], texts))
        want = {i.hex() for i in ids}
        wait_for(lambda: want <= {e.id for e in tap.of("chat.message")}, 120, "all at c",
                 interval=0.2)
        tap.close()
        for spy in spies:
            spy.send_signal(2)
        for spy in spies:
            spy.wait(30)
    print(f"wrote {OUT}/relay-*.svg")


if __name__ == "__main__":
    main()
