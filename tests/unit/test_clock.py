"""The mesh clock (common/clock.py): what a node adds to its own clock, learnt from its
neighbours' hellos, and why one liar never moves it (docs/protocol.md §9, "Clock offset")."""

from __future__ import annotations

import math

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tazcom.common import clock
from tazcom.common.clock import THRESHOLD, TOLERANCE, MeshClock, decide

DAY = 86_400.0
#: A neighbour whose clock is right, as we (right too) measure it: a little network delay.
honest = st.floats(-1.0, 1.0)
#: A lie or a wrong clock: anything from a minute to ten years either way.
lie = st.one_of(st.floats(TOLERANCE * 2, 3650 * DAY), st.floats(-3650 * DAY, -TOLERANCE * 2))


def key(i: int) -> bytes:
    return bytes([i]) * 32


def fed(samples: list[float], *, start: float = 0.0) -> MeshClock:
    c = MeshClock()
    c.estimate = clock.Estimate(start, 0, 0)
    for i, s in enumerate(samples):
        c.sample(key(i), s)
    return c


# -- one liar ------------------------------------------------------------------------------


@given(lie, st.lists(honest, max_size=1), st.permutations(range(2)))
def test_a_single_liar_with_0_or_1_honest_neighbours_never_moves_the_clock(
        liar: float, honest_ones: list[float], order: list[int]) -> None:
    samples = [liar, *honest_ones]
    c = MeshClock()
    for i in order[: len(samples)] if len(samples) == 2 else [0]:
        c.sample(key(i), samples[i])
        assert c.offset == 0.0
    assert c.offset == 0.0


@given(lie, st.lists(honest, min_size=0, max_size=6))
def test_one_liar_never_moves_an_honest_node_whatever_the_honest_count(
        liar: float, honest_ones: list[float]) -> None:
    assert fed([liar, *honest_ones]).offset == 0.0


@given(st.floats(-10 * DAY, 10 * DAY), st.integers(0, 5))
def test_honest_nodes_never_adopt_the_wrong_nodes_clock(wrong: float, honest_count: int) -> None:
    """The node with the wrong clock is, to each honest node, one neighbour among others."""
    assume(abs(wrong) > TOLERANCE)
    c = fed([wrong] + [0.1 * i for i in range(honest_count)])
    assert c.offset == 0.0


# -- the wrong node learns -------------------------------------------------------------------


