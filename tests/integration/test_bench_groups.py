"""``python -m bench.groups`` at a small size, simulated part only: its JSON has the figures
the benchmark reports, and they say the group worked (every member read every message, the
removed member read nothing after its removal). Correctness only: no speed is asserted."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.harness import ROOT


def test_bench_groups_sim_small() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.groups", "--sim-only", "--json", "--members", "12",
         "--nodes", "16", "--messages", "20"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    out = json.loads(lines[0])
    assert out["bench"] == "groups"
    assert out["real"] == {"skipped": "--sim-only"}
    sim = out["sim"]
    assert sim["params"]["members"] == 12 and sim["params"]["nodes"] == 16

    steady = sim["steady"]
    for kind in ("group", "room"):
        for key in ("cpu_us_mean", "cpu_us_median", "originated_bytes", "sent_bytes"):
            assert steady[kind][key] > 0
            assert key in steady["ratio"]
    assert steady["group"]["envelopes"] == steady["room"]["envelopes"] == 1
    assert steady["mesh_bytes_per_msg"]["group_flood"] > 0
    assert steady["mesh_bytes_per_msg"]["room_flood"] > 0

    # every steady message reached every member (group) and every node (room)
    d = sim["delivery"]
    assert d["group_delivered_all"] == 20 and d["group_missing_pairs"] == 0
    assert d["room_delivered_all"] == 20 and d["room_missing_pairs"] == 0
    assert d["readers"] == {"group": 11, "room": 15}
    assert steady["group_all_acked"] == 20
    for what in ("group_to_every_member_ms", "room_to_every_node_ms"):
        assert d[what]["p50"] > 0 and d[what]["max"] >= d[what]["p50"]

    # the first message of an epoch seals the sender's chain to every other member
    first = sim["first_in_epoch"]
    assert first["at_start"]["envelopes"] == 1 + 11
    assert first["after_removal"]["envelopes"] == 1 + 10

    # the removal: the op goes to every member and the removed one; the 11 remaining each
    # re-key; the others open every one of those messages, the removed member none,
    # though it stored them
    r = sim["removal"]
    assert r["remove_op"]["envelopes"] == 11
    assert r["rekey_messages"] == 11
    assert r["opened_by_others"] == r["opened_by_others_expected"] == 11 * 10
    assert r["removed_opened"] == 0
    assert r["removed_stored_ciphertexts"] == 11
    assert r["removed_refused"] >= 1
