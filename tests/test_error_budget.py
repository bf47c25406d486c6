"""ErrorBudget: Go formulas, the Go bugs fixed, sliding window, burn rates (R59), model checks."""

from __future__ import annotations

import math
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from dwcp_resilience.slo._window import BucketWindows
from dwcp_resilience.slo.error_budget import (
    BurnRateAlert,
    ErrorBudget,
    ErrorBudgetEvent,
    ErrorBudgetExhausted,
    ErrorBudgetRecovered,
)
from dwcp_resilience.testing import FakeClock, RecordingListener

pytestmark = pytest.mark.anyio

MODULE_LEVEL = ErrorBudget("module", slo=0.99, window=60.0, min_requests=1)


def budget(clock: FakeClock, **kw: Any) -> ErrorBudget:
    kw.setdefault("slo", 0.95)
    kw.setdefault("window", 60.0)
    kw.setdefault("min_requests", 100)
    return ErrorBudget("b", clock=clock, **kw)


# --- Go semantics kept ----------------------------------------------------------------------------


def test_all_successes_are_not_exhausted() -> None:
    """Go's test: 100 successes keep the budget intact."""
    b = budget(FakeClock())
    for _ in range(100):
        b.record(True)
    assert b.success_rate == 1.0
    assert not b.exhausted
    assert b.remaining == 1.0
    assert b.consumed == 0.0
    assert b.allowed_failures == 5


def test_ninety_ten_against_slo_95_is_exhausted() -> None:
    """Go's test: 90 successes and 10 failures against SLO 0.95 exhaust the budget."""
    b = budget(FakeClock())
    for i in range(100):
        b.record(i % 10 != 0)
    assert b.success_rate == pytest.approx(0.9)
    assert b.exhausted
    assert b.remaining == 0.0
    assert b.consumed == 1.0
    assert b.allowed_failures == 0


def test_remaining_and_allowed_follow_the_go_formulas() -> None:
    b = budget(FakeClock(), slo=0.9, min_requests=0)
    for i in range(200):
        b.record(i % 50 != 0)  # 4 failures
    # remaining = 1 - failed / (total * (1 - slo)) = 1 - 4 / 20
    assert b.remaining == pytest.approx(0.8)
    assert b.consumed == pytest.approx(0.2)
    assert b.allowed_failures == 20 - 4
    assert b.counts() == (200, 4)


def test_empty_budget_reads() -> None:
    b = budget(FakeClock())
    assert b.success_rate == 1.0
    assert b.remaining == 1.0
    assert b.allowed_failures == 0
    assert b.availability == 1.0
    assert not b.exhausted


# --- the Go bugs ----------------------------------------------------------------------------------


def test_go_bug_first_failure_does_not_exhaust_below_min_volume() -> None:
    """R59 / Go: one failed request out of one exhausted a 99.9 % budget; here not below the
    minimum volume (and it does once the volume guard is lowered to 1)."""
    guarded = ErrorBudget("b", slo=0.999, window=3600.0, clock=FakeClock())
    guarded.record(False)
    assert guarded.success_rate == 0.0
    assert not guarded.exhausted
    assert guarded.statistics().exhausted_count == 0
    unguarded = ErrorBudget("b", slo=0.999, window=3600.0, min_requests=1, clock=FakeClock())
    unguarded.record(False)
    assert unguarded.exhausted


def test_go_bug_slo_one_remaining_is_not_nan() -> None:
    """Go returned NaN for RemainingBudget with slo=1.0."""
    b = budget(FakeClock(), slo=1.0, min_requests=1)
    b.record(True)
    assert b.remaining == 1.0
    assert not b.exhausted
    b.record(False)
    assert b.remaining == 0.0
    assert b.consumed == 1.0
    assert b.allowed_failures == 0
    assert b.exhausted
    assert not math.isnan(b.statistics().remaining)
    assert all(s.long_rate == math.inf for s in b.burn_rates())


