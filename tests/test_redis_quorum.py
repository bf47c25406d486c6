"""The fleet breaker's quorum decision, pure (``dwcp_resilience.redis._quorum``): no Redis, no clock.

Who counts, how many are needed, and when a reached quorum trips the local breaker, driven by
Hypothesis against integer oracles and a state machine of members joining, leaving, reporting and
recovering.
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dwcp_resilience.redis import QuorumShare
from dwcp_resilience.redis._quorum import (
    QuorumFollower,
    check_quorum,
    count_reports,
    reports_needed,
)

ME = "me"
IDS = [ME, *(f"n{i}" for i in range(11))]

fractions = st.builds(Fraction, st.integers(1, 12), st.integers(1, 12)).filter(lambda f: 0 < f <= 1)
shares = st.builds(QuorumShare, fractions, st.integers(1, 5))
quorums = st.one_of(st.integers(1, 6), shares)


def least_reaching(fraction: Fraction, minimum: int, others: int) -> int:
    """The oracle: the fewest reports k >= minimum with k / others >= fraction, by counting."""
    k = minimum
    while k * fraction.denominator < fraction.numerator * others:
        k += 1
    return k


# -- reports needed -----------------------------------------------------------------------------


@given(fractions, st.integers(1, 5), st.integers(0, 300))
def test_needed_is_the_fewest_reports_that_reach_the_share(
    fraction: Fraction, minimum: int, others: int
) -> None:
    share = QuorumShare(fraction, minimum)
    assert share.needed(others) == least_reaching(fraction, minimum, others)
    assert reports_needed(share, others) == share.needed(others)


@given(st.integers(1, 50), st.integers(0, 300))
def test_an_absolute_quorum_ignores_the_membership(quorum: int, others: int) -> None:
    assert reports_needed(quorum, others) == quorum


@given(shares, st.integers(0, 299))
def test_the_threshold_never_falls_as_members_join(share: QuorumShare, others: int) -> None:
    assert share.needed(others) <= share.needed(others + 1) <= share.needed(others) + 1


def test_a_float_fraction_is_the_decimal_it_prints_as() -> None:
    """0.28 is 7/25 exactly: 7 of 25 others reach it (a float product would ask for 8)."""
    assert math.ceil(0.28 * 25) == 8  # 7.000000000000001: what exact arithmetic avoids
    share = QuorumShare(0.28, minimum=1)
    assert share.fraction == Fraction(7, 25)
    assert share.needed(25) == 7
    assert QuorumShare(0.1, minimum=1).fraction == Fraction(1, 10)
    assert QuorumShare(Fraction(1, 3), minimum=1).needed(3) == 1
    assert QuorumShare(1, minimum=1).needed(7) == 7  # every other live member
    assert repr(QuorumShare(0.5)) == "QuorumShare(1/2, minimum=2)"
    assert QuorumShare(0.5) == QuorumShare(Fraction(1, 2), 2)


# -- the 4..12 fleets the issue names ----------------------------------------------------------


@pytest.mark.parametrize("size", range(4, 13))
def test_one_sick_member_never_reaches_half_of_the_others_do(size: int) -> None:
    """Every healthy member of a ``size``-member fleet with ``QuorumShare(0.5)``: one report never
    reaches the quorum; reports from half of the members (rounded up) always do."""
    share = QuorumShare(0.5)
    members = [f"n{i}" for i in range(size)]
    for sick in range(size + 1):
        reports = {who: 1000.0 + i for i, who in enumerate(members[:sick])}
        for me in members[sick:]:  # the healthy ones decide; the sick are open already
            count = count_reports(share, me, reports, set(members), size)
            assert count.members == size
            assert count.needed == max(2, math.ceil((size - 1) / 2))
            assert count.reached == (sick >= count.needed), (size, sick)
            if sick <= 1:
                assert not count.reached
            if sick >= math.ceil(size / 2):
                assert count.reached


@given(
    st.builds(QuorumShare, fractions, st.integers(2, 5)),
    st.sampled_from(IDS[1:]),
    st.integers(1, 500),
)
def test_one_report_never_reaches_a_share_with_minimum_two(
    share: QuorumShare, reporter: str, members: int
) -> None:
    """However few members are live (a fleet starting up), one report is not a quorum."""
    count = count_reports(share, ME, {reporter: 5.0}, {reporter}, members)
    assert not count.reached


# -- who counts -----------------------------------------------------------------------------------


@st.composite
def polls(draw: st.DrawFn) -> tuple[set[str], dict[str, float]]:
    """A live membership (this instance in it) and reports, some from members no longer live."""
    live = {ME, *draw(st.sets(st.sampled_from(IDS[1:])))}
    reporters = draw(st.sets(st.sampled_from(IDS)))
    reports = {who: float(draw(st.integers(0, 10_000))) for who in sorted(reporters)}
    return live, reports


@given(quorums, polls())
def test_count_reports_counts_the_other_reporters_that_may_count(
    quorum: int | QuorumShare, poll: tuple[set[str], dict[str, float]]
) -> None:
    live, reports = poll
    count = count_reports(quorum, ME, reports, live & set(reports), len(live))
    others = set(reports) - {ME}
    expected = others & live if isinstance(quorum, QuorumShare) else others
    assert count.reporters == tuple(sorted(expected))
    assert ME not in count.reporters
    assert count.members == len(live)
    assert count.needed == reports_needed(quorum, len(live) - 1)
    assert count.reached == (len(expected) >= count.needed)
    assert count.newest == max((reports[who] for who in expected), default=-math.inf)


@given(shares, polls(), st.sampled_from(IDS[1:]))
def test_more_live_reports_never_undo_a_quorum(
    share: QuorumShare, poll: tuple[set[str], dict[str, float]], newcomer: str
) -> None:
    live, reports = poll
    before = count_reports(share, ME, reports, live & set(reports), len(live))
    live_after = live | {newcomer}
    reports_after = {**reports, newcomer: 20_000.0}
    after = count_reports(
        share, ME, reports_after, live_after & set(reports_after), len(live_after)
    )
    assert len(after.reporters) >= len(before.reporters)
    if before.reached and newcomer in live:
        assert after.reached


@given(shares, polls(), st.sampled_from(IDS[1:]))
def test_a_silent_member_joining_never_makes_a_quorum(
    share: QuorumShare, poll: tuple[set[str], dict[str, float]], newcomer: str
) -> None:
    live, reports = poll
    reports.pop(newcomer, None)
    before = count_reports(share, ME, reports, live & set(reports), len(live))
    live_after = live | {newcomer}
    after = count_reports(share, ME, reports, live_after & set(reports), len(live_after))
    assert after.needed >= before.needed
    if not before.reached:
        assert not after.reached


def test_membership_is_at_least_this_instance() -> None:
    count = count_reports(QuorumShare(0.5, 1), ME, {}, set(), 0)
    assert (count.members, count.needed, count.reached) == (1, 1, False)


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fraction", "minimum", "error"),
    [
        (0, 2, ValueError),
        (0.0, 2, ValueError),
        (-0.5, 2, ValueError),
        (1.5, 2, ValueError),
        (Fraction(3, 2), 2, ValueError),
        (2, 2, ValueError),
        (math.nan, 2, ValueError),
        (math.inf, 2, ValueError),
        (True, 2, TypeError),
        ("0.5", 2, TypeError),
        (None, 2, TypeError),
        (Decimal("0.5"), 2, TypeError),
        (0.5, 0, ValueError),
        (0.5, -1, ValueError),
        (0.5, True, TypeError),
        (0.5, 1.5, TypeError),
    ],
)
def test_a_bad_share_is_refused(fraction: Any, minimum: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=r"fraction|minimum"):
        QuorumShare(fraction, minimum)


@pytest.mark.parametrize(
    ("quorum", "error"),
    [(0, ValueError), (-1, ValueError), (True, TypeError), (0.5, TypeError), ("2", TypeError)],
)
def test_a_bad_quorum_is_refused(quorum: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="quorum"):
        check_quorum(quorum)


def test_a_share_is_frozen() -> None:
    share = QuorumShare(0.5)
    with pytest.raises(AttributeError):
        share.minimum = 1  # type: ignore[misc]


# -- the follower: when a reached quorum trips ----------------------------------------------------


FEW = IDS[1:5]  # few members, so that joins, reports and polls of the same ones meet often


class FollowerMachine(RuleBasedStateMachine):
    """Members join, leave (or expire) and report openings; the local breaker opens and recovers;
    each poll asks the follower whether to trip.

    The oracle keeps every report the follower has acted on or absorbed: a trip must bring a report
    newer than all of them, the breaker must be closed, and the quorum reached; a reached quorum with
    such a report on a closed breaker must trip.
    """

    def __init__(self) -> None:
        super().__init__()
        self.share = QuorumShare(Fraction(1, 2), 2)
        self.follower = QuorumFollower()
        self.live: set[str] = {ME}
        self.reports: dict[str, float] = {}
        self.now = 0.0
        self.closed = True
        self.acted = -math.inf  # the newest report a reached poll saw
        self.trips = 0

    @rule(who=st.sampled_from(FEW))
    def join(self, who: str) -> None:
        self.live.add(who)

    @rule(who=st.sampled_from(FEW))
    def leave_or_expire(self, who: str) -> None:
        self.live.discard(who)

    @rule(who=st.sampled_from(FEW))
    def report(self, who: str) -> None:
        self.now += 1
        self.reports[who] = self.now

    @rule(who=st.sampled_from(FEW))
    def report_leaves_the_window(self, who: str) -> None:
        self.reports.pop(who, None)

    @rule()
    def local_breaker_recovers(self) -> None:
        self.closed = True

    @rule()
    def local_breaker_opens_by_itself(self) -> None:
        self.closed = False

    @rule()
    def poll(self) -> None:
        count = count_reports(
            self.share, ME, self.reports, self.live & set(self.reports), len(self.live)
        )
        fresh = count.reached and count.newest > self.acted
        tripped = self.follower.observe(count, self.closed)
        assert tripped == (fresh and self.closed), (count, self.acted, self.closed)
        if fresh:
            self.acted = count.newest
        if tripped:
            self.trips += 1
            self.closed = False
            assert len(count.reporters) >= max(2, math.ceil((len(self.live) - 1) / 2))
            assert set(count.reporters) <= self.live - {ME}

    @precondition(lambda self: self.closed)
    @rule()
    def the_same_reports_do_not_trip_twice(self) -> None:
        count = count_reports(
            self.share, ME, self.reports, self.live & set(self.reports), len(self.live)
        )
        if count.reached and count.newest <= self.acted:
            assert not self.follower.observe(count, True)

    @invariant()
    def watermark_is_the_newest_acted_on(self) -> None:
        assert self.follower.watermark == self.acted


FollowerMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None
)
TestFollowerMachine = FollowerMachine.TestCase
