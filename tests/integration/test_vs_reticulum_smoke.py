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
    for side in ("tazcom", "reticulum"):
        figures = result[side]
        for key in ("launch_s", "latency_p50_ms", "latency_p99_ms", "relay_cpu_ms",
                    "endpoint_cpu_ms", "relay_pss_mib", "wire_bytes_per_msg"):
            assert figures[key] > 0, (side, key, figures)
    assert result["tazcom"]["delivered_pct"] == 100 and result["tazcom"]["duplicates"] == 0
    assert result["ed25519_verify_per_s"] > 0
    assert "TAZCOM vs Reticulum/LXMF" in proc.stdout