def test_go_bug_availability_never_negative() -> None:
    """Go re-added the time since the last success on every failure: 50 failures gave -48.99."""
    clock = FakeClock()
    b = budget(clock)
    b.record(True)
    for _ in range(50):
        clock.advance(1.0)
        b.record(False)
    # down from t=1 (first failure) to t=50, over 50 s since the first request.
    assert b.availability == pytest.approx(1 - 49 / 50)
    clock.advance(50.0)
    b.record(True)  # back up at t=100: down 99 of 100 s
    assert b.availability == pytest.approx(0.01)
    clock.advance(100.0)
    assert b.availability == pytest.approx(1 - 99 / 200)
    assert 0.0 <= b.availability <= 1.0


def test_go_bug_window_rollover_keeps_the_triggering_request() -> None:
    """Go reset its tumbling window *after* counting the request that found it expired: that
    request was lost and total was 0. The sliding window keeps it and the recent history."""
    clock = FakeClock()
    b = budget(clock, window=60.0, bucket=1.0, min_requests=1)
    for _ in range(60):
        b.record(True)
        clock.advance(1.0)  # records at t = 0..59
    clock.advance(1.5)  # t = 61.5: buckets 2..61 are in the window
    b.record(False)
    assert b.counts() == (58 + 1, 1)
    assert b.statistics().lifetime_total == 61


def test_go_bug_callbacks_fire_inline_in_order() -> None:
    """Go fired the callbacks in goroutines (order unspecified) and set them without a lock: here
    they run before record() returns, in registration order, and a raising one is contained."""
    clock = FakeClock()
    seen: list[str] = []

    def first(event: ErrorBudgetEvent) -> None:
        seen.append(f"first:{type(event).__name__}")

    def broken(event: ErrorBudgetEvent) -> None:
        raise RuntimeError("listener bug")

    def last(event: ErrorBudgetEvent) -> None:
        seen.append(f"last:{type(event).__name__}:{event.total}/{event.failed}")

    b = budget(clock, slo=0.9, min_requests=10, listeners=[first, broken, last])
    for _ in range(9):
        b.record(True)
    b.record(False)
    assert seen == []  # 1/10 failed is exactly the SLO, not below it
    b.record(False)
    assert seen == ["first:ErrorBudgetExhausted", "last:ErrorBudgetExhausted:11/2"]
    for _ in range(10):
        b.record(True)
    assert seen[-1] == "last:ErrorBudgetRecovered:20/2"
    stats = b.statistics()
    assert (stats.exhausted_count, stats.recovered_count) == (1, 1)


def test_go_bug_consumed_budget_is_reported() -> None:
    """The Go README used ``ConsumedBudget``, which did not exist; here it is ``1 - remaining``."""
    b = budget(FakeClock(), slo=0.9, min_requests=0)
    for i in range(100):
        b.record(i % 20 != 0)  # 5 failures out of an allowance of 10
    stats = b.statistics()
    assert stats.consumed == pytest.approx(0.5)
    assert stats.remaining == pytest.approx(0.5)
    assert stats.consumed + stats.remaining == pytest.approx(1.0)


# --- sliding window and time-driven transitions -------------------------------------------------


def test_failures_age_out_and_recovery_fires_on_read() -> None:
    clock = FakeClock()
    events: RecordingListener[ErrorBudgetEvent] = RecordingListener()
    b = budget(clock, slo=0.9, min_requests=10, bucket=1.0, listeners=[events])
    for _ in range(10):
        b.record(False)
    assert b.exhausted
    clock.advance(30.0)
    for _ in range(20):
        b.record(True)
    assert b.exhausted  # 10/30 failed
    clock.advance(31.0)  # the failures (t=0) leave; the successes (t=30) stay
    assert not b.exhausted
    assert [type(e) for e in events.events] == [ErrorBudgetExhausted, ErrorBudgetRecovered]
    assert b.counts() == (20, 0)


def test_record_accepts_the_callers_clock_reading() -> None:
    """A manager that just read the clock passes it: the budget does not read its own."""

    def no_clock() -> float:
        raise AssertionError("the budget read its clock")

    b = ErrorBudget("b", slo=0.9, window=60.0, bucket=1.0, min_requests=1, clock=no_clock)
    b.record(False, 0.5)
    b.record(True, 61.0)
    b.record(True, 61.5)
    assert b._ring.counts(0) == (2, 0)


