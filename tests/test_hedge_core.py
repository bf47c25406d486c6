"""Property tests of the pure hedge core (HedgeCore, Race, LatencyWindow) against a small model."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from dwcp_resilience import CircuitOpen, Percentile, RetryBudget
from dwcp_resilience.policies.hedge_core import HedgeCore, HedgeEvent, HedgeStarted
from dwcp_resilience.policies.hedge_delay import LatencyWindow
from dwcp_resilience.policies.hedge_race import FAILED, FINAL, OUT, Race


class Now:
    """A manual clock for the core."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(max(math.ceil(q * len(ordered)) - 1, 0), len(ordered) - 1)]


class RaceModel:
    """What the model knows of one call: its running attempts and how it ended."""

    def __init__(self) -> None:
        self.running: list[int] = [1]
        self.winner = 0
        self.final = False
        self.starts: list[int] = [1]


class HedgeMachine(RuleBasedStateMachine):
    @initialize(
        hedges=st.integers(1, 4),
        delay=st.one_of(
            st.sampled_from([0.0, 0.5, 1.0, math.inf]),
            st.integers(1, 8).flatmap(
                lambda window: st.builds(
                    Percentile,
                    quantile=st.sampled_from([0.5, 0.9, 1.0]),
                    window=st.just(window),
                    min_samples=st.integers(1, window),
                    fallback=st.sampled_from([0.0, 1.0]),
                )
            ),
        ),
        ratio=st.sampled_from([None, 0.0, 0.5, 1.0]),
        floor=st.sampled_from([0.0, 0.2]),
        immediate=st.booleans(),
    )
    def setup(
        self,
        hedges: int,
        delay: float | Percentile,
        ratio: float | None,
        floor: float,
        immediate: bool,
    ) -> None:
        self.now = Now()
        self.events: list[HedgeEvent] = []
        self.core = HedgeCore(
            "h",
            delay=delay,
            max_hedged_attempts=hedges,
            hedge_on=ConnectionError,
            hedge_after_failure=immediate,
            budget_ratio=ratio,
            min_hedges_per_second=floor,
            budget_window=10.0,
            clock=self.now,
            listeners=[self.events.append],
        )
        self.max_attempts = hedges + 1
        self.delay = delay
        self.immediate = immediate
        self.races: list[tuple[Race, RaceModel]] = []
        self.latencies: list[float] = []
        self.won_first = self.won_hedge = self.launched = self.refused = 0

    # --- rules --------------------------------------------------------------------------------

    @rule()
    def begin(self) -> None:
        race = self.core.begin(self.now())
        assert (race.started, race.running, race.winner) == (1, 1, 0)
        self.races.append((race, RaceModel()))

    @rule(dt=st.sampled_from([0.0, 0.1, 0.5, 1.0, 3.0, 20.0]))
    def advance(self, dt: float) -> None:
        self.now.t += dt

    @precondition(lambda self: bool(self.races))
    @rule(index=st.integers(0, 100))
    def tick(self, index: int) -> None:
        """The scheduler's step: start the next attempt if it is due."""
        race, model = self.races[index % len(self.races)]
        due = race.next_start()
        if due is None or due > self.now():
            return
        assert not race.decided and race.started < self.max_attempts
        before = self.core.statistics().budget_refusals
        number = self.core.launch(race, self.now())
        if number == 0:
            assert self.core.statistics().budget_refusals == before + 1
            assert race.next_start() is None  # no further attempt in this call
            budget = self.core.budget
            assert budget is not None  # only a budget refuses
            window = budget.statistics(self.now())
            assert window.retries + 1 > window.allowed  # refused only when one more is too many
            self.refused += 1
            return
        assert number == model.starts[-1] + 1
        budget = self.core.budget
        if budget is not None:  # a grant never takes the window past what it allows at that time
            window = budget.statistics(self.now())
            assert window.retries <= window.allowed + 1e-9
        model.starts.append(number)
        model.running.append(number)
        self.launched += 1

    @precondition(lambda self: any(m.running and not r.decided for r, m in self.races))
    @rule(index=st.integers(0, 100), which=st.integers(0, 100), duration=st.floats(0.0, 5.0))
    def succeed(self, index: int, which: int, duration: float) -> None:
        live = [(r, m) for r, m in self.races if m.running and not r.decided]
        race, model = live[index % len(live)]
        number = model.running.pop(which % len(model.running))
        assert self.core.succeeded(race, number, ("ok", number), duration)
        assert race.winner == number and race.result == ("ok", number)
        model.winner = number
        self.latencies.append(duration)
        if number == 1:
            self.won_first += 1
        else:
            self.won_hedge += 1
        # every later end of this race is ignored
        for other in list(model.running):
            assert not self.core.succeeded(race, other, "late", 0.1)
            assert not self.core.failed(race, ConnectionError("late"))
        model.running.clear()

    @precondition(lambda self: any(m.running and not r.decided for r, m in self.races))
    @rule(
        index=st.integers(0, 100),
        which=st.integers(0, 100),
        error=st.sampled_from(["failed", "rejected", "final"]),
    )
    def fail(self, index: int, which: int, error: str) -> None:
        live = [(r, m) for r, m in self.races if m.running and not r.decided]
        race, model = live[index % len(live)]
        model.running.pop(which % len(model.running))
        exc: Exception = {
            "failed": ConnectionError("down"),
            "rejected": CircuitOpen("b", 1.0),
            "final": KeyError("bug"),
        }[error]
        kind = {"failed": FAILED if self.immediate else OUT, "rejected": OUT, "final": FINAL}[error]
        assert self.core.classify(exc) == kind
        pending = race.pending
        ended = self.core.failed(race, exc)
        assert ended == (kind == FINAL)
        if ended:
            model.final = True
            assert race.error is exc
            model.running.clear()
        elif kind == FAILED:
            assert race.pending == pending + 1
            assert race.next_start() in (None, -math.inf)  # at once, if any is left
        else:  # out: the race goes on at the delay; with nothing running it is over
            assert race.pending == pending
            due = race.next_start()
            if race.running == 0 and race.pending == 0:
                assert due is None

    # --- invariants ---------------------------------------------------------------------------

    @invariant()
    def races_agree_with_the_model(self) -> None:
        for race, model in self.races:
            assert 1 <= race.started <= self.max_attempts
            assert race.started == len(model.starts)
            if not race.decided:
                assert race.running == len(model.running)
            assert race.winner == model.winner
            assert race.final == model.final
            assert not (race.winner and race.final)
            if race.decided:
                assert race.next_start() is None

    @invariant()
    def counters_add_up(self) -> None:
        s = self.core.statistics()
        assert s.calls == len(self.races)
        assert s.hedges_started == self.launched == sum(r.started - 1 for r, _ in self.races)
        assert (s.first_wins, s.hedge_wins) == (self.won_first, self.won_hedge)
        assert s.budget_refusals == self.refused
        started = [e for e in self.events if isinstance(e, HedgeStarted)]
        assert len(started) == self.launched

    @invariant()
    def budget_counts_every_hedge(self) -> None:
        budget = self.core.budget
        if budget is not None:
            stats = budget.statistics(self.now())
            assert stats.total_retries == self.launched
            assert stats.total_rejected == self.refused

    @invariant()
    def delay_follows_the_window(self) -> None:
        delay = self.core.delay()
        if isinstance(self.delay, Percentile):
            kept = self.latencies[-self.delay.window :]
            if len(kept) >= self.delay.min_samples:
                assert delay == nearest_rank(kept, self.delay.quantile)
            else:
                assert delay == self.delay.fallback
        else:
            assert delay == self.delay


