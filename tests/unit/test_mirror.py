"""The Clone pattern (common/mirror.py): a mirror ends equal to its owner, always.

The stateful test runs an owner and a mirror over a channel that loses,
duplicates and reorders what the owner publishes, with snapshots taken at any
moment and delivered late, owner restarts, and junk. Whenever the mirror says
it is synced at a version, its table is the owner's table at that version; once
the channel has drained and a heartbeat got through, it equals the owner.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tazcom.common.mirror import Change, Mirror, Numbering, Update

KEYS = st.sampled_from(["a", "b", "c", "d"])
VALUES = st.integers(0, 3)


class Owner:
    def __init__(self, epoch: int = 1000) -> None:
        self.numbering = Numbering(epoch)
        self.table: dict[str, int] = {}
        #: every version the owner went through -> its table then
        self.history: dict[tuple[int, int], dict[str, int]] = {self.numbering.version: {}}

    def change(self, key: str, value: int | None) -> Update[str, int]:
        if value is None:
            self.table.pop(key, None)
        else:
            self.table[key] = value
        seq = self.numbering.next()
        self.history[self.numbering.version] = dict(self.table)
        return Update(self.numbering.epoch, seq, key, value)

    def restart(self, table: dict[str, int]) -> None:
        self.numbering = Numbering(self.numbering.epoch + 1)
        self.table = dict(table)
        self.history[self.numbering.version] = dict(self.table)

    def snapshot(self) -> tuple[int, int, list[tuple[str, int]]]:
        return self.numbering.epoch, self.numbering.seq, sorted(self.table.items())


class MirrorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.owner = Owner()
        self.mirror: Mirror[str, int] = Mirror("t", max_buffered=8)
        self.channel: list[tuple[str, object]] = []  # ("update", Update) / ("beat", version)
        self.in_flight: tuple[int, int, list[tuple[str, int]]] | None = None
        self.shadow: dict[str, int] = {}  # the table rebuilt from the changes reported

    def _changes(self, changes: list[Change[str, int]]) -> None:
        for c in changes:
            assert c.old != c.new
            assert self.shadow.get(c.key) == c.old
            if c.new is None:
                self.shadow.pop(c.key)
            else:
                self.shadow[c.key] = c.new

    # -- the owner ------------------------------------------------------------------------

    @rule(key=KEYS, value=VALUES)
    def owner_sets(self, key: str, value: int) -> None:
        self.channel.append(("update", self.owner.change(key, value)))

    @rule(key=KEYS)
    def owner_deletes(self, key: str) -> None:
        self.channel.append(("update", self.owner.change(key, None)))

    @rule(table=st.dictionaries(KEYS, VALUES, max_size=4))
    def owner_restarts(self, table: dict[str, int]) -> None:
        self.owner.restart(table)

    @rule()
    def owner_heartbeat(self) -> None:
        self.channel.append(("beat", self.owner.numbering.version))

    # -- the channel ----------------------------------------------------------------------

    @precondition(lambda self: self.channel)
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.channel) - 1))  # any order: reordering
        kind, item = self.channel.pop(i)
        if kind == "update":
            self._changes(self.mirror.update(item))  # type: ignore[arg-type]
        else:
            self.mirror.heartbeat(*item)  # type: ignore[misc]

    @precondition(lambda self: self.channel)
    @rule(data=st.data())
    def lose(self, data: st.DataObject) -> None:
        self.channel.pop(data.draw(st.integers(0, len(self.channel) - 1)))

    @precondition(lambda self: self.channel)
    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        self.channel.append(self.channel[data.draw(st.integers(0, len(self.channel) - 1))])

    @rule(epoch=st.integers(1, 2000), seq=st.integers(0, 10**6), key=KEYS, value=VALUES)
    def junk_update(self, epoch: int, seq: int, key: str, value: int) -> None:
        # An update no owner sent. One numbered like a real update yet to come cannot be
        # told from it (a local process that can publish can also lie): not junk, skipped.
        e, s = self.owner.numbering.version
        if (epoch, seq) in self.owner.history or (epoch >= e and seq < s + 10**5):
            return
        self.channel.append(("update", Update(epoch, seq, key, value)))

    @rule(epoch=st.integers(1, 2000), seq=st.integers(0, 10**6))
    def junk_heartbeat(self, epoch: int, seq: int) -> None:
        self.channel.append(("beat", (epoch, seq)))

    # -- snapshots (one request at a time, as the shell does) ---------------------------

    @precondition(lambda self: self.mirror.wanted is not None and self.in_flight is None)
    @rule()
    def request_snapshot(self) -> None:
        self.in_flight = self.owner.snapshot()  # taken now, delivered later

    @precondition(lambda self: self.in_flight is not None)
    @rule()
    def snapshot_arrives(self) -> None:
        assert self.in_flight is not None
        self._changes(self.mirror.snapshot(*self.in_flight))
        self.in_flight = None

    @precondition(lambda self: self.in_flight is not None)
    @rule()
    def snapshot_fails(self) -> None:
        self.in_flight = None
        self.mirror.snapshot_failed()

    @rule(seq=st.integers(0, 5))
    def stale_snapshot(self, seq: int) -> None:
        epoch = self.mirror.epoch - 1
        if epoch >= 1:
            self._changes(self.mirror.snapshot(epoch, seq, [("a", 1)]))

    # -- properties ------------------------------------------------------------------------

    @invariant()
    def synced_means_a_true_past_state(self) -> None:
        m = self.mirror
        if m.synced:
            assert m.items == self.owner.history[(m.epoch, m.seq)]
        assert self.shadow == m.items  # the changes reported rebuild the table exactly

    def teardown(self) -> None:
        # Let everything in flight arrive, in a random order, then one heartbeat that
        # gets through, and answer snapshots while the mirror wants them.
        rng = random.Random(len(self.channel))
        rng.shuffle(self.channel)
        if self.in_flight is not None:
            self.snapshot_arrives()
        for kind, item in self.channel:
            if kind == "update":
                self._changes(self.mirror.update(item))  # type: ignore[arg-type]
            else:
                self.mirror.heartbeat(*item)  # type: ignore[misc]
        self.mirror.heartbeat(*self.owner.numbering.version)
        for _ in range(3):
            if self.mirror.wanted is None:
                break
            self._changes(self.mirror.snapshot(*self.owner.snapshot()))
        assert self.mirror.wanted is None and self.mirror.synced
        assert self.mirror.items == self.owner.table
        assert (self.mirror.epoch, self.mirror.seq) == self.owner.numbering.version


TestMirrorMachine = MirrorMachine.TestCase
TestMirrorMachine.settings = settings(max_examples=300, stateful_step_count=60, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])


# -- the cases the issue saw, spelled out ----------------------------------------------------


def test_a_snapshot_older_than_an_update_already_buffered_does_not_undo_it() -> None:
    """discovery's start-up snapshot of the gateway's links arriving after peer.verified"""
    m: Mirror[int, str] = Mirror("links")
    m.update(Update(7, 1, 10, "handshake"))
    m.update(Update(7, 2, 10, "open"))  # verified, 8 ms after start: before the snapshot
    changes = m.snapshot(7, 1, [(10, "handshake")])  # taken before the link was verified
    assert m.items == {10: "open"} and m.synced and m.seq == 2
    assert changes == [Change(10, None, "open")]


def test_a_router_that_started_blind_learns_its_links_from_the_next_heartbeat() -> None:
    m: Mirror[int, str] = Mirror("links")
    m.snapshot(7, 0, [])  # "0 links" at start
    # the link.up / peer.verified events were lost (the subscription was not active yet)
    m.heartbeat(7, 2)
    assert m.wanted is not None and not m.synced
    m.snapshot(7, 2, [(10, "open")])
    assert m.items == {10: "open"} and m.wanted is None


def test_gap_new_epoch_and_stale_inputs_each_ask_for_a_snapshot() -> None:
    m: Mirror[str, int] = Mirror("t")
    m.snapshot(5, 3, [("a", 1)])
    m.update(Update(5, 5, "a", 2))
    assert "lost" in (m.wanted or "")
    m.snapshot(5, 5, [("a", 2)])
    m.update(Update(6, 1, "a", 3))
    assert "restarted" in (m.wanted or "")
    m.snapshot(6, 1, [("a", 3)])
    m.update(Update(5, 9, "a", 9))  # an older epoch: refused
    assert m.items == {"a": 3} and m.counts["refused"] == 1 and m.wanted is not None
    assert m.snapshot(5, 99, [("a", 9)]) == []  # a snapshot older than what we hold
    assert m.items == {"a": 3} and m.counts["refused"] == 2
    m.snapshot(6, 1, [("a", 3)])
    assert m.synced and m.wanted is None


def test_junk_far_ahead_costs_a_resync_and_is_then_forgotten() -> None:
    m: Mirror[str, int] = Mirror("t")
    m.snapshot(5, 0, [])
    m.update(Update(5, 10**9, "a", 666))
    assert m.snapshot(5, 2, [("a", 1)]) == [Change("a", None, 1)]
    assert m.wanted is not None  # the junk left a gap after the snapshot
    m.snapshot(5, 2, [("a", 1)])
    assert m.synced and m.items == {"a": 1}


def test_duplicates_are_ignored_and_the_buffer_is_bounded() -> None:
    m: Mirror[str, int] = Mirror("t", max_buffered=3)
    for seq in range(1, 10):
        m.update(Update(1, seq, "a", seq))
    assert m.statistics()["buffered"] == 3
    m.snapshot(1, 5, [("a", 5)])
    assert m.wanted is not None  # 6 was dropped from the buffer: a gap
    m.snapshot(1, 9, [("a", 9)])
    m.update(Update(1, 9, "a", 9))
    assert m.counts["ignored"] == 1 and m.items == {"a": 9}


@given(st.lists(st.tuples(KEYS, st.one_of(st.none(), VALUES)), max_size=30),
       st.integers(0, 30), st.randoms())
def test_any_snapshot_point_with_the_updates_around_it_in_any_order(
        ops: list[tuple[str, int | None]], cut: int, rnd: random.Random) -> None:
    owner = Owner()
    updates = [owner.change(k, v) for k, v in ops]
    cut = min(cut, len(updates))
    snap = (owner.numbering.epoch, cut, sorted(owner.history[(owner.numbering.epoch,
                                                               cut)].items()))
    m: Mirror[str, int] = Mirror("t")
    arrival = list(updates)
    rnd.shuffle(arrival)
    at = rnd.randint(0, len(arrival))
    for u in arrival[:at]:
        m.update(u)
    m.snapshot(*snap)
    for u in arrival[at:]:
        m.update(u)
    m.heartbeat(*owner.numbering.version)
    if m.wanted is not None:
        m.snapshot(*owner.snapshot())
    assert m.items == owner.table and m.synced