def test_availability_counts_from_the_first_request_after_an_early_read() -> None:
    """A read before the first request (a scrape) used to leave the start unset until the next
    bucket, so downtime in the first bucket did not count."""
    clock = FakeClock()
    budget = ErrorBudget("m", slo=0.9, window=600.0, bucket=60.0, clock=clock)
    assert budget.statistics().availability == 1.0
    budget.record(False)
    clock.advance(10.0)
    assert budget.statistics().availability == 0.0
    budget.record(True)
    clock.advance(10.0)
    assert budget.statistics().availability == pytest.approx(0.5)


def test_a_failure_ends_the_quiet_fast_path() -> None:
    """Past min_requests, not exhausted, not down: successes only count (the fast path). A failure
    ends that, so the next success still closes the downtime."""
    clock = FakeClock()
    budget = ErrorBudget(
        "m", slo=0.5, window=600.0, bucket=60.0, min_requests=2, clock=clock, burn_alerts=()
    )
    for _ in range(5):
        budget.record(True)
    budget.record(False)
    clock.advance(1.0)
    budget.record(True)
    clock.advance(1.0)
    assert budget.statistics().availability == pytest.approx(0.5)
    assert (budget.statistics().total, budget.statistics().failed) == (7, 1)


def test_the_success_that_reaches_min_requests_can_exhaust() -> None:
    """Below min_requests nothing is exhausted; the success that brings the volume up to it is
    checked (the quiet fast path starts only past min_requests)."""
    events: RecordingListener[ErrorBudgetEvent] = RecordingListener()
    budget = ErrorBudget(
        "m", slo=0.8, window=600.0, bucket=60.0, min_requests=5, clock=FakeClock(),
        burn_alerts=(), listeners=[events],
    )  # fmt: skip
    for ok in (False, False, True, True):
        budget.record(ok)
    assert events.events == []  # no read in between: a read would re-check and hide a miss
    budget.record(True)
    assert [type(e).__name__ for e in events.events] == ["ErrorBudgetExhausted"]


def test_silence_longer_than_the_ring_clears_everything() -> None:
    clock = FakeClock()
    b = budget(clock, min_requests=1, burn_alerts=())
    b.record(False)
    clock.advance(10_000.0)
    assert b.counts() == (0, 0)
    b.record(True)
    assert b.counts() == (1, 0)


def test_reset_forgets_everything() -> None:
    clock = FakeClock()
    b = budget(clock, min_requests=1)
    b.record(False)
    assert b.exhausted
    b.reset()
    assert b.counts() == (0, 0)
    assert not b.exhausted
    assert b.statistics().lifetime_total == 0


def test_repr_shows_live_state() -> None:
    b = budget(FakeClock(), min_requests=1)
    b.record(False)
    assert "1/1 failed, exhausted" in repr(b)


# --- burn rates (R59) ---------------------------------------------------------------------------


def _minutes(b: ErrorBudget, clock: FakeClock, minutes: int, failures_per_100: int) -> None:
    for _ in range(minutes):
        for i in range(100):
            b.record(i >= failures_per_100)
        clock.advance(60.0)


def _burn(failing_early: int, failing_late: int) -> tuple[bool, bool]:
    """One hour of 100 requests a minute: minutes 0-54 with ``failing_early`` %, 55-59 with
    ``failing_late`` %. Returns whether the (1 h, 5 m) and (6 h, 30 m) alerts fire."""
    clock = FakeClock()
    b = ErrorBudget("b", slo=0.999, window=3600.0, min_requests=100, clock=clock)
    _minutes(b, clock, 55, failing_early)
    _minutes(b, clock, 5, failing_late)
    clock.now -= 1.0  # read at the end of minute 59, not the start of minute 60
    fast, slow = b.burn_rates()
    assert fast.alert == BurnRateAlert(3600.0, 300.0, 14.4)
    assert slow.alert == BurnRateAlert(21600.0, 1800.0, 6.0)
    return fast.firing, slow.firing