HedgeMachine.TestCase.settings = settings(max_examples=250, stateful_step_count=60, deadline=None)
TestHedgeMachine = HedgeMachine.TestCase


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(1, 20),
    values=st.lists(st.floats(0.0, 10.0), max_size=80),
    q=st.floats(0.01, 1.0),
)
def test_latency_window_is_the_last_values_sorted(size: int, values: list[float], q: float) -> None:
    window = LatencyWindow(size)
    for i, value in enumerate(values):
        window.add(value)
        kept = values[max(0, i + 1 - size) : i + 1]
        assert window.values() == kept
        assert len(window) == len(kept)
        assert window.quantile(q) == nearest_rank(kept, q)


def test_latency_window_cleans_bad_readings() -> None:
    window = LatencyWindow(4)
    assert window.quantile(0.5) is None
    window.add(-1.0)  # a clock that stepped back
    window.add(math.nan)
    window.add(math.inf)  # dropped
    assert window.values() == [0.0, 0.0]


def test_race_prefers_a_real_failure_over_our_rejection() -> None:
    core = HedgeCore(
        "h", delay=1.0, max_hedged_attempts=2, hedge_on=OSError, budget_ratio=None, clock=Now()
    )
    race = core.begin(0.0)
    real = ConnectionError("real")
    core.failed(race, real)
    assert core.launch(race, 0.0) == 2  # a failure asks for the next at once
    core.failed(race, CircuitOpen("b", 1.0))
    assert race.error is real
    error = core.gave_up(race)
    assert error is real
    assert error.__notes__ == ["Hedge 'h': 2 attempts started, all failed"]


def test_budget_refusal_note_and_event() -> None:
    events: list[HedgeEvent] = []
    budget = RetryBudget(ratio=0.0, min_retries_per_second=0.0)
    core = HedgeCore(
        "h",
        delay=0.5,
        hedge_on=OSError,
        budget=budget,
        clock=Now(),
        listeners=[events.append],
    )
    race = core.begin(0.0)
    assert race.next_start() == 0.5
    assert core.launch(race, 0.5) == 0
    assert [type(e).__name__ for e in events] == ["HedgeBudgetExhausted"]
    core.failed(race, TimeoutError())
    assert core.gave_up(race).__notes__ == ["Hedge 'h': 1 attempt started, the budget refused more"]
    assert budget.statistics(0.5).total_rejected == 1


def test_a_raising_predicate_ends_the_race(caplog: pytest.LogCaptureFixture) -> None:
    def broken(exc: BaseException) -> bool:
        raise RuntimeError("bug in the predicate")

    core = HedgeCore("h", hedge_on=broken, clock=Now())
    assert core.classify(ValueError()) == FINAL
    assert "hedge_on predicate" in caplog.text


def test_a_seeded_random_walk_keeps_the_budget_bound() -> None:
    """Under a 100 % slow load every call asks for a hedge; the budget's window bound holds."""
    rng = random.Random(7)
    now = Now()
    core = HedgeCore(
        "h",
        delay=0.2,
        hedge_on=OSError,
        budget_ratio=0.1,
        min_hedges_per_second=0.5,
        budget_window=10.0,
        clock=now,
    )
    calls = 0
    for _ in range(2000):
        now.t += rng.random() * 0.05
        race = core.begin(now())
        calls += 1
        due = race.next_start()
        assert due is not None
        now.t = max(now.t, due)
        core.launch(race, now())
    stats = core.statistics()
    budget = core.budget
    assert budget is not None
    window = budget.statistics(now())
    assert window.retries <= max(window.allowed, 0.0)
    assert stats.hedges_started + stats.budget_refusals == calls
    # about ratio * calls (+ the floor per window): far below one hedge per call
    assert stats.hedges_started <= 0.1 * calls + 0.5 * (now.t - 100.0) + 5 + 1
