"""The mesh simulator (bench.sim) at CI size: the real router cores over 200 virtual nodes.

Figures in virtual time are deterministic for a seed, so the protocol's goals are
asserted here; wall times are only reported (docs/perf/README.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.sim.scenario import Options, run
from tazcom.common.routercore import PROFILE_EVERY


def test_200_nodes_deliver_everything_and_settle() -> None:
    # idle over a whole profile period: every node refreshes its profile once in it
    fig = run(Options(nodes=200, room=30, dms=30, idle=PROFILE_EVERY, churn=1, seed=3))
    assert fig["delivery_room"] == 1.0
    assert fig["delivery_dm"] == 1.0
    assert fig["dm_delivered_status"] == 1.0
    assert fig["shown_twice"] == 0
    assert fig["settle_s"] is not None and fig["settle_s"] <= 5.0
    assert fig["idle_bytes_per_node_s"] <= 1024
    # a DM follows paths: a few transmissions per hop, not one per node and link
    assert fig["dm_transmissions"] <= 4 * max(1.0, fig["dm_path_hops"]) + 2


def test_loss_is_filled_by_catch_up() -> None:
    fig = run(Options(nodes=60, loss=0.05, room=20, dms=20, idle=60, churn=0, seed=5))
    assert fig["delivery_room"] >= 0.999
    assert fig["delivery_dm"] == 1.0
    assert fig["shown_twice"] == 0


def test_flooder_and_bad_relays() -> None:
    """Issue 12's goal at CI size: one node floods (50 room messages and 5 DMs a second, its
    own limits bypassed) and 5 % of the relays drop or corrupt what they forward; honest
    room messages and DMs still arrive, no honest node holds more than its quota from the
    flooder, the flooder and the corrupting relays are banned, and no honest node is."""
    fig = run(Options(nodes=100, room=20, dms=20, idle=30, churn=0, seed=4, flooder=True,
                      flood_dm_rate=5, flood_s=300, bad_relays=0.05, quota_origin_kib=16))
    assert fig["bad_relays"] == 5
    assert fig["delivery_room"] >= 0.999
    assert fig["delivery_room_honest_paths"] >= 0.999
    assert fig["delivery_dm"] >= 0.999
    assert fig["shown_twice"] == 0
    assert fig["flood_nodes_over_quota"] == 0
    assert 0 < fig["flood_bytes_max_node"] <= fig["quota_origin_bytes"]
    assert fig["nodes_over_total_quota"] == 0
    assert fig["flood_distinct_accepted"] < fig["flood_made"] / 100
    assert fig["bans_of_flooder"] > 0
    assert fig["bad_relays_banned"] == fig["bad_relays"]
    assert fig["bans_of_honest"] == 0


def test_flood_at_the_human_limit_is_held_by_the_quota() -> None:
    """A flooder that stays under the per-origin limit (2 room messages a second) is not
    banned, and every node accepts its messages: the quota evicts the oldest of them."""
    fig = run(Options(nodes=60, room=10, dms=10, idle=30, churn=0, seed=6, flooder=True,
                      flood_rate=2, flood_s=120, bad_relays=0.05, quota_origin_kib=8))
    assert fig["delivery_room"] >= 0.999 and fig["delivery_dm"] >= 0.999
    assert fig["flood_evicted"] > 0
    assert fig["flood_nodes_over_quota"] == 0
    assert fig["flood_bytes_max_node"] <= fig["quota_origin_bytes"]
    assert fig["bans_of_flooder"] == 0 and fig["bans_of_honest"] == 0


@pytest.mark.parametrize("adversaries", [[], ["--flooder", "--flood-dm-rate", "5", "--flood-s",
                                               "100", "--bad-relays", "0.05"]])
def test_same_seed_same_figures_and_json_line(adversaries: list[str]) -> None:
    args = [sys.executable, "-m", "bench.sim", "--nodes", "40", "--room", "5", "--dms", "5",
            "--idle", "30", "--churn", "1", "--seed", "9", "--json", *adversaries]
    # different hash seeds: nothing may depend on the order of a set of keys
    a, b = (subprocess.run(args, capture_output=True, text=True, check=True, timeout=300,
                           env={**os.environ, "PYTHONHASHSEED": seed}) for seed in ("1", "2"))
    lines = a.stdout.strip().splitlines()
    assert len(lines) == 1
    fa, fb = json.loads(lines[0]), json.loads(b.stdout)
    for key in ("nodes", "delivery_room", "delivery_dm", "dup_per_msg_node",
                "idle_bytes_per_node_s", "settle_s", "wall_s"):
        assert key in fa
    for f in (fa, fb):
        for key in ("wall_s", "wall_ms_per_node", "max_rss_kib_per_node"):
            f.pop(key)
    assert fa == fb
