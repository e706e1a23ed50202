"""The identity key file: created once 0600, never replaced, refused when unsafe or corrupt."""

from __future__ import annotations

import os
import stat

import pytest

from tests.harness import wait_for


def test_key_created_0600_and_kept_across_restarts(make_node) -> None:
    n = make_node("keeper").start().wait_up()
    key_file = n.home / "identity.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    first = n.key
    content = key_file.read_bytes()
    n.ctl("restart", "tazcom:identity")
    n.wait_up()
    n._key = None
    assert n.key == first
    assert key_file.read_bytes() == content


@pytest.mark.parametrize(
    ("damage", "expect"),
    [
        (lambda p: os.chmod(p, 0o644), "has mode 0644"),
        (lambda p: p.write_bytes(p.read_bytes()[:-30]), "is corrupt"),
        (lambda p: p.write_bytes(b"\x00\x01\x02 not a key"), "not a TAZCOM key file"),
    ],
    ids=["world-readable", "truncated", "garbage"],
)
def test_unsafe_or_corrupt_key_stops_identity(make_node, damage, expect) -> None:
    n = make_node("damaged").start().wait_up()
    n.stop()
    key_file = n.home / "identity.key"
    damage(key_file)
    before = key_file.read_bytes()
    n.start()
    wait_for(lambda: "EXITED" in n.ctl("status", "tazcom:identity", check=False).stdout, 20,
             "identity to exit (and stay exited)")
    log = n.logs()["identity.log"]
    lines = [ln for ln in log.splitlines() if "cannot run" in ln]
    assert len(lines) == 1 and expect in lines[0], log
    assert "Traceback" not in log
    assert key_file.read_bytes() == before, "the key file is never replaced"
    proc = n.cli("id", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    # the rest of the node keeps running
    wait_for(lambda: n.status().get("bus", {}).get("state") == "up", 10, "bus up")
