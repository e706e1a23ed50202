"""``python -m bench.sim --nodes N [--loss P] [--seed S] [--json]``: one simulated mesh.

With ``--json`` it prints one JSON line with at least ``nodes``, ``delivery_room``,
``delivery_dm`` (fractions), ``dup_per_msg_node``, ``idle_bytes_per_node_s``,
``settle_s`` and ``wall_s``; otherwise a table of figures beside their goals.

Adversaries (issue 12): ``--flooder`` (one node floods room messages at ``--flood-rate``
per second, and DMs at ``--flood-dm-rate``, for ``--flood-s``), ``--bad-relays P`` (that
fraction of the nodes drop or corrupt each frame they forward, with probability
``--tamper``); delivery is then honest delivery (honest origins to honest nodes), and
the figures add what each honest node stores from the flooder against its quota
(``--quota-origin-kib``), how much of the flood got in, and the bans.
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

#: With adversaries: (key, label, limit, passes); ``passes`` None: reported only.
ADVERSARY_GOALS = [
    ("delivery_room", "honest room delivery (via honest or bad relays)", ">= 0.999",
     lambda v, f: v >= 0.999),
    ("delivery_room_bound", "... at most (pairs with a path of honest relays)", "report",
     None),
    ("delivery_room_first_pass", "... before catch-up", "report", None),
    ("room_pairs_by_catch_up", "... pairs delivered only by catch-up", "report", None),
    ("room_pairs_only_behind_bad_relays", "... pairs reachable only through bad relays",
     "report", None),
    ("delivery_room_honest_paths", "honest room delivery (via honest relays only)",
     ">= 0.999", lambda v, f: v >= 0.999),
    ("delivery_dm", "honest DM delivery", ">= 0.999", lambda v, f: v >= 0.999),
    ("delivery_dm_first_pass", "... before catch-up", "report", None),
    ("dms_only_behind_bad_relays", "... DMs whose every path crosses a bad relay", "report",
     None),
    ("delivery_dm_honest_paths", "honest DM delivery (via honest relays only)", ">= 0.999",
     lambda v, f: v >= 0.999),
    ("flood_bytes_max_node", "most bytes an honest node held from the flooder",
     "<= quota_origin_bytes", lambda v, f: v <= f["quota_origin_bytes"]),
    ("flood_nodes_over_quota", "honest nodes over their quota of the flooder", "0",
     lambda v, f: v == 0),
    ("nodes_over_total_quota", "honest nodes over their total quota", "0",
     lambda v, f: v == 0),
    ("flood_made", "flooder envelopes made", "report", None),
    ("flood_offered", "... copies offered to its neighbours", "report", None),
    ("flood_distinct_accepted", "... distinct ones accepted by any node", "report", None),
    ("flood_accepted_max_node", "... most accepted by one honest node", "report", None),
    ("flood_evicted", "... rows evicted over the quota, mesh-wide", "report", None),
    ("bans_of_flooder", "bans of the flooder's links", "report (> 0)", None),
    ("bans_of_bad_relays", "bans of bad relays' links", "report (> 0)", None),
    ("bans_of_honest", "bans of honest nodes' links", "0", lambda v, f: v == 0),
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
    p.add_argument("--flooder", action="store_true",
                   help="one node (chosen by the seed) floods, its own limits bypassed")
    p.add_argument("--flood-rate", type=float, default=50.0, help="its room messages per s")
    p.add_argument("--flood-dm-rate", type=float, default=0.0, help="its DMs per s")
    p.add_argument("--flood-s", type=float, default=600.0, help="how long it floods")
    p.add_argument("--flood-age", type=float, default=0.0,
                   help="seconds its timestamps are set back (past 300 s: backlog)")
    p.add_argument("--bad-relays", type=float, default=0.0,
                   help="fraction of nodes that drop or corrupt what they forward")
    p.add_argument("--tamper", type=float, default=1.0,
                   help="the fraction of frames a bad relay drops or corrupts")
    p.add_argument("--bad-mode", choices=("either", "drop", "corrupt"), default="either",
                   help="what a bad relay does to a frame: drop or corrupt it at random, or "
                   "always the one")
    p.add_argument("--quota-origin-kib", type=float, default=None,
                   help="storage quota per origin (default: the router's, 16 MiB)")
    p.add_argument("--quota-total-kib", type=float, default=None,
                   help="storage quota in total (default: the router's, 512 MiB)")
    p.add_argument("--catchup-rounds", type=int, default=2,
                   help="catch-up rounds after the room messages and after the DMs")
    p.add_argument("--json", action="store_true")
    p.add_argument("--progress", action="store_true", help="each phase on stderr as it begins")
    a = p.parse_args()
    fig = run(Options(nodes=a.nodes, topology=a.topology, degree=a.degree, loss=a.loss,
                      latency=a.latency_ms / 1000, seed=a.seed, hop_limit=a.hop_limit,
                      room=a.room, dms=a.dms, idle=a.idle, churn=a.churn,
                      real_signatures=a.real_signatures, flood_dms=a.flood_dms,
                      gap=a.gap_ms / 1000, per_frame=a.per_frame_ms / 1000,
                      hop_delay=a.hop_delay_ms / 1000, hop_jitter=a.hop_jitter_ms / 1000,
                      flooder=a.flooder, flood_rate=a.flood_rate,
                      flood_dm_rate=a.flood_dm_rate, flood_s=a.flood_s,
                      flood_age=a.flood_age,
                      bad_relays=a.bad_relays, tamper=a.tamper, bad_mode=a.bad_mode,
                      quota_origin_kib=a.quota_origin_kib,
                      quota_total_kib=a.quota_total_kib, catchup_rounds=a.catchup_rounds,
                      progress=a.progress))
    if a.json:
        print(json.dumps(fig), flush=True)
        return
    print(f"{a.nodes} nodes, {fig['topology']} (mean degree {fig['mean_degree']}), loss "
          f"{a.loss:g}, seed {a.seed}, signatures {fig['signatures']}")
    for key, label, goal in GOALS:
        print(f"  {label:<52} {fig.get(key)!s:>12}   goal {goal}")
    if "bans_of_honest" not in fig:
        return
    print(f"adversaries: flooder n{fig['flooder']} at {a.flood_rate:g} room/s and "
          f"{a.flood_dm_rate:g} DM/s for {a.flood_s:g} s, {fig['bad_relays']} bad relays "
          f"(tamper {a.tamper:g}); quota per origin {fig['quota_origin_bytes']} B")
    for key, label, limit, passes in ADVERSARY_GOALS:
        if key not in fig:
            continue
        v = fig[key]
        verdict = "" if passes is None else ("  ok" if passes(v, fig) else "  MISSED")
        limit = limit.replace("quota_origin_bytes", str(fig["quota_origin_bytes"]))
        print(f"  {label:<52} {v!s:>12}   limit {limit}{verdict}")


if __name__ == "__main__":
    main()
