"""File manifests (envelope kind 6) through the router core: posted, sealed, relayed,
held and caught up like a DM (or flooded like a room message), handed to the file service,
acknowledged only when the file service says the file is complete, and never sent to a
neighbour that did not say ``file/1``."""

from __future__ import annotations

import os

import nacl.public

from tazcom.common import envelope, filemanifest, routing
from tazcom.common import routercore as rc
from tazcom.common.envelope import KIND_FILE
from tazcom.common.filetree import CHUNK
from tests.corenet import Net, Node, frame_ids

KEY = bytes(range(32))
FID = bytes(range(100, 132))


def line(n: int = 3) -> Net:
    """Nodes 0 - 1 - ... in a line, delegated keys (files are version 2), settled."""
    net = Net(n, delegated=True)
    net.set_edges([(i, i + 1) for i in range(n - 1)])
    net.run_for(1.0)
    assert all(len(x.core.directory) == n - 1 for x in net.nodes)
    return net


def post_file(node: Node, to: Node | None, size: int = 5 * CHUNK, name: str = "plan.pdf"
              ) -> object:
    spec = rc.PostSpec(os.urandom(16), to.key if to else None, rc.file_line(name, size),
                       rc.FilePost(FID, size, name, "application/pdf",
                                   KEY if to is not None else None))
    [answer] = node.run(node.core.post([spec], node.net.now, node.net.mono))
    node.run(node.core.settle_posts())
    return answer


def status_of(node: Node, msg_id: bytes) -> str:
    return node.core.own_status.get(msg_id, ("delivered", None))[0]


def test_a_dm_file_reaches_its_recipient_sealed_and_is_delivered_only_when_complete() -> None:
    net = line(3)
    a, b, c = net.nodes
    answer = post_file(a, c, size=5 * CHUNK)
    assert not isinstance(answer, rc.PostRefused)
    net.run_for(2.0)
    [m] = c.manifests
    assert m.env.id == answer.message_id and m.env.kind == KIND_FILE
    assert m.secret is not None and m.secret.name == "plan.pdf" and m.secret.key == KEY
    assert m.manifest.file_id == FID and m.manifest.size == 5 * CHUNK
    assert b.manifests == [], "a relay is not offered a DM file"
    # the relay holds it (offered in catch-up until delivered), without a history line,
    # and the name is nowhere in what it relayed
    held = b.store.rows[answer.message_id]
    assert held.held and held.text is None and held.conv is None
    mine = c.store.rows[answer.message_id]
    assert mine.conv == a.key and mine.text == "[file] plan.pdf (239.9 KiB)"  # plaintext
    for _to, body in b.sent:
        assert b"plan.pdf" not in body
    assert status_of(a, answer.message_id) in ("sent", "relayed")
    net.run_for(5.0)
    assert status_of(a, answer.message_id) != "delivered", "no receipt before the file is in"
    c.run(c.core.file_received(answer.message_id, a.key, net.now, net.mono))
    net.run_for(2.0)
    assert status_of(a, answer.message_id) == "delivered"


def test_a_room_file_is_offered_to_everyone_with_its_name_in_clear() -> None:
    net = line(3)
    a, b, c = net.nodes
    answer = post_file(a, None, size=3)
    net.run_for(2.0)
    for node in (b, c):
        [m] = node.manifests
        assert m.env.id == answer.message_id and m.secret is None
        assert m.manifest.meta.name == "plan.pdf"
    assert a.manifests == []


def test_no_file_manifest_goes_to_a_neighbour_without_the_file_capability() -> None:
    net = line(2)
    a, b = net.nodes
    a.core.nofile_links = {b.key}
    answer = post_file(a, None, size=3)
    room = a.post("hello")
    net.run_for(2.0)
    carried = [i for _to, body in a.sent if body[:1] and (i := frame_ids(body))]
    ids = {x for ids in carried for x in ids}
    assert answer.message_id not in ids and room.message_id in ids
    assert b.manifests == []


def test_a_meta_sealed_by_another_origin_is_refused() -> None:
    net = line(2)
    a, b = net.nodes
    # a's envelope around a secret that names someone else as its author
    secret = filemanifest.encode_secret(filemanifest.Secret(
        author=bytes(32), name="x", mime="", key=KEY))
    sealed = nacl.public.SealedBox(nacl.public.PublicKey(b.core.enc_key)).encrypt(secret)
    body = filemanifest.encode(filemanifest.DMManifest(FID, 5 * CHUNK, CHUNK, sealed))
    [env] = a.run(a.core.originate([(KIND_FILE, b.key, body)], net.now))
    b.run(b.core.receive([[a.key, routing.encode_envs([(0, env.signed, env.sig)])]],
                         net.now, net.mono))
    assert b.manifests == []
    assert [r.reason for r in b.rejected] == ["bad_manifest"]


def test_file_posts_are_refused_when_they_cannot_be_sealed_or_are_too_large() -> None:
    net = line(2)
    a, _b = net.nodes
    stranger = Node.__new__(Node)
    stranger.key = bytes(range(5, 37))
    refused = post_file(a, stranger)
    assert isinstance(refused, rc.PostRefused) and refused.code == "no_key"
    spec = rc.PostSpec(os.urandom(16), None, "x", rc.FilePost(FID, 2**40, "big", ""))
    [refused] = a.run(a.core.post([spec], net.now, net.mono))
    assert isinstance(refused, rc.PostRefused) and refused.code == "too_large"


def test_kind_of_reads_the_kind_without_parsing() -> None:
    net = line(2)
    a, _ = net.nodes
    [env] = a.run(a.core.originate([(envelope.KIND_ROOM, None, b"hi")], net.now))
    assert envelope.kind_of(env.signed) == envelope.KIND_ROOM
    assert envelope.kind_of(b"") is None and envelope.kind_of(b"\x92\x02") is None
