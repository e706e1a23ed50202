"""bench/vs_reticulum.py in its tiny mode, so the side-by-side benchmark cannot rot."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.harness import ROOT
from tests.netns import why_unavailable

REASON = why_unavailable() or (
    None if importlib.util.find_spec("RNS") and importlib.util.find_spec("LXMF")
    else "Reticulum/LXMF are not installed (pip install -e '.[bench]')")
pytestmark = [pytest.mark.netns, pytest.mark.skipif(REASON is not None, reason=REASON or "")]


def test_tiny_run_measures_both_systems() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.vs_reticulum", "--tiny"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["bench"] == "vs_reticulum" and result["tiny"] is True
    for side in ("tazcom", "reticulum", "reticulum_direct"):
        figures = result[side]
        for key in ("launch_s", "latency_p50_ms", "latency_p99_ms", "rate", "relay_cpu_ms",
                    "endpoint_cpu_ms", "relay_pss_mib", "wire_bytes_per_msg"):
            assert figures[key] > 0, (side, key, figures)
        # every latency sample lands in one bucket of the histogram
        assert sum(figures["latency_hist_ms"].values()) > 0, (side, figures)
    assert result["reticulum"]["method"] == "opportunistic"
    assert result["reticulum_direct"]["method"] == "direct"
    for figures in (result["reticulum"], result["reticulum_direct"]):
        for run in figures["floods"].values():  # bounded floods: no resends, all checked
            assert run["delivered_pct"] == 100 and run["signatures_checked_pct"] == 100, run
    assert set(result["reticulum_best"]) == set(result["tazcom_better"])
    assert result["latency_hist_ms"]["buckets"][0] == "0-1"
    pss = result["tazcom_relay_pss_by_program_mib"]
    assert "supervisord" in pss and "router" in pss, pss
    assert abs(sum(pss.values()) - result["tazcom"]["relay_pss_mib"]) < 0.01
    assert result["tazcom"]["delivered_pct"] == 100 and result["tazcom"]["duplicates"] == 0
    assert result["ed25519_verify_per_s"] > 0 and result["rate_goal_of_ceiling"] == 0.15
    assert "TAZCOM vs Reticulum/LXMF" in proc.stdout
    assert "LXMF direct" in proc.stdout and "messages per bucket" in proc.stdout
