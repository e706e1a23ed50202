"""``python -m bench.sim --nodes N [--loss P] [--seed S] [--json]``: one simulated mesh.

With ``--json`` it prints one JSON line with at least ``nodes``, ``delivery_room``,
``delivery_dm`` (fractions), ``dup_per_msg_node``, ``idle_bytes_per_node_s``,
``settle_s`` and ``wall_s``; otherwise a table of figures beside their goals.
"""

from __future__ import annotations

import argparse
import json

from .scenario import Options, run
from .topology import TOPOLOGIES

GOALS = [
    ("delivery_room", "room delivery (within the hop limit)", "1.0 (>= 0.999 at 5 % loss)"),
    ("delivery_dm", "DM delivery", "1.0"),
    ("dup_per_msg_node", "duplicates per message per node", "gossipsub ~6 (report)"),
    ("bytes_per_node_per_msg", "bytes sent per node per room message", "report"),
    ("dm_transmissions", "transmissions per DM", "flooding: ~N x degree"),
    ("idle_bytes_per_node_s", "idle bytes per node per second", "<= 1024"),
    ("settle_s", "mesh directory settled after join/leave (s)", "<= 5"),
    ("settle_silent_leave_s", "... after a silent leave, incl. 9 s detection (s)", "report"),
    ("wall_s", "wall time (s)", "report"),
    ("max_rss_kib_per_node", "peak RSS per simulated node (KiB)", "report"),
]


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.sim", description=__doc__)
    p.add_argument("--nodes", type=int, default=200)
    p.add_argument("--topology", choices=TOPOLOGIES, default="random")
    p.add_argument("--degree", type=float, default=6.0)
    p.add_argument("--loss", type=float, default=0.0, help="loss per link, 0..1")
    p.add_argument("--latency-ms", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--per-frame-ms", type=float, default=0.1, help="CPU per frame at a node")
    p.add_argument("--hop-delay-ms", type=float, default=0.0,
                   help="fixed delay through a node (a real node: ~2 ms, bench.mesh latency)")
    p.add_argument("--hop-jitter-ms", type=float, default=0.0,
                   help="plus a uniform random delay up to this (a real node: p99-p50 ~1.6 ms)")
    p.add_argument("--hop-limit", type=int, default=8)
    p.add_argument("--room", type=int, default=50, help="room messages")
    p.add_argument("--gap-ms", type=float, default=20.0, help="between room messages")
    p.add_argument("--dms", type=int, default=50)
    p.add_argument("--idle", type=float, default=3600.0,
                   help="idle seconds measured (at least one profile period)")
    p.add_argument("--churn", type=int, default=2, help="rounds of leave, silent leave, join")
    p.add_argument("--real-signatures", action="store_true",
                   help="sign and verify with Ed25519 (default: counted and skipped)")
    p.add_argument("--flood-dms", action="store_true", help="no path routing (for comparison)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    fig = run(Options(nodes=a.nodes, topology=a.topology, degree=a.degree, loss=a.loss,
                      latency=a.latency_ms / 1000, seed=a.seed, hop_limit=a.hop_limit,
                      room=a.room, dms=a.dms, idle=a.idle, churn=a.churn,
                      real_signatures=a.real_signatures, flood_dms=a.flood_dms,
                      gap=a.gap_ms / 1000, per_frame=a.per_frame_ms / 1000,
                      hop_delay=a.hop_delay_ms / 1000, hop_jitter=a.hop_jitter_ms / 1000))
    if a.json:
        print(json.dumps(fig), flush=True)
        return
    print(f"{a.nodes} nodes, {fig['topology']} (mean degree {fig['mean_degree']}), loss "
          f"{a.loss:g}, seed {a.seed}, signatures {fig['signatures']}")
    for key, label, goal in GOALS:
        print(f"  {label:<52} {fig.get(key)!s:>12}   goal {goal}")


if __name__ == "__main__":
    main()
