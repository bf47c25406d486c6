"""The breaker's pure core against a small reference model (Hypothesis stateful testing, B1-B10).

The model below is written for clarity, not speed: the window is a plain list that is filtered on
every look, the open duration is recomputed, and nothing is incremental. Every rule compares the
core with it, and the invariants of ``shared/reference/reliability.md`` section 3.1 are checked after
every step:

- B1 the state is one of the three and equals the model's;
- B2 automatic transitions are only CLOSED->OPEN, OPEN->HALF_OPEN, HALF_OPEN->CLOSED, HALF_OPEN->OPEN;
- B3 in HALF_OPEN, ``probes <= half_open_max_calls`` and free + in-flight slots == the maximum;
- B4 a rejection changes nothing but ``rejected`` (+1); while OPEN, retry_after is exact;
- B5 a result from an earlier epoch changes nothing but ``stale``;
- B6 while OPEN every call before ``open_until`` is rejected, the first one at or after it is admitted
  and leaves the breaker HALF_OPEN;
- B7 CLOSED->OPEN only while recording a failure (or a slow call), exactly when the model trips;
- B8 HALF_OPEN->CLOSED exactly at ``half_open_successes`` successes; a failure reopens at ``now``;
- B9 no wedge: a half-open breaker whose slots have all been taken for ``half_open_max_wait`` admits
  the next call or is OPEN;
- B10 ``admitted == successes + failures + ignored + stale + inflight``, counters never decrease.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from dwcp_resilience.policies.breaker_core import (
    CLOCK_SLACK,
    REJECTED,
    BreakerConfig,
    BreakerCore,
    BreakerState,
    CountWindow,
    LatencyHistogram,
    TimeWindow,
)
from dwcp_resilience.testing import FakeClock

CLOSED, HALF_OPEN, OPEN = BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN
INF = math.inf
AUTOMATIC = {(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED), (HALF_OPEN, OPEN)}
COUNTERS = ("admitted", "successes", "failures", "ignored", "rejected", "slow_calls", "stale")


def _backoff(n: int) -> float:
    return min(30.0, 0.5 * 2.0 ** (n - 1))


def _sometimes_bad(n: int) -> float:
    if n >= 3:
        return math.nan  # the core logs nothing itself: it falls back to reset_timeout
    return 2.0 * n


@st.composite
def configs(draw: st.DrawFn) -> BreakerConfig:
    window = draw(
        st.one_of(
            st.none(),
            st.builds(CountWindow, st.integers(1, 8)),
            st.builds(
                TimeWindow, st.sampled_from([1.0, 3.0, 10.0]), st.sampled_from([1, 2, 5, 10])
            ),
        )
    )
    options: dict[str, Any] = {}
    if window is not None:
        options["failure_rate_threshold"] = draw(st.sampled_from([0.2, 0.5, 1.0]))
        top = window.size if isinstance(window, CountWindow) else 6
        options["minimum_calls"] = draw(st.integers(1, top))
        if draw(st.booleans()):
            options["slow_call_duration"] = 1.0
            options["slow_call_rate_threshold"] = draw(st.sampled_from([0.3, 1.0]))
    max_failures = draw(st.one_of(st.integers(1, 6), st.none() if window else st.just(3)))
    return BreakerConfig(
        max_failures=max_failures,
        reset_timeout=draw(st.sampled_from([0.5, 1.0, 5.0, 60.0])),
        half_open_max_calls=draw(st.integers(1, 4)),
        half_open_successes=draw(st.integers(1, 4)),
        window=window,
        half_open_max_wait=draw(st.sampled_from([None, 0.25, 2.0, INF])),
        open_duration=draw(st.sampled_from([None, _backoff, _sometimes_bad])),
        **options,
    )


@dataclass
class Ticket:
    core: int  # the core's ticket (its epoch at admission)
    model: int  # the model's epoch at admission


class Model:
    """The breaker as a spec: plain lists, nothing incremental."""

    def __init__(self, cfg: BreakerConfig) -> None:
        self.cfg = cfg
        self.state = CLOSED
        self.epoch = 0
        self.consecutive = 0
        # (time, failed, slow) of every call recorded in this CLOSED period
        self.calls: list[tuple[float, bool, bool]] = []
        self.opened_at = -INF
        self.open_until = -INF
        self.isolated = False
        self.disabled = False
        self.opens = 0
        self.probes = 0
        self.probe_successes = 0
        self.last_probe_at = -INF
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.transitions: list[tuple[BreakerState, BreakerState, float, str, bool]] = []

    def open_duration(self, n: int) -> float:
        fn: Callable[[int], float] | None = self.cfg.open_duration
        if fn is None:
            return self.cfg.reset_timeout
        value = fn(n)
        return value if math.isfinite(value) and value >= 0 else self.cfg.reset_timeout

    def enter(self, new: BreakerState, now: float, reason: str, manual: bool = False) -> None:
        old = self.state
        self.state = new
        self.epoch += 1
        self.probes = self.probe_successes = 0
        if new is CLOSED:
            self.consecutive = 0
            self.opens = 0
            self.isolated = False
            self.calls = []
        elif new is OPEN:
            self.opened_at = now
            if manual:
                self.isolated, self.open_until = True, INF
            else:
                self.opens += 1
                self.open_until = now + self.open_duration(self.opens)
        if old is not new:
            self.transitions.append((old, new, now, reason, manual))

    def poll(self, now: float) -> BreakerState:
        wait = self.cfg.half_open_max_wait
        assert wait is not None
        if self.state is OPEN and now >= self.open_until - CLOCK_SLACK:
            self.enter(HALF_OPEN, now, "reset_timeout")
        elif (
            self.state is HALF_OPEN
            and self.probes == self.cfg.half_open_max_calls
            and now >= self.last_probe_at + wait
        ):
            self.enter(OPEN, now, "half_open_max_wait")
        return self.state

    def admit(self, now: float) -> bool:
        state = self.poll(now)
        if state is CLOSED or (state is HALF_OPEN and self.probes < self.cfg.half_open_max_calls):
            if state is HALF_OPEN:
                self.probes += 1
                self.last_probe_at = now
            self.counts["admitted"] += 1
            return True
        self.counts["rejected"] += 1
        return False

    def window(self, now: float) -> list[tuple[float, bool, bool]]:
        window = self.cfg.window
        if isinstance(window, CountWindow):
            return self.calls[-window.size :]
        assert isinstance(window, TimeWindow)
        width = window.seconds / window.buckets
        newest = int(now // width)
        return [c for c in self.calls if int(c[0] // width) > newest - window.buckets]

    def check_window(self, now: float) -> None:
        calls = self.window(now)
        cfg = self.cfg
        assert cfg.minimum_calls is not None and cfg.failure_rate_threshold is not None
        if len(calls) < cfg.minimum_calls:
            return
        failures = sum(1 for c in calls if c[1])
        slow = sum(1 for c in calls if c[2])
        if failures / len(calls) >= cfg.failure_rate_threshold:
            self.enter(OPEN, now, "failure_rate")
        elif (
            cfg.slow_call_rate_threshold is not None
            and slow / len(calls) >= cfg.slow_call_rate_threshold
        ):
            self.enter(OPEN, now, "slow_call_rate")

    def finish(self, ticket: int, outcome: str, slow: bool, now: float) -> None:
        if ticket != self.epoch:
            self.counts["stale"] += 1
            return
        if outcome in ("ignored", "cancelled"):
            self.counts["ignored"] += 1
            if self.state is HALF_OPEN:
                self.probes -= 1
            return
        failed = outcome == "fail"
        self.counts["failures" if failed else "successes"] += 1
        self.counts["slow_calls"] += slow
        if self.disabled:
            return
        if self.state is HALF_OPEN:
            self.probes -= 1
            if failed or slow:
                self.enter(OPEN, now, "probe_failed" if failed else "slow_probe")
                return
            self.probe_successes += 1
            if self.probe_successes >= self.cfg.half_open_successes:
                self.enter(CLOSED, now, "probes_succeeded")
            return
        if failed:
            self.consecutive += 1
            if self.cfg.max_failures is not None and self.consecutive >= self.cfg.max_failures:
                self.enter(OPEN, now, "consecutive_failures")
                return
        else:
            self.consecutive = 0
        if self.cfg.window is not None:
            self.calls.append((now, failed, slow))
            if failed or slow:
                self.check_window(now)

    def retry_after(self, now: float) -> float | None:
        if self.state is OPEN:
            return None if self.isolated else max(0.0, self.open_until - now)
        if self.state is HALF_OPEN and self.probes == self.cfg.half_open_max_calls:
            wait = self.cfg.half_open_max_wait
            assert wait is not None
            return None if wait == INF else max(0.0, self.last_probe_at + wait - now)
        return 0.0


durations = st.one_of(
    st.just(0.0),
    st.floats(1e-9, 1e-3),
    st.floats(0.0, 15.0),
    st.sampled_from([0.25, 0.5, 1.0, 2.0, 5.0, 60.0]),
    st.just(86_400.0),
)


class BreakerMachine(RuleBasedStateMachine):
    tickets = Bundle("tickets")

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(1000.0)
        self.rule_name = ""
        self.seen: list[tuple[BreakerState, BreakerState, float, str, bool]] = []
        self.last_counts: dict[str, int] = {}

    @initialize(cfg=configs())
    def setup(self, cfg: BreakerConfig) -> None:
        self.cfg = cfg
        self.core = BreakerCore(cfg, self.on_transition)
        self.model = Model(cfg)

    def on_transition(
        self, old: BreakerState, new: BreakerState, now: float, reason: str, manual: bool
    ) -> None:
        assert now == self.clock.now
        if not manual:
            assert (old, new) in AUTOMATIC, (old, new, reason)  # B2
        if (old, new) == (CLOSED, OPEN) and not manual:
            assert self.rule_name in {"finish_fail", "finish_slow"}, self.rule_name  # B7
        self.seen.append((old, new, now, reason, manual))

    def counts(self) -> dict[str, int]:
        return {name: getattr(self.core, name) for name in COUNTERS}

    # -- rules ---------------------------------------------------------------------------------

    @rule(target=tickets)
    def call(self) -> Any:
        self.rule_name = "call"
        now = self.clock.now
        core = self.core
        before = self.counts()
        was = core.state
        open_until = core.open_until
        wait = self.cfg.half_open_max_wait
        assert wait is not None
        wedged = (
            was is HALF_OPEN
            and core.probes == self.cfg.half_open_max_calls
            and now >= core.last_probe_at + wait
        )
        ticket = core.try_acquire(now)
        admitted = self.model.admit(now)
        assert (ticket != REJECTED) == admitted
        if not admitted:  # B4: a rejection changes nothing but `rejected`
            after = self.counts()
            assert after["rejected"] == before["rejected"] + 1
            assert {k: v for k, v in after.items() if k != "rejected"} == {
                k: v for k, v in before.items() if k != "rejected"
            }
            assert core.retry_after(now) == self.model.retry_after(now)
        if was is OPEN and not core.isolated and open_until != INF:  # B6
            if now < open_until - CLOCK_SLACK:
                assert not admitted and core.state is OPEN
            else:
                assert admitted and core.state is HALF_OPEN
        if wedged:  # B9
            assert admitted or core.state is OPEN
        if not admitted:
            return multiple()
        return Ticket(ticket, self.model.epoch)

    def _finish(self, t: Ticket, outcome: str, slow: bool) -> None:
        self.rule_name = {"ok": "finish_slow" if slow else "finish_ok", "fail": "finish_fail"}.get(
            outcome, "finish_neutral"
        )
        now = self.clock.now
        core = self.core
        stale = t.core != core.epoch
        assert stale == (t.model != self.model.epoch)
        before = (self.counts(), core.state, core.consecutive, core.window_totals(now))
        duration = 1.0 if slow else 0.0
        if outcome == "ok":
            core.on_success(t.core, now, duration)
        elif outcome == "fail":
            core.on_failure(t.core, now, duration)
        else:
            core.on_neutral(t.core)
        self.model.finish(t.model, outcome, slow and self.cfg.slow_call_duration is not None, now)
        if stale:  # B5
            counts, state, consecutive, totals = before
            counts["stale"] += 1
            assert (self.counts(), core.state, core.consecutive) == (counts, state, consecutive)
            assert core.window_totals(now) == totals

    @rule(t=consumes(tickets), slow=st.booleans())
    def finish_ok(self, t: Ticket, slow: bool) -> None:
        self._finish(t, "ok", slow)

    @rule(t=consumes(tickets), slow=st.booleans())
    def finish_fail(self, t: Ticket, slow: bool) -> None:
        self._finish(t, "fail", slow)

    @rule(t=consumes(tickets), outcome=st.sampled_from(["ignored", "cancelled"]))
    def finish_neutral(self, t: Ticket, outcome: str) -> None:
        self._finish(t, outcome, False)

    @rule(
        target=tickets,
        outcomes=st.lists(
            st.sampled_from(["ok", "ok_slow", "fail", "ignored", "hold"]), max_size=8
        ),
    )
    def burst(self, outcomes: list[str]) -> Any:
        """Calls one after the other, finished at once (drives the breaker to its trips) or held."""
        held = []
        for outcome in outcomes:
            ticket = self.call()
            if not isinstance(ticket, Ticket):
                continue
            if outcome == "hold":
                held.append(ticket)
            else:
                self._finish(ticket, outcome.removesuffix("_slow"), outcome.endswith("_slow"))
        return multiple(*held)

    @rule(dt=durations)
    def advance(self, dt: float) -> None:
        self.rule_name = "advance"
        self.clock.advance(dt)

    def _half_open_full(self) -> bool:
        core = self.core
        return core.state is HALF_OPEN and core.probes == self.cfg.half_open_max_calls

    @precondition(lambda self: self.core.state is OPEN and math.isfinite(self.core.open_until))
    @rule(offset=st.sampled_from([-1e-6, 0.0, 0.0, 1e-6]))
    def jump_to_open_end(self, offset: float) -> None:
        """Jump to the end of the open period: exactly, or just before or after it."""
        self.rule_name = "advance"
        self.clock.now = max(self.clock.now, self.core.open_until + offset)

    @precondition(
        lambda self: self._half_open_full() and math.isfinite(self.cfg.half_open_max_wait or 0.0)
    )
    @rule(offset=st.sampled_from([-1e-6, 0.0, 0.0, 1e-6]))
    def jump_to_max_wait(self, offset: float) -> None:
        """Jump to when every probe slot has been taken for half_open_max_wait (B9)."""
        self.rule_name = "advance"
        wait = self.cfg.half_open_max_wait
        assert wait is not None
        self.clock.now = max(self.clock.now, self.core.last_probe_at + wait + offset)

    @rule()
    def poll(self) -> None:
        self.rule_name = "poll"
        assert self.core.poll(self.clock.now) is self.model.poll(self.clock.now)

    @rule(op=st.sampled_from(["reset", "force_open", "disable"]), act=st.integers(0, 2))
    def manual(self, op: str, act: int) -> None:
        if act:  # a third as often as the other rules: manual moves undo the interesting states
            return
        self.rule_name = op
        now = self.clock.now
        getattr(self.core, op)(now)
        self.model.disabled = op == "disable"
        self.model.enter(OPEN if op == "force_open" else CLOSED, now, op, manual=True)

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def same_state(self) -> None:  # B1, and the whole model
        core, model = self.core, self.model
        assert core.state in (CLOSED, HALF_OPEN, OPEN)
        assert core.state is model.state
        assert core.epoch == model.epoch
        assert core.isolated == model.isolated and core.disabled == model.disabled
        assert core.consecutive == model.consecutive
        assert core.opens == model.opens
        if core.state is OPEN:
            assert core.opened_at == model.opened_at
            assert core.open_until == model.open_until
        assert self.counts() == model.counts
        assert self.seen == model.transitions
        now = self.clock.now
        assert core.retry_after(now) == model.retry_after(now)  # B4
        if self.cfg.window is not None:
            calls = model.window(now)
            assert core.window_totals(now) == (
                len(calls),
                sum(1 for c in calls if c[1]),
                sum(1 for c in calls if c[2]),
            )

    @invariant()
    def probes_bounded(self) -> None:  # B3
        core = self.core
        limit = self.cfg.half_open_max_calls
        if core.state is HALF_OPEN:
            assert 0 <= core.probes <= limit
            assert core.free_probe_slots() + core.probes == limit
            assert core.probe_successes < self.cfg.half_open_successes
        else:
            assert core.probes == 0 and core.free_probe_slots() == 0

    @invariant()
    def conservation(self) -> None:  # B10
        core = self.core
        counts = self.counts()
        assert all(v >= 0 for v in counts.values())
        for name, value in counts.items():
            assert value >= self.last_counts.get(name, 0), name
        self.last_counts = counts
        assert core.inflight >= 0
        assert core.admitted == (
            core.successes + core.failures + core.ignored + core.stale + core.inflight
        )


BreakerMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestBreakerCore = BreakerMachine.TestCase


# -- example tests of the core ---------------------------------------------------------------------


def _core(**options: Any) -> tuple[BreakerCore, list[tuple[Any, ...]]]:
    events: list[tuple[Any, ...]] = []
    core = BreakerCore(BreakerConfig(**options), lambda *a: events.append(a))
    return core, events


def test_go_bug_stale_successes_do_not_close() -> None:
    """3 slow successful probes plus 1 fast failing probe leave the breaker OPEN (Go closed it)."""
    core, _ = _core(max_failures=1, half_open_max_calls=4, half_open_successes=3)
    core.on_failure(core.try_acquire(0.0), 0.0)
    probes = [core.try_acquire(60.0) for _ in range(4)]
    assert core.state is HALF_OPEN and REJECTED not in probes
    core.on_failure(probes[3], 60.5)
    assert core.state is OPEN
    for ticket in probes[:3]:
        core.on_success(ticket, 61.0)
    assert core.state is OPEN and core.stale == 3 and core.successes == 0


def test_half_open_admits_exactly_max_calls() -> None:
    core, _ = _core(max_failures=1, half_open_max_calls=3)
    core.on_failure(core.try_acquire(0.0), 0.0)
    tickets = [core.try_acquire(60.0) for _ in range(1000)]
    assert sum(t != REJECTED for t in tickets) == 3
    assert core.rejected == 997


def test_open_duration_generator_backs_off_and_resets_on_close() -> None:
    core, events = _core(max_failures=1, open_duration=lambda n: 10.0 * n, half_open_successes=1)
    core.on_failure(core.try_acquire(0.0), 0.0)
    assert core.open_until == 10.0
    core.on_failure(core.try_acquire(10.0), 10.0)  # the probe fails: second opening in a row
    assert core.open_until == 30.0 and core.opens == 2
    core.on_success(core.try_acquire(30.0), 30.0)
    assert core.state is CLOSED and core.opens == 0
    core.on_failure(core.try_acquire(31.0), 31.0)
    assert core.open_until == 41.0
    assert [e[:2] for e in events][:3] == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN)]


def test_open_duration_generator_errors_fall_back_to_reset_timeout() -> None:
    def bad(n: int) -> float:
        raise RuntimeError("boom")

    core, _ = _core(max_failures=1, reset_timeout=7.0, open_duration=bad)
    core.on_failure(core.try_acquire(0.0), 0.0)
    assert core.open_until == 7.0
    assert isinstance(core.open_duration_error, RuntimeError)


def test_count_window_trips_on_rate_after_minimum_calls() -> None:
    core, events = _core(
        max_failures=None, window=CountWindow(10), failure_rate_threshold=0.5, minimum_calls=4
    )
    for _ in range(3):  # 3 failures: below the minimum
        core.on_failure(core.try_acquire(0.0), 0.0)
    assert core.state is CLOSED
    core.on_success(core.try_acquire(0.0), 0.0)  # 4 calls, 75%: but only a failure evaluates
    assert core.state is CLOSED
    core.on_failure(core.try_acquire(0.0), 0.0)
    assert core.state is OPEN and events[-1][3] == "failure_rate"


def test_time_window_forgets_old_failures() -> None:
    core, _ = _core(
        max_failures=None, window=TimeWindow(10.0, 10), failure_rate_threshold=0.5, minimum_calls=3
    )
    core.on_failure(core.try_acquire(0.0), 0.0)
    core.on_failure(core.try_acquire(1.0), 1.0)
    assert core.window_totals(5.0) == (2, 2, 0)
    assert core.window_totals(10.5) == (1, 1, 0)  # the bucket [0, 1) slid out
    core.on_success(core.try_acquire(20.0), 20.0)
    core.on_success(core.try_acquire(20.0), 20.0)
    core.on_failure(core.try_acquire(20.0), 20.0)
    assert core.state is CLOSED  # 1 failure in 3: 33% < 50%
    assert core.window_totals(86_400.0) == (0, 0, 0)


def test_slow_calls_trip_and_a_slow_probe_reopens() -> None:
    core, events = _core(
        max_failures=None,
        window=CountWindow(4),
        minimum_calls=2,
        slow_call_duration=1.0,
        slow_call_rate_threshold=0.5,
        half_open_successes=1,
    )
    core.on_success(core.try_acquire(0.0), 0.0, 0.1)
    core.on_success(core.try_acquire(0.0), 0.0, 1.5)
    assert core.state is OPEN and events[-1][3] == "slow_call_rate" and core.slow_calls == 1
    core.on_success(core.try_acquire(60.0), 61.0, 1.0)
    assert core.state is OPEN and events[-1][3] == "slow_probe"


def test_half_open_max_wait_reopens_a_wedged_breaker() -> None:
    core, events = _core(max_failures=1, half_open_max_wait=5.0)
    core.on_failure(core.try_acquire(0.0), 0.0)
    stuck = core.try_acquire(60.0)
    assert core.try_acquire(64.9) == REJECTED
    assert core.retry_after(64.9) == pytest.approx(0.1)
    assert core.try_acquire(65.0) == REJECTED and core.state is OPEN
    assert events[-1][3] == "half_open_max_wait"
    core.on_success(stuck, 70.0)  # the stuck probe's late result is stale
    assert core.stale == 1 and core.state is OPEN


def test_disabled_counts_but_never_trips() -> None:
    core, _ = _core(max_failures=1)
    core.disable(0.0)
    for _ in range(10):
        core.on_failure(core.try_acquire(0.0), 0.0)
    assert core.state is CLOSED and core.failures == 10 and core.disabled
    core.force_open(1.0)
    assert core.state is OPEN and core.isolated and not core.disabled
    assert core.try_acquire(10**9) == REJECTED and core.retry_after(5.0) is None
    core.reset(2.0)
    assert core.state is CLOSED and not core.isolated


def test_latency_histogram_buckets() -> None:
    h = LatencyHistogram()
    for value in (0.001, 0.005, 0.3, 11.0, -1.0, math.nan):
        h.observe(value)
    assert h.count == 4 and h.sum == pytest.approx(11.306)
    cumulative = h.cumulative()
    assert cumulative[0] == 2  # le 0.005 (inclusive)
    assert cumulative[6] == 3  # le 0.5
    assert cumulative[-1] == 4  # +Inf


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"max_failures": 0}, ValueError),
        ({"max_failures": -1}, ValueError),
        ({"max_failures": 1.5}, TypeError),
        ({"max_failures": True}, TypeError),
        ({"max_failures": "5"}, TypeError),
        ({"max_failures": None}, ValueError),
        ({"reset_timeout": -1}, ValueError),
        ({"reset_timeout": 0}, ValueError),
        ({"reset_timeout": math.nan}, ValueError),
        ({"reset_timeout": math.inf}, ValueError),
        ({"half_open_max_calls": 0}, ValueError),
        ({"half_open_successes": 0}, ValueError),
        ({"half_open_max_wait": 0}, ValueError),
        ({"half_open_max_wait": math.nan}, ValueError),
        ({"failure_rate_threshold": 0.5}, ValueError),
        ({"slow_call_duration": 1.0}, ValueError),
        ({"window": CountWindow(5), "minimum_calls": 6}, ValueError),
        ({"window": CountWindow(5), "failure_rate_threshold": 0.0}, ValueError),
        ({"window": CountWindow(5), "failure_rate_threshold": 1.5}, ValueError),
        ({"window": CountWindow(5), "slow_call_rate_threshold": 0.5}, ValueError),
        ({"window": 5}, TypeError),
        ({"open_duration": 5}, TypeError),
    ],
)
def test_bad_config(options: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        BreakerConfig(**options)


@pytest.mark.parametrize(
    ("factory", "error"),
    [
        (lambda: CountWindow(0), ValueError),
        (lambda: CountWindow(True), TypeError),
        (lambda: TimeWindow(0.0), ValueError),
        (lambda: TimeWindow(math.inf), ValueError),
        (lambda: TimeWindow(10.0, 0), ValueError),
    ],
)
def test_bad_windows(factory: Callable[[], object], error: type[Exception]) -> None:
    with pytest.raises(error):
        factory()


def test_defaults_match_the_go_package() -> None:
    cfg = BreakerConfig()
    assert (cfg.max_failures, cfg.reset_timeout, cfg.half_open_successes) == (5, 60.0, 3)
    assert cfg.half_open_max_calls == 1 and cfg.half_open_max_wait == 60.0
    assert [int(s) for s in BreakerState] == [0, 1, 2]
    assert [str(s) for s in BreakerState] == ["closed", "half-open", "open"]
    windowed = BreakerConfig(window=CountWindow(50))
    assert windowed.failure_rate_threshold == 0.5 and windowed.minimum_calls == 50
    assert BreakerConfig(window=TimeWindow(30.0)).minimum_calls == 20