def test_burn_alert_needs_both_windows() -> None:
    """R59: an alert fires only when its long *and* its short window burn at its threshold."""
    # Burning over the hour but quiet for the last 5 minutes: the fast alert stays silent (while the
    # 6 h/30 m pair, whose short window still holds 25 failing minutes, fires).
    assert _burn(5, 0) == (False, True)
    # A burst in the last 5 minutes only: the hour's rate (0.42 %, burn 4.2) is below 14.4.
    assert _burn(0, 5) == (False, False)
    # Burning in both windows: both alerts fire.
    assert _burn(5, 5) == (True, True)
    assert _burn(0, 0) == (False, False)


def test_burn_rate_values_and_min_volume() -> None:
    clock = FakeClock()
    b = ErrorBudget("b", slo=0.99, window=3600.0, min_requests=1000, clock=clock)
    _minutes(b, clock, 5, 50)  # 500 requests at 50 % errors: burn 50 in every window
    clock.now -= 1.0
    fast, _ = b.burn_rates()
    assert fast.long_rate == pytest.approx(50.0)
    assert fast.short_rate == pytest.approx(50.0)
    assert fast.long_requests == 500
    assert not fast.firing  # below the minimum volume
    assert not b.burn_alert_firing


# --- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"slo": 0.0}, ValueError, "slo"),
        ({"slo": 1.5}, ValueError, "slo"),
        ({"slo": math.nan}, ValueError, "slo"),
        ({"slo": True}, TypeError, "slo"),
        ({"slo": 0.9, "window": 0}, ValueError, "window"),
        ({"slo": 0.9, "window": -1.0}, ValueError, "window"),
        ({"slo": 0.9, "window": math.inf}, ValueError, "window"),
        ({"slo": 0.9, "min_requests": -1}, ValueError, "min_requests"),
        ({"slo": 0.9, "min_requests": 1.5}, TypeError, "min_requests"),
        ({"slo": 0.9, "window": 60.0, "bucket": 61.0}, ValueError, "bucket"),
        ({"slo": 0.9, "bucket": 0.0}, ValueError, "bucket"),
        ({"slo": 0.9, "burn_alerts": [BurnRateAlert(0.0, 1.0, 1.0)]}, ValueError, "long_window"),
        ({"slo": 0.9, "burn_alerts": [(3600, 300, 14.4)]}, TypeError, "burn_alerts"),
    ],
)
def test_bad_config_names_the_field(
    kwargs: dict[str, Any], error: type[Exception], field: str
) -> None:
    with pytest.raises(error, match=field):
        ErrorBudget("b", **kwargs)


def test_bad_name() -> None:
    with pytest.raises(ValueError, match="name"):
        ErrorBudget("", slo=0.9)


# --- on the loop clock ----------------------------------------------------------------------------


@pytest.mark.virtual_time
async def test_module_level_budget_on_the_loop_clock(anyio_backend: Any) -> None:
    """Built at import (no loop), used on each backend's (virtual) clock."""
    MODULE_LEVEL.reset()
    MODULE_LEVEL.record(False)
    assert MODULE_LEVEL.exhausted
    await anyio.sleep(61.0)
    assert MODULE_LEVEL.counts() == (0, 0)
    assert not MODULE_LEVEL.exhausted
    MODULE_LEVEL.record(True)
    assert MODULE_LEVEL.counts() == (1, 0)


# --- model checks -------------------------------------------------------------------------------


def _naive(
    events: list[tuple[float, bool]], now: float, width: float, span: int
) -> tuple[int, int]:
    current = math.floor(now / width)
    inside = [failed for t, failed in events if current - span < math.floor(t / width) <= current]
    return len(inside), sum(inside)


@settings(max_examples=200, deadline=None)
@given(
    width=st.sampled_from([0.5, 1.0, 3.0]),
    spans=st.lists(st.integers(1, 12), min_size=1, max_size=4),
    steps=st.lists(
        st.tuples(st.floats(0.0, 8.0, allow_nan=False), st.booleans(), st.booleans()), max_size=80
    ),
)
def test_bucket_windows_match_a_naive_model(
    width: float, spans: list[int], steps: list[tuple[float, bool, bool]]
) -> None:
    """Every window's running sums equal a recount of every outcome ever recorded."""
    ring = BucketWindows(width, tuple(spans))
    events: list[tuple[float, bool]] = []
    now = 0.0
    for dt, record, failed in steps:
        now += dt
        if record:
            ring.add(now, failed)
            events.append((now, failed))
        else:
            ring.advance(now)
        for i, span in enumerate(spans):
            assert ring.counts(i) == _naive(events, now, width, span)


