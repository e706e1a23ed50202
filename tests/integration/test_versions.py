"""A node of each envelope version on one link (docs/protocol.md, "Envelope versions").

The old node is this repository at ``OLD`` (the last commit before envelope version 2),
unpacked with ``git archive`` into a temporary directory and run with its own code and
supervisord.conf, on loopback, with an mDNS service type of its own. The new node
reads its version 1 envelopes, never sends it version 2 (its hello lacks ``env/2``), so
the old node refuses nothing and neither side bans the other.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tazcom.common import rpc
from tests.harness import ROOT, BusTap, Node, request, short_tmp, tool, wait_for

#: The last commit whose nodes write envelope version 1 only.
OLD = "2f50f24"
TYPE = """[discovery]
service_type = "_tazcomvers._tcp.local."
"""


def _old_tree() -> tuple[Path | None, str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return None, "not a git checkout"
    got = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", OLD],
                         capture_output=True, timeout=60)
    if got.returncode != 0:
        return None, f"commit {OLD} is not in this clone (shallow?)"
    where = short_tmp("tzold")
    with tarfile.open(fileobj=io.BytesIO(got.stdout)) as tar:
        tar.extractall(where, filter="data")
    for part in ("common", "services", "config"):  # the package layout setup.py maps
        (where / "tazcom" / part).symlink_to(where / part)
    return where, ""


class OldNode(Node):
    """A node running the old tree's code and supervisord.conf."""

    def __init__(self, tree: Path, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.tree = tree
        self.env["PYTHONPATH"] = str(tree)

    def start(self) -> Node:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "tazcom.toml").write_text(self.config or "")
        proc = subprocess.run([tool("supervisord"), "-c", str(self.tree / "supervisord.conf")],
                              env=self.env, cwd=self.tree, capture_output=True, text=True,
                              timeout=30)
        assert proc.returncode == 0, proc.stderr
        return self

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([tool("supervisorctl"), "-c", str(self.tree / "supervisord.conf"),
                               *args], env=self.env, cwd=self.tree, capture_output=True,
                              text=True, timeout=30, check=check)


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Node, Node]]:
    tree, why = _old_tree()
    if tree is None:
        pytest.skip(why)
    root = short_tmp("tzvers")
    old = OldNode(tree, root / "old", "old-v1", config=TYPE)
    new = Node(root / "new", "new-v2", config=TYPE)
    try:
        old.start()
        new.start()
        old.wait_up(40)
        new.wait_up(40)
        new.wait_peer("old-v1", ("verified",), timeout=30)
        old.wait_peer("new-v2", ("verified",), timeout=30)
        yield old, new
    finally:
        new.stop()
        old.stop()
        shutil.rmtree(tree, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


def _say(node: Node, text: str) -> bytes:
    return request(node, "router", rpc.Post(client_id=os.urandom(16), to=None, text=text),
                   timeout=10).message_id


def test_old_nodes_messages_reach_the_new_node(pair: tuple[Node, Node]) -> None:
    old, new = pair
    # each runs its own code: only the new router keeps a delegated key
    assert (new.home / "router.keys").exists() and not (old.home / "router.keys").exists()
    tap = BusTap(new, "chat.message")
    try:
        msg = _say(old, "written as version 1")
        ev = tap.wait("chat.message", lambda e: e.id == msg.hex(), 20)
        assert ev.text == "written as version 1" and ev.origin == old.key
    finally:
        tap.close()


def test_the_new_node_sends_the_old_one_nothing_it_would_refuse(pair: tuple[Node, Node]
                                                                ) -> None:
    old, new = pair
    links = request(new, "gateway", rpc.GetLinks()).links
    assert [link.caps for link in links if link.key == old.key] == [("app/1",)]
    before = request(old, "router", rpc.GetRouterStats())
    for i in range(5):
        _say(new, f"written as version 2, {i}")
    marker = _say(old, "still linked")
    # the old node's next message still arrives: the link stands, nobody was banned
    wait_for(lambda: marker in {m.id for m in request(
        new, "store", rpc.StoreHistory(conv=None, limit=50)).messages}, 20,
        "the old node's message at the new one")
    after = request(old, "router", rpc.GetRouterStats())
    assert after.dropped == before.dropped, "the old node refused nothing"
    assert new.peers()["old-v1"]["state"] == "verified"
    assert old.peers()["new-v2"]["state"] == "verified"
    assert not old.tracebacks() and not new.tracebacks()
