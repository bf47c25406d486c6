"""The adaptive throttle's core against a naive model that keeps every request."""

from __future__ import annotations

import math

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from dwcp_resilience.core.outcome import Outcome
from dwcp_resilience.policies.throttle_core import REFUSED, ThrottleCore


class ThrottleMachine(RuleBasedStateMachine):
    """Every call is kept as ``[bucket, state]``; the window is recounted from the list. A call in
    flight ("pending") and a neutral one ("gone") are no requests."""

    @initialize(
        k=st.sampled_from([1.0, 1.1, 2.0, 3.5]),
        window=st.sampled_from([1.0, 10.0, 120.0]),
        buckets=st.integers(1, 12),
    )
    def setup(self, k: float, window: float, buckets: int) -> None:
        self.core = ThrottleCore(k, window, buckets)
        self.k, self.n, self.width = k, buckets, window / buckets
        self.requests: list[list[object]] = []  # [bucket, state]
        self.pending: list[tuple[int, list[object]]] = []  # admitted, outcome not recorded
        self.last = -(2**62)
        self.now = 0.0
        self.draws = 0
        self.admitted = self.rejected = self.accepted = self.refused = self.neutral = 0

    def _window(self) -> tuple[int, int]:
        live = [
            r
            for r in self.requests
            if r[0] > self.last - self.n  # type: ignore[operator]
            and r[1] in {"local", "accepted", "refused"}
        ]
        return len(live), sum(r[1] == "accepted" for r in live)

    def _advance(self) -> None:
        self.last = max(self.last, int(self.now // self.width))

    @rule(dt=st.floats(0.0, 30.0), draw=st.floats(0.0, 1.0, exclude_max=True))
    def admit(self, dt: float, draw: float) -> None:
        self.now += dt
        self._advance()
        requests, accepts = self._window()
        p = max(0.0, (requests - self.k * accepts) / (requests + 1))
        drawn: list[float] = []

        def random() -> float:
            drawn.append(draw)
            return draw

        ticket = self.core.try_admit(self.now, random)
        assert len(drawn) == (1 if p > 0 else 0)  # no draw while nothing can be refused
        entry: list[object] = [self.last, "local" if p > 0 and draw < p else "pending"]
        self.requests.append(entry)
        if entry[1] == "local":
            assert ticket == REFUSED
            self.rejected += 1
        else:
            assert ticket == self.last
            self.admitted += 1
            self.pending.append((ticket, entry))

    @precondition(lambda self: bool(self.pending))
    @rule(index=st.integers(0, 100), outcome=st.sampled_from(list(Outcome)))
    def record(self, index: int, outcome: Outcome) -> None:
        ticket, entry = self.pending.pop(index % len(self.pending))
        live = ticket > self.last - self.n
        if outcome is Outcome.SUCCESS:
            self.accepted += 1
            entry[1] = "accepted" if live else "expired"
        elif outcome is Outcome.NEUTRAL:
            self.neutral += 1
            entry[1] = "gone" if live else "expired"
        else:
            self.refused += 1
            entry[1] = "refused" if live else "expired"
        self.core.record(ticket, outcome)

    @rule(dt=st.floats(0.0, 30.0))
    def read(self, dt: float) -> None:
        self.now += dt
        self._advance()
        requests, accepts = self._window()
        expected = max(0.0, (requests - self.k * accepts) / (requests + 1))
        assert self.core.probability(self.now) == pytest.approx(expected)

    @invariant()
    def matches_the_model(self) -> None:
        core = self.core
        requests, accepts = self._window()
        if self.last > -(2**62):
            assert (core.requests, core.accepts) == (requests, accepts)
        assert 0 <= core.accepts <= core.requests
        assert (core.admitted, core.rejected) == (self.admitted, self.rejected)
        assert (core.accepted, core.refused, core.neutral) == (
            self.accepted,
            self.refused,
            self.neutral,
        )
        assert core.accepted + core.refused + core.neutral + len(self.pending) == core.admitted


ThrottleMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=60, deadline=None
)
TestThrottleMachine = ThrottleMachine.TestCase


def test_the_books_formula() -> None:
    core = ThrottleCore(2.0, 120.0, 120)
    for _ in range(10):
        core.record(core.try_admit(1.0, lambda: 0.0), Outcome.SUCCESS)
    assert core.probability(1.0) == 0.0  # 10 requests, 10 accepts: (10 - 20) / 11 < 0
    in_flight = [core.try_admit(2.0, lambda: 0.0) for _ in range(30)]
    assert core.rejected == 0  # calls in flight are no refusals (a draw of 0.0 refuses if p > 0)
    for ticket in in_flight:
        core.record(ticket, Outcome.FAILURE)
    assert core.probability(2.0) == pytest.approx((40 - 2 * 10) / 41)
    assert core.try_admit(2.0, lambda: 0.0) == REFUSED  # refused, and counted as a request
    assert (core.requests, core.rejected) == (41, 1)


def test_one_refusal_in_an_empty_window_gives_one_half() -> None:
    core = ThrottleCore(2.0, 120.0, 120)
    core.record(core.try_admit(0.0, lambda: 0.0), Outcome.FAILURE)
    assert core.probability(0.0) == 0.5


def test_the_window_slides_and_forgets() -> None:
    core = ThrottleCore(2.0, 10.0, 10)
    for _ in range(5):
        core.record(core.try_admit(0.0, lambda: 1.0), Outcome.FAILURE)
    assert core.probability(9.9) > 0
    assert core.probability(10.0) == 0.0 and core.requests == 0  # the bucket of t=0 slid out
    core.clear()
    assert (core.requests, core.admitted) == (0, 5)


def test_an_outcome_after_its_bucket_expired_changes_only_the_lifetime_counters() -> None:
    core = ThrottleCore(2.0, 10.0, 10)
    old, new = core.try_admit(0.0, lambda: 1.0), core.try_admit(0.0, lambda: 1.0)
    core.probability(15.0)
    core.record(old, Outcome.SUCCESS)
    core.record(new, Outcome.FAILURE)
    assert (core.requests, core.accepts, core.accepted, core.refused) == (0, 0, 1, 1)


def test_a_clock_that_steps_back_counts_into_the_newest_bucket() -> None:
    core = ThrottleCore(2.0, 10.0, 10)
    assert core.try_admit(5.0, lambda: 1.0) == 5
    ticket = core.try_admit(1.0, lambda: 1.0)
    assert ticket == 5
    core.record(ticket, Outcome.FAILURE)
    assert core.requests == 1


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((0.9, 120.0, 120), ValueError),
        ((math.nan, 120.0, 120), ValueError),
        ((math.inf, 120.0, 120), ValueError),
        ((True, 120.0, 120), TypeError),
        ((2.0, 0.0, 120), ValueError),
        ((2.0, -1.0, 120), ValueError),
        ((2.0, math.inf, 120), ValueError),
        ((2.0, 120.0, 0), ValueError),
        ((2.0, 120.0, 10_001), ValueError),
        ((2.0, 120.0, 1.5), TypeError),
    ],
)
def test_bad_config(args: tuple[object, object, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        ThrottleCore(*args)  # type: ignore[arg-type]
