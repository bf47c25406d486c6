"""The Hedge shell on asyncio (looptime), trio (MockClock) and uvloop (short real waits).

Delays are a few hundredths of a second and the slow attempts sleep 10 s and are cancelled, so the
tests without the ``virtual_time`` marker finish quickly on uvloop too; exact times are asserted
only in virtual time.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from dwcp_resilience import (
    CircuitOpen,
    DeadlineExceeded,
    Hedge,
    HedgeBudgetExhausted,
    HedgeEvent,
    HedgeStarted,
    HedgeWon,
    NotCallable,
    Percentile,
    RetryBudget,
    Timeout,
    hedge_attempt,
)
from dwcp_resilience.testing import RecordingListener

pytestmark = pytest.mark.anyio

SLOW = 10.0  # an attempt that only a cancellation ends (never awaited in full)


class Attempts:
    """A hedged operation: attempt ``n`` sleeps ``plan[n]`` then returns or raises; it records
    starts, ends, and whether its ``finally`` ran (it was awaited), and how many run at once."""

    def __init__(self, plan: dict[int, tuple[float, object]]) -> None:
        self.plan = plan
        self.started: list[tuple[int, float]] = []
        self.finished: list[int] = []
        self.cancelled: list[int] = []
        self.running = 0

    async def __call__(self, tag: str = "x") -> tuple[str, int]:
        number = hedge_attempt()
        self.started.append((number, anyio.current_time()))
        self.running += 1
        try:
            wait, outcome = self.plan.get(number, (SLOW, None))
            try:
                await anyio.sleep(wait)
            except anyio.get_cancelled_exc_class():
                self.cancelled.append(number)
                raise
            if isinstance(outcome, BaseException):
                raise outcome
            return (tag, number)
        finally:
            self.running -= 1
            self.finished.append(number)


def numbers(op: Attempts) -> list[int]:
    return [number for number, _ in op.started]


# --- racing ---------------------------------------------------------------------------------------


async def test_a_slow_first_attempt_is_beaten_by_the_hedge(backend_name: str) -> None:
    hedge = Hedge("h", delay=0.02)
    op = Attempts({1: (SLOW, None), 2: (0.01, None)})
    start = anyio.current_time()
    assert await hedge.call(op, "t") == ("t", 2)
    assert numbers(op) == [1, 2]
    assert op.cancelled == [1] and sorted(op.finished) == [1, 2]  # the loser was awaited
    assert op.running == 0
    if backend_name != "uvloop":
        assert op.started[1][1] - start == pytest.approx(0.02)
        assert anyio.current_time() - start == pytest.approx(0.03)
    stats = hedge.statistics()
    assert (stats.calls, stats.hedges_started, stats.hedge_wins, stats.first_wins) == (1, 1, 1, 0)


async def test_a_fast_first_attempt_starts_no_hedge(backend_name: str) -> None:
    hedge = Hedge("h", delay=0.05)
    op = Attempts({1: (0.0, None)})
    assert await hedge.call(op) == ("x", 1)
    assert numbers(op) == [1] and op.cancelled == []

    async def instant() -> int:
        return 7

    assert await hedge.call(instant) == 7
    stats = hedge.statistics()
    assert (stats.calls, stats.first_wins, stats.hedges_started) == (2, 2, 0)


async def test_the_first_attempt_wins_over_a_slower_hedge(backend_name: str) -> None:
    hedge = Hedge("h", delay=0.01)
    op = Attempts({1: (0.03, None), 2: (SLOW, None)})
    assert await hedge.call(op) == ("x", 1)
    assert op.cancelled == [2] and sorted(op.finished) == [1, 2]
    assert hedge.statistics().first_wins == 1


@pytest.mark.virtual_time
async def test_hedges_start_one_delay_apart(backend_name: str) -> None:
    hedge = Hedge("h", delay=1.0, max_hedged_attempts=3, budget_ratio=None)
    op = Attempts({4: (0.5, None)})
    start = anyio.current_time()
    assert await hedge.call(op) == ("x", 4)
    assert [(n, t - start) for n, t in op.started] == [(1, 0.0), (2, 1.0), (3, 2.0), (4, 3.0)]
    assert anyio.current_time() - start == 3.5
    assert sorted(op.cancelled) == [1, 2, 3]


@pytest.mark.virtual_time
async def test_delay_zero_starts_every_attempt_at_once(backend_name: str) -> None:
    hedge = Hedge("h", delay=0.0, max_hedged_attempts=2, budget_ratio=None)
    op = Attempts({3: (0.5, None)})
    assert await hedge.call(op) == ("x", 3)
    assert [t for _, t in op.started] == [op.started[0][1]] * 3


@pytest.mark.virtual_time
async def test_infinite_delay_hedges_only_after_a_failure(backend_name: str) -> None:
    hedge = Hedge("h", delay=math.inf, budget_ratio=None)
    op = Attempts({1: (5.0, ConnectionError("down")), 2: (1.0, None)})
    start = anyio.current_time()
    assert await hedge.call(op) == ("x", 2)
    assert [(n, t - start) for n, t in op.started] == [(1, 0.0), (2, 5.0)]
    slow = Attempts({1: (30.0, None)})
    assert await hedge.call(slow) == ("x", 1)  # slow, but no failure: no hedge
    assert numbers(slow) == [1]


# --- failures -------------------------------------------------------------------------------------


async def test_a_failure_starts_the_next_attempt_at_once(backend_name: str) -> None:
    events: RecordingListener[HedgeEvent] = RecordingListener()
    hedge = Hedge("h", delay=5.0, listeners=[events])
    op = Attempts({1: (0.0, ConnectionError("down")), 2: (0.01, None)})
    start = anyio.current_time()
    assert await hedge.call(op) == ("x", 2)
    assert anyio.current_time() - start < 1.0  # not after the 5 s delay
    assert [(e.attempt, e.reason) for e in events.of_type(HedgeStarted)] == [(2, "failure")]
    assert [e.attempt for e in events.of_type(HedgeWon)] == [2]


@pytest.mark.virtual_time
async def test_without_hedge_after_failure_failures_keep_to_the_delay(backend_name: str) -> None:
    """For a Retry outside: a failure only leaves the race; with nothing left running it ends the
    call (the retry backs off), and slowness is still hedged."""
    hedge = Hedge("h", delay=1.0, hedge_after_failure=False, budget_ratio=None)
    failing = Attempts({1: (0.5, ConnectionError("down"))})
    with pytest.raises(ConnectionError) as info:
        await hedge.call(failing)
    assert numbers(failing) == [1]  # no immediate second attempt
    assert "1 attempt started, all failed" in info.value.__notes__[0]
    op = Attempts({1: (5.0, None), 2: (0.1, ConnectionError("down")), 3: (0.1, None)})
    hedge3 = Hedge("h3", delay=1.0, max_hedged_attempts=2, hedge_after_failure=False)
    start = anyio.current_time()
    assert await hedge3.call(op) == ("x", 3)
    assert [(n, t - start) for n, t in op.started] == [(1, 0.0), (2, 1.0), (3, 2.0)]


async def test_an_attempt_fails_while_another_succeeds(backend_name: str) -> None:
    hedge = Hedge("h", delay=0.01, max_hedged_attempts=2, budget_ratio=None)
    # 1 is slow; 2 starts at 0.01 and fails at 0.02, so 3 starts at once and wins.
    op = Attempts({1: (SLOW, None), 2: (0.01, TimeoutError("t")), 3: (0.01, None)})
    assert await hedge.call(op) == ("x", 3)
    assert numbers(op) == [1, 2, 3]
    assert op.cancelled == [1]
    assert hedge.statistics().failures == 0


async def test_all_attempts_fail_the_caller_gets_the_last_with_a_note(backend_name: str) -> None:
    hedge = Hedge("h", delay=1.0, max_hedged_attempts=2, budget_ratio=None)
    last = ConnectionResetError("third")
    # 1 fails at 0.01, 2 starts at once and fails at 0.02, 3 starts at once and fails at 0.04
    op = Attempts(
        {1: (0.01, ConnectionError("first")), 2: (0.01, TimeoutError("second")), 3: (0.02, last)}
    )
    with pytest.raises(ConnectionResetError) as info:
        await hedge.call(op)
    assert info.value is last  # the real exception, not a wrapper or a group
    assert info.value.__notes__ == ["Hedge 'h': 3 attempts started, all failed"]
    stats = hedge.statistics()
    assert (stats.failures, stats.hedges_started) == (1, 2)


@pytest.mark.virtual_time
async def test_last_failure_is_the_one_that_ended_last(backend_name: str) -> None:
    hedge = Hedge("h", delay=1.0, budget_ratio=None)
    op = Attempts({1: (3.0, ConnectionError("first")), 2: (1.0, TimeoutError("second"))})
    with pytest.raises(ConnectionError, match="first") as info:
        await hedge.call(op)
    assert "2 attempts started, all failed" in info.value.__notes__[0]


async def test_an_unhandled_exception_ends_the_race_at_once(backend_name: str) -> None:
    hedge = Hedge("h", delay=0.01)
    bug = KeyError("bug")
    op = Attempts({1: (SLOW, None), 2: (0.0, bug)})
    with pytest.raises(KeyError) as info:
        await hedge.call(op)
    assert info.value is bug
    assert op.cancelled == [1] and op.running == 0
    assert "ended by this exception" in info.value.__notes__[0]


async def test_a_rejection_does_not_end_the_race(backend_name: str) -> None:
    """An inner breaker refuses the hedge (e.g. its one half-open probe is attempt 1): the race goes
    on and attempt 1 wins; a call whose only attempt is refused gets the rejection at once."""
    hedge = Hedge("h", delay=0.01)
    op = Attempts({1: (0.05, None), 2: (0.0, CircuitOpen("b", 1.0))})
    assert await hedge.call(op) == ("x", 1)
    assert numbers(op) == [1, 2]
    refused = Attempts({1: (0.0, CircuitOpen("b", 2.0))})
    with pytest.raises(CircuitOpen):
        await hedge.call(refused)
    assert numbers(refused) == [1]


@pytest.mark.virtual_time
async def test_after_a_rejection_the_next_attempt_keeps_to_the_delay(backend_name: str) -> None:
    hedge = Hedge("h", delay=1.0, max_hedged_attempts=2, budget_ratio=None)
    op = Attempts({1: (5.0, None), 2: (0.0, CircuitOpen("b", 1.0)), 3: (0.5, None)})
    start = anyio.current_time()
    assert await hedge.call(op) == ("x", 3)
    assert [(n, t - start) for n, t in op.started] == [(1, 0.0), (2, 1.0), (3, 2.0)]


async def test_a_real_failure_is_preferred_over_a_rejection(backend_name: str) -> None:
    hedge = Hedge("h", delay=0.01, budget_ratio=None)
    op = Attempts({1: (0.03, ConnectionError("real")), 2: (0.0, CircuitOpen("b", 1.0))})
    with pytest.raises(ConnectionError, match="real"):
        await hedge.call(op)


# --- cancellation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cancel_at",
    ["before_the_hedge", "both_running", "after_a_failure", "first_done_hedge_failing"],
)
async def test_cancelling_the_caller_cancels_and_awaits_every_attempt(
    backend_name: str, cancel_at: str
) -> None:
    plans: dict[str, dict[int, tuple[float, object]]] = {
        "before_the_hedge": {},  # attempt 1 runs, the scheduler sleeps
        "both_running": {},
        "after_a_failure": {1: (0.0, ConnectionError("x"))},  # 2 runs (started at once)
        "first_done_hedge_failing": {1: (0.0, ConnectionError("x")), 2: (0.0, OSError("y"))},
    }
    hedge = Hedge("h", delay=0.02, max_hedged_attempts=2, budget_ratio=None)
    op = Attempts(plans[cancel_at])
    after = {"before_the_hedge": 0.01, "both_running": 0.03}.get(cancel_at, 0.01)
    outcome: list[str] = []

    async def caller() -> None:
        try:
            await hedge.call(op)
        except anyio.get_cancelled_exc_class():
            outcome.append(f"cancelled, {op.running} running")
            raise

    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller)
            await anyio.sleep(after)
            scope.cancel()
    assert scope.cancelled_caught  # the cancellation propagated (never swallowed)
    assert outcome == ["cancelled, 0 running"]  # every attempt's finally ran before it
    assert sorted(op.finished) == sorted(numbers(op))
    stats = hedge.statistics()
    assert (stats.cancelled, stats.failures) == (1, 0)
    if cancel_at == "both_running":
        assert numbers(op) == [1, 2]


async def test_cancelled_during_the_losers_teardown(backend_name: str) -> None:
    """A loser whose cleanup awaits: the call waits for it; a cancel then still propagates."""
    hedge = Hedge("h", delay=0.01)
    cleaned: list[int] = []

    async def op() -> int:
        number = hedge_attempt()
        try:
            await anyio.sleep(SLOW if number == 1 else 0.01)
            return number
        finally:
            if number == 1:
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(0.02)
                cleaned.append(number)

    assert await hedge.call(op) == 2
    assert cleaned == [1]  # returned only after the loser's shielded cleanup


async def test_keyboard_interrupt_and_system_exit_reach_the_caller_unwrapped(
    backend_name: str,
) -> None:
    hedge = Hedge("h", delay=0.01)
    op = Attempts({1: (SLOW, None), 2: (0.0, SystemExit(3))})
    with pytest.raises(SystemExit) as info:
        await hedge.call(op)
    assert info.value.code == 3 and op.cancelled == [1]

    async def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await hedge.call(interrupted)
    assert hedge.statistics().cancelled == 2


async def test_an_outer_timeout_is_a_deadline_and_an_outer_cancel_a_cancel(
    backend_name: str,
) -> None:
    """Around a hedge, our Timeout's expiry is DeadlineExceeded (every attempt awaited first) and
    an outer cancel scope stays a cancellation: the task group does not blur the two."""
    hedge = Hedge("h", delay=0.01)
    op = Attempts({})  # every attempt takes SLOW
    start = anyio.current_time()
    with pytest.raises(DeadlineExceeded):
        await Timeout(0.05).call(hedge.call, op)
    assert numbers(op) == [1, 2] and op.running == 0
    if backend_name != "uvloop":
        assert anyio.current_time() - start == pytest.approx(0.05)
    with anyio.move_on_after(0.05) as scope:
        await Timeout(5.0).call(hedge.call, Attempts({}))
    assert scope.cancelled_caught
    assert hedge.statistics().cancelled == 2


# --- budget ---------------------------------------------------------------------------------------


@pytest.mark.virtual_time
async def test_the_budget_caps_hedges_under_a_fully_slow_load(backend_name: str) -> None:
    """100 concurrent calls, every attempt slower than the delay: only ratio * calls + the floor
    hedge; the others run their one attempt (the budget refuses, and says so)."""
    events: RecordingListener[HedgeEvent] = RecordingListener()
    hedge = Hedge(
        "h",
        delay=1.0,
        budget_ratio=0.1,
        min_hedges_per_second=0.5,  # floor: 5 per 10 s window
        budget_window=10.0,
        listeners=[events],
    )
    started = 0

    async def slow() -> str:
        nonlocal started
        started += 1
        await anyio.sleep(3.0)
        return "late"

    async with anyio.create_task_group() as tg:
        for _ in range(100):
            tg.start_soon(hedge.call, slow)
    stats = hedge.statistics()
    assert stats.calls == 100
    assert started == 100 + stats.hedges_started
    # 100 requests in the window: max(floor 5, 0.1 * 100) = 10 hedges allowed
    assert stats.hedges_started == 10
    assert stats.budget_refusals == 100 - stats.hedges_started
    assert len(events.of_type(HedgeBudgetExhausted)) == stats.budget_refusals


async def test_a_shared_budget_is_charged(backend_name: str) -> None:
    budget = RetryBudget(ratio=0.0, min_retries_per_second=0.0)
    hedge = Hedge("h", delay=0.01, budget=budget)
    op = Attempts({1: (0.03, None)})
    assert await hedge.call(op) == ("x", 1)
    assert numbers(op) == [1]  # the budget refused the hedge
    stats = budget.statistics()
    assert (stats.total_requests, stats.total_rejected) == (1, 1)
    assert hedge.budget is budget


# --- percentile delay -----------------------------------------------------------------------------


@pytest.mark.virtual_time
async def test_percentile_delay_follows_successful_latency(backend_name: str) -> None:
    hedge = Hedge(
        "h",
        delay=Percentile(0.9, window=10, min_samples=5, fallback=4.0),
        budget_ratio=None,
    )
    assert hedge.statistics().delay == 4.0
    durations = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    for wait in durations:
        await hedge.call(anyio.sleep, wait)
    # nearest rank: the 9th of 10 sorted samples
    assert hedge.statistics().delay == pytest.approx(0.9)
    assert hedge.statistics().samples == 10
    op = Attempts({2: (0.1, None)})
    start = anyio.current_time()
    assert await hedge.call(op) == ("x", 2)
    assert op.started[1][1] - start == pytest.approx(0.9)


@pytest.mark.virtual_time
async def test_percentile_delay_never_goes_below_its_minimum(backend_name: str) -> None:
    """Fast successes (1 ms) would give a 1 ms delay; ``minimum`` holds it at 50 ms, and the
    fallback before enough samples is used as given (here below the minimum)."""
    hedge = Hedge(
        "h",
        delay=Percentile(0.95, window=10, min_samples=5, fallback=0.01, minimum=0.05),
        budget_ratio=None,
    )
    assert hedge.statistics().delay == 0.01
    for _ in range(10):
        await hedge.call(anyio.sleep, 0.001)
    assert hedge.statistics().delay == 0.05
    op = Attempts({2: (0.001, None)})
    start = anyio.current_time()
    assert await hedge.call(op) == ("x", 2)
    assert op.started[1][1] - start == pytest.approx(0.05)


# --- idioms, attempts, listeners, config ----------------------------------------------------------


async def test_decorator_and_hedge_attempt(backend_name: str) -> None:
    hedge = Hedge("h", delay=0.01)

    @hedge
    async def whoami(extra: int) -> tuple[int, int]:
        number = hedge_attempt()
        await anyio.sleep(SLOW if number == 1 else 0.0)
        return number, extra

    assert await whoami(5) == (2, 5)
    assert hedge_attempt() == 1  # outside any hedge

    inner = Hedge("inner", delay=SLOW)

    async def nested() -> int:
        if hedge_attempt() == 1:
            await anyio.sleep(SLOW)
        return await inner.call(_attempt_now)

    assert await hedge.call(nested) == 1  # the inner hedge's first attempt is its attempt 1


async def _attempt_now() -> int:
    await anyio.lowlevel.checkpoint()
    return hedge_attempt()


async def test_a_raising_listener_changes_nothing(
    backend_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: HedgeEvent) -> None:
        raise RuntimeError("listener bug")

    hedge = Hedge("h", delay=0.01, listeners=[broken])
    op = Attempts({1: (SLOW, None), 2: (0.0, None)})
    with caplog.at_level(logging.ERROR, logger="dwcp_resilience"):
        assert await hedge.call(op) == ("x", 2)
    assert "listener" in caplog.text
    hedge.remove_listener(broken)
    events: RecordingListener[HedgeEvent] = RecordingListener()
    hedge.add_listener(events)
    assert await hedge.call(Attempts({1: (SLOW, None), 2: (0.0, None)})) == ("x", 2)
    assert [type(e) for e in events.events] == [HedgeStarted, HedgeWon]


async def test_not_callable_and_sync_functions_are_refused(backend_name: str) -> None:
    hedge = Hedge("h")

    async def coro() -> None:
        pass

    with pytest.raises(NotCallable):
        await hedge.call(coro())  # type: ignore[arg-type]
    assert hedge.name == "h" and hedge.max_hedged_attempts == 1

    async def calls_a_coroutine() -> None:
        await hedge.call(coro())  # type: ignore[arg-type]

    outer = Hedge("outer", delay=SLOW)
    with pytest.raises(NotCallable) as info:  # a NotCallable in an attempt ends the race
        await outer.call(calls_a_coroutine)
    assert "ended by this exception" in info.value.__notes__[0]
    with pytest.raises(TypeError, match="async def"):
        hedge(lambda: None)  # type: ignore[arg-type, return-value]
    assert hedge.statistics().calls == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"delay": -1.0}, ValueError, "delay"),
        ({"delay": math.nan}, ValueError, "delay"),
        ({"delay": True}, TypeError, "delay"),
        ({"delay": "1s"}, TypeError, "delay"),
        ({"max_hedged_attempts": 0}, ValueError, "max_hedged_attempts"),
        ({"max_hedged_attempts": 11}, ValueError, "max_hedged_attempts"),
        ({"max_hedged_attempts": True}, TypeError, "max_hedged_attempts"),
        ({"hedge_on": 3}, TypeError, "hedge_on"),
        ({"hedge_after_failure": 1}, TypeError, "hedge_after_failure"),
        ({"budget_ratio": -0.1}, ValueError, "budget_ratio"),
        ({"budget_ratio": math.inf}, ValueError, "budget_ratio"),
        ({"min_hedges_per_second": -1}, ValueError, "min_hedges_per_second"),
        ({"budget_window": 0}, ValueError, "budget_window"),
        ({"budget": "yes"}, TypeError, "budget"),
        ({"budget": RetryBudget(), "budget_ratio": 0.5}, ValueError, "budget"),
        ({"clock": 5}, TypeError, "clock"),
        ({"listeners": [1]}, TypeError, "listener"),
        ({"name": ""}, ValueError, "name"),
    ],
)
def test_bad_config_fails_at_construction(
    kwargs: dict[str, Any], error: type[Exception], field: str
) -> None:
    args = {"name": "h", **kwargs}
    with pytest.raises(error, match=field):
        Hedge(**args)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"quantile": 0.0}, "quantile"),
        ({"quantile": 1.5}, "quantile"),
        ({"window": 0}, "window"),
        ({"window": 5, "min_samples": 6}, "min_samples"),
        ({"fallback": -1.0}, "fallback"),
        ({"fallback": math.inf}, "fallback"),
        ({"minimum": -0.001}, "minimum"),
        ({"minimum": math.inf}, "minimum"),
        ({"minimum": math.nan}, "minimum"),
    ],
)
def test_bad_percentile_fails_at_construction(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Percentile(**kwargs)


def test_repr_and_statistics_before_any_call() -> None:
    hedge = Hedge("h", delay=Percentile(0.95, fallback=0.5))
    assert "p95" in repr(hedge) and "'h'" in repr(hedge)
    assert hedge.statistics().delay == 0.5
    assert hedge.percentile == Percentile(0.95, fallback=0.5)
    assert hedge.budget is not None and hedge.budget.name == "h-budget"
    assert Hedge("x", budget_ratio=None).budget is None


# --- many calls at once, against an oracle --------------------------------------------------------


@pytest.mark.virtual_time
async def test_many_concurrent_calls_match_an_oracle(backend_name: str) -> None:
    """500 calls at once, each with its own seeded attempt durations: every call returns the
    attempt the oracle says finishes first, at the oracle's time, and nothing keeps running."""
    rng = random.Random(2026)
    delay = 1.0
    hedge = Hedge("h", delay=delay, max_hedged_attempts=2, budget_ratio=None)
    plans = [[rng.choice([0.2, 0.8, 1.5, 3.0, 6.0]) for _ in range(3)] for _ in range(500)]
    running = 0
    starts = 0
    results: dict[int, tuple[int, float]] = {}

    async def attempt(index: int) -> int:
        nonlocal running, starts
        number = hedge_attempt()
        starts += 1
        running += 1
        try:
            await anyio.sleep(plans[index][number - 1])
            return number
        finally:
            running -= 1

    async def one(index: int) -> None:
        begin = anyio.current_time()
        number = await hedge.call(attempt, index)
        results[index] = (number, anyio.current_time() - begin)

    async with anyio.create_task_group() as tg:
        for index in range(500):
            tg.start_soon(one, index)
    expected_starts = 0
    for index, plan in enumerate(plans):
        # attempt n starts at (n - 1) * delay if nothing finished before then
        ends: list[tuple[float, int]] = []
        for n in range(3):
            start = n * delay
            if ends and min(ends)[0] <= start:
                break
            ends.append((start + plan[n], n + 1))
        finish, winner = min(ends)
        expected_starts += len(ends)
        got_winner, got_finish = results[index]
        assert got_winner == winner, index
        assert got_finish == pytest.approx(finish), index
    assert starts == expected_starts
    assert running == 0
    stats = hedge.statistics()
    assert stats.calls == 500 and stats.hedges_started == expected_starts - 500