class ErrorBudgetMachine(RuleBasedStateMachine):
    """ErrorBudget against a model that keeps every request and recounts."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.events: RecordingListener[ErrorBudgetEvent] = RecordingListener()
        self.slo = 0.8
        self.budget = ErrorBudget(
            "m", slo=self.slo, window=10.0, bucket=1.0, min_requests=5, clock=self.clock,
            burn_alerts=(), listeners=[self.events],
        )  # fmt: skip
        self.requests: list[tuple[float, bool]] = []
        self.model_exhausted = False
        self.transitions = 0
        self.started: float | None = None  # the time-based availability's model
        self.down_since: float | None = None
        self.downtime = 0.0

    def _add(self, ok: bool) -> None:
        self.budget.record(ok)
        now = self.clock.now
        self.requests.append((now, not ok))
        if self.started is None:
            self.started = now
        if not ok and self.down_since is None:
            self.down_since = now
        elif ok and self.down_since is not None:
            self.downtime += now - self.down_since
            self.down_since = None
        self._model_step()

    def _model(self) -> tuple[int, int]:
        return _naive(self.requests, self.clock.now, 1.0, 10)

    def _model_step(self) -> None:
        total, failed = self._model()
        exhausted = total >= 5 and total - failed < total * self.slo
        if exhausted != self.model_exhausted:
            self.model_exhausted = exhausted
            self.transitions += 1

    @rule(ok=st.booleans())
    def record(self, ok: bool) -> None:
        self._add(ok)

    @rule(outcomes=st.lists(st.booleans(), max_size=12), dt=st.floats(0.0, 0.4))
    def burst(self, outcomes: list[bool], dt: float) -> None:
        """Several records with no read in between (reads end the quiet fast path)."""
        for ok in outcomes:
            self.clock.advance(dt)
            self._add(ok)

    @rule(dt=st.floats(0.0, 6.0, allow_nan=False))
    def advance(self, dt: float) -> None:
        self.clock.advance(dt)

    @rule()
    def read(self) -> None:
        self._model_step()
        assert self.budget.exhausted == self.model_exhausted

    @invariant()
    def matches_the_model(self) -> None:
        total, failed = self._model()
        stats = self.budget.statistics()
        self._model_step()
        assert (stats.total, stats.failed) == (total, failed)
        assert stats.exhausted == self.model_exhausted
        assert 0.0 <= stats.remaining <= 1.0
        allowance = total * (1 - self.slo)
        assert stats.allowed_failures == max(0, math.floor(allowance + 1e-9) - failed)
        expected = 0.0 if failed == 0 else min(1.0, failed / allowance)
        assert stats.consumed == pytest.approx(expected)
        assert len(self.events.events) == self.transitions
        assert 0.0 <= stats.availability <= 1.0
        now = self.clock.now
        if self.started is None or now <= self.started:
            assert stats.availability == 1.0
        else:
            down = self.downtime + (0.0 if self.down_since is None else now - self.down_since)
            expected = min(1.0, max(0.0, 1.0 - down / (now - self.started)))
            assert stats.availability == pytest.approx(expected)


TestErrorBudgetMachine = ErrorBudgetMachine.TestCase
TestErrorBudgetMachine.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)


def test_a_huge_default_window_keeps_a_bounded_ring() -> None:
    """A 1e9 s window with the default bucket: at most 100,000 buckets (60 s ones would be 16.7M,
    2 x 134 MB of list), and it still counts and slides."""
    import tracemalloc

    clock = FakeClock()
    tracemalloc.start()
    try:
        b = ErrorBudget("huge", slo=0.9, window=1e9, min_requests=1, clock=clock, burn_alerts=())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 100_000 * 8  # two rings of 100,000 (built twice: init and clear)
    b.record(True)
    b.record(False)
    assert b.counts() == (2, 1)
    clock.advance(1e9 + 1e4 + 1)  # both leave the window, bucket width 1e4 s
    assert b.counts() == (0, 0)