@given(st.lists(honest, min_size=2, max_size=8), st.sampled_from([3 * DAY, -2 * 3600.0]))
def test_a_node_off_by_days_adopts_the_median_of_its_honest_neighbours(
        jitter: list[float], behind: float) -> None:
    """Three days behind (or two hours ahead): every honest neighbour says ``behind``."""
    c = fed([behind + j for j in jitter])
    expected = sorted(behind + j for j in jitter)
    n = len(expected)
    median = expected[n // 2] if n % 2 else (expected[n // 2 - 1] + expected[n // 2]) / 2
    assert math.isclose(decide(expected)[0], median, abs_tol=1e-6)  # all at once
    # one at a time: adopted from the first two, then kept within the threshold
    assert abs(c.offset - median) < THRESHOLD
    assert c.estimate.neighbours == n and c.estimate.samples == n


def test_three_days_behind_with_two_honest_neighbours_and_one_other_wrong_node() -> None:
    """The integration test's picture: a node 3 days behind, two honest ones, one 2 h ahead.
    Seen from the late node, the honest pair is 3 d ahead, the fast node 3 d 2 h."""
    late = fed([3 * DAY + 0.2, 3 * DAY + 0.4, 3 * DAY + 7200])
    assert math.isclose(late.offset, 3 * DAY + 0.3)
    fast = fed([-7200.1, -7200.3, -7200 - 3 * DAY])
    assert math.isclose(fast.offset, -7200.2)
    for honest_node in ([0.1, -3 * DAY, 7200], [-0.1, -3 * DAY - 0.1, 7200]):
        assert fed(honest_node).offset == 0.0


def test_two_equal_camps_move_nothing() -> None:
    assert decide([3 * DAY, 3 * DAY + 1, -5 * DAY, -5 * DAY + 1]) == (0.0, 0)


def test_two_liars_against_one_honest_neighbour_do_not_move_it() -> None:
    """Our own clock counts: 2 liars against us and one honest neighbour is a tie."""
    assert decide([5000.0, 5000.5, 0.2]) == (0.0, 1)
    assert fed([0.2, 5000.0, 5000.5]).offset == 0.0
    assert fed([5000.0, 5000.5]).offset == 5000.25  # the rule: 2 agreeing outnumber 1


def test_small_offsets_are_not_corrected() -> None:
    assert fed([1.0, 1.5, 1.2]).offset == 0.0
    assert fed([20.0, 25.0, 22.0]).offset == 0.0  # within the tolerance of our own clock


# -- keeping, dropping, steps ---------------------------------------------------------------


def test_an_adopted_offset_is_kept_while_nothing_outnumbers_it() -> None:
    c = fed([3 * DAY, 3 * DAY + 1])
    assert c.offset == 3 * DAY + 0.5
    c.drop(key(0))
    c.drop(key(1))
    assert c.offset == 3 * DAY + 0.5  # every neighbour left: still the best we know
    assert c.estimate.samples == 0
    c.sample(key(7), 12345.0)  # one liar does not move it either
    assert c.offset == 3 * DAY + 0.5
    c.sample(key(8), 0.0)
    c.sample(key(9), 0.5)  # two neighbours agree with our raw clock: 2 > 1
    assert c.offset == 0.0


def test_jitter_within_the_threshold_keeps_the_offset() -> None:
    c = fed([3 * DAY, 3 * DAY + 1])
    before = c.offset
    assert c.sample(key(5), 3 * DAY + 1.5) is not None  # one more neighbour counted
    assert c.offset == before and c.estimate.neighbours == 3


def test_a_step_of_our_own_clock_shifts_samples_and_offset() -> None:
    c = fed([3 * DAY, 3 * DAY])
    c.stepped(3 * DAY)  # the user set the clock right
    assert c.offset == 0.0
    assert set(c.samples.values()) == {0.0}
    c = fed([0.0, 0.0])
    c.stepped(-DAY)  # our clock jumped a day back: the neighbours now say +1 d
    assert c.offset == DAY


@settings(max_examples=300)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=5),
       st.lists(st.sampled_from(["sample", "drop"]), max_size=10))
def test_any_input_yields_a_finite_offset_backed_by_two_neighbours_or_zero(
        values: list[float], ops: list[str]) -> None:
    c = MeshClock()
    for i, v in enumerate(values):
        c.sample(key(i), v)
    for i, op in enumerate(ops):
        if op == "drop":
            c.drop(key(i % 5))
        else:
            c.sample(key(i % 5), 1e12)  # refused: over MAX_OFFSET
    assert math.isfinite(c.offset)
    assert c.offset == 0.0 or c.estimate.neighbours >= 0
    assert all(abs(v) <= clock.MAX_OFFSET for v in c.samples.values())


@given(st.lists(st.floats(-3650 * DAY, 3650 * DAY), max_size=12))
def test_a_move_needs_two_agreeing_neighbours_outnumbering_our_group(samples: list[float]
                                                                     ) -> None:
    offset, _ = decide(samples)
    if offset:
        assert abs(offset) >= THRESHOLD
        agree = [s for s in samples if abs(s - offset) <= 2 * TOLERANCE]
        ours = [s for s in samples if abs(s) <= TOLERANCE]
        assert len(agree) >= 2 and len(agree) > len(ours)


def test_bad_samples_are_ignored() -> None:
    c = MeshClock()
    for bad in (math.nan, math.inf, -math.inf, 4e9, "3", None, True):
        assert c.sample(key(1), bad) is None  # type: ignore[arg-type]
    assert c.samples == {}
    assert c.sample("k", 1.0) is None  # type: ignore[arg-type]


def test_describe() -> None:
    assert clock.describe(3 * DAY + 60) == "3 d 0 h behind the mesh"
    assert clock.describe(-7200.4) == "2 h 0 min ahead of the mesh"
    assert clock.describe(0.0) == "in step with the mesh"
    assert clock.describe(3 * DAY - 0.3) == "3 d 0 h behind the mesh"  # rounded, not cut
    assert clock.describe(-7199.8) == "2 h 0 min ahead of the mesh"
    assert clock.describe(90.4) == "1 min 30 s behind the mesh"
    assert clock.describe(-3.25) == "3.2 s ahead of the mesh"
