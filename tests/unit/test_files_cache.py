"""The relay cache quota (common/filecache.py): least recently used out first, pinned
files never, a file that cannot fit evicts nothing, and the book never exceeds the quota."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tazcom.common.filecache import Admission, FileCache


def fid(n: int) -> bytes:
    return bytes([n]) * 32


def test_admits_within_quota_and_evicts_least_recently_used() -> None:
    c = FileCache(100)
    assert c.admit(fid(1), 40, 1.0) == Admission(True)
    assert c.admit(fid(2), 40, 2.0) == Admission(True)
    c.touch(fid(1), 3.0)  # 1 is now more recent than 2
    assert c.admit(fid(3), 40, 4.0) == Admission(True, (fid(2),))
    assert set(c.files) == {fid(1), fid(3)} and c.used == 80
    assert c.admit(fid(1), 40, 5.0) == Admission(True)  # already cached: touched
    assert c.admit(fid(4), 100, 6.0) == Admission(True, (fid(3), fid(1)))
    assert c.admit(fid(5), 101, 7.0) == Admission(False)


def test_pinned_files_are_never_evicted_and_a_misfit_evicts_nothing() -> None:
    c = FileCache(100)
    c.admit(fid(1), 60, 1.0)
    c.admit(fid(2), 30, 2.0)
    c.pin(fid(1))
    assert c.admit(fid(3), 50, 3.0) == Admission(False)  # 60 pinned + 50 > 100
    assert fid(2) in c and c.used == 90  # nothing was evicted for a refusal
    assert c.admit(fid(3), 40, 3.0) == Admission(True, (fid(2),))
    c.unpin(fid(1))
    c.unpin(fid(1))  # more unpins than pins: harmless
    assert c.admit(fid(4), 60, 4.0) == Admission(True, (fid(1),))


def test_ties_go_to_the_oldest_admission_and_touch_never_goes_back() -> None:
    c = FileCache(20)
    c.admit(fid(1), 10, 5.0)
    c.admit(fid(2), 10, 5.0)
    c.touch(fid(2), 1.0)
    assert c.admit(fid(3), 10, 5.0).evict == (fid(1),)


def test_load_and_trim_at_start_or_after_a_smaller_quota() -> None:
    c = FileCache(100)
    c.load(fid(1), 50, 10.0)
    c.load(fid(2), 50, 5.0)
    c.load(fid(3), 50, 7.0)
    c.load(fid(3), 50, 8.0)  # listed twice: once
    assert c.used == 150
    assert c.trim() == (fid(2),)
    c.quota = 40
    c.pin(fid(1))
    assert c.trim() == (fid(3),)
    assert c.used == 50  # over: only the pinned file is left, and it stays
    c.remove(fid(1))
    c.remove(fid(9))
    assert c.used == 0 and not c.files


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.sampled_from(["admit", "touch", "pin", "unpin", "remove"]),
                          st.integers(0, 7), st.integers(0, 60)), max_size=60))
def test_the_book_holds_under_any_sequence(ops: list[tuple[str, int, int]]) -> None:
    c = FileCache(100)
    pins: dict[bytes, int] = {}
    for now, (op, n, size) in enumerate(ops):
        f = fid(n)
        if op == "admit":
            before = dict(c.files)
            res = c.admit(f, size, float(now))
            assert not any(pins.get(e, 0) for e in res.evict)  # pinned never evicted
            if res.evict:  # the victims were the least recently used unpinned ones
                kept = [e for e in c.files if e != f and not pins.get(e, 0)]
                newest_victim = max(before[e].last_use for e in res.evict)
                assert all(before[k].last_use >= newest_victim for k in kept if k in before)
            if not res.ok:
                assert res.evict == () and c.files.keys() == before.keys()
            for e in res.evict:
                pins.pop(e, None)
        elif op == "touch":
            c.touch(f, float(now))
        elif op == "pin":
            c.pin(f)
            if f in c:
                pins[f] = pins.get(f, 0) + 1
        elif op == "unpin":
            c.unpin(f)
            if pins.get(f):
                pins[f] -= 1
        else:
            c.remove(f)
            pins.pop(f, None)
        assert c.used == sum(e.size for e in c.files.values()) <= c.quota
        assert {k: e.pins for k, e in c.files.items() if e.pins} == {
            k: v for k, v in pins.items() if v}
