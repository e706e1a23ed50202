"""Catch-up stays quiet at group scale (issue 16's benchmark found both):

* a bucket of more than ``MAX_IDS`` ids travels as several id lists; each covers its own
  part of the bucket, so the other side sends what is missing, not the whole bucket;
* an envelope that reaches a relay after its recipient's receipt is not held there (it
  would be offered in catch-up for days, and the digests would never match again).
"""

from __future__ import annotations

from tazcom.common import catchup, envelope, routing
from tests.corenet import Frame, Net


def envs_sent(sent: list[tuple[bytes, bytes]]) -> int:
    n = 0
    for _, body in sent:
        msg = routing.decode(body)
        if isinstance(msg, routing.Envs):
            n += len(msg.entries)
    return n


def test_id_lists_end_with_a_list_that_is_not_full() -> None:
    ids = [i.to_bytes(16, "big") for i in range(10)]
    assert catchup.id_lists(ids, 4) == [ids[:4], ids[4:8], ids[8:]]
    assert catchup.id_lists(ids[:8], 4) == [ids[:4], ids[4:8], []]
    assert catchup.id_lists([], 4) == [[]]


def test_cursor_gives_each_list_its_part_of_the_bucket() -> None:
    ids = [i.to_bytes(16, "big") for i in range(10)]
    cur = catchup.IdCursor(4)
    link = b"L" * 32
    assert cur.span(link, 1, ids[:4]) == (None, ids[3])
    assert cur.span(link, 1, ids[4:8]) == (ids[3], ids[7])
    assert cur.span(link, 1, ids[8:]) == (ids[7], None)
    # the next round starts from the beginning again
    assert cur.span(link, 1, ids[:4]) == (None, ids[3])
    assert cur.span(link, 1, []) == (ids[3], None)
    assert cur.span(link, 1, []) == (None, None)  # nothing at all in that bucket


def test_a_bucket_over_max_ids_sends_only_what_is_missing() -> None:
    net = Net(2)
    a, b = net.nodes
    net.link((a, b))
    net.run_for(1.0)
    total = routing.MAX_IDS + 52
    for i in range(0, total, 100):
        a.post_many([(f"room {j}", None, None) for j in range(i, min(total, i + 100))])
        net.run_for(0.5)
    assert len(b.shown) >= total
    net.unlink((a, b))
    net.run_for(1.0)
    a.post("the one B missed")
    mark = len(a.sent), len(b.sent)
    net.link((a, b))
    net.run_for(5.0)
    assert envs_sent(a.sent[mark[0]:]) <= 5  # the one missed (and profiles), not 2,100
    assert envs_sent(b.sent[mark[1]:]) <= 5
    assert set(a.core.index._items) == set(b.core.index._items)
    assert not net.violations


def test_an_envelope_after_its_receipt_is_not_held_by_the_relay() -> None:
    net = Net(3)
    a, b, c = net.nodes
    net.set_edges([(a, b), (b, c)])
    net.run_for(2.0)
    net.hold = True
    answer = a.post("hello C", to=c)
    [late] = [f for f in net.queue if f.src == a.index and f.dst == b.index
              and isinstance(routing.decode(f.body), routing.Envs)]
    net.queue.remove(late)
    c.receive([Frame(b.index, c.index, late.body, net.mono)])  # C has it another way
    net.deliver()
    net.deliver()  # C's receipt reaches B, and A
    assert a.statuses[answer.message_id] == "delivered"
    b.receive([late])  # A's copy reaches B after the receipt
    net.hold = False
    net.run_for(1.0)
    dm = answer.message_id
    assert dm not in b.core.index
    mark = len(b.sent)
    net.run_for(3 * 61.0)  # three catch-up rounds: quiet
    again = [body for _, body in b.sent[mark:]
             if isinstance(msg := routing.decode(body), routing.Envs)
             and any(envelope.message_id(s) == dm for _, s, _ in msg.entries)]
    assert again == []
    assert set(b.core.index._items) == set(c.core.index._items)
    assert not net.violations
