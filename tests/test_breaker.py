"""CircuitBreaker, the async shell: on asyncio and trio in virtual time, on uvloop in real time.

Tests marked ``virtual_time`` sleep for long stretches and skip uvloop; the others use waits of a few
tens of milliseconds, so they run on uvloop too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from dwcp_resilience import CircuitOpen, DeadlineExceeded, Event, OperationContext
from dwcp_resilience.policies.breaker import (
    BreakerRejected,
    BreakerState,
    BreakerStateChanged,
    CircuitBreaker,
    CountWindow,
    TimeWindow,
)
from dwcp_resilience.testing import FakeClock, RecordingListener

pytestmark = pytest.mark.anyio

CLOSED, HALF_OPEN, OPEN = BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN


async def ok() -> str:
    return "ok"


async def down() -> str:
    raise ConnectionError("down")


async def sleeper(seconds: float, value: str = "slow") -> str:
    await anyio.sleep(seconds)
    return value


async def trip(breaker: CircuitBreaker, failures: int) -> None:
    for _ in range(failures):
        with pytest.raises(ConnectionError):
            await breaker.call(down)


async def settle(predicate: Callable[[], bool], rounds: int = 10_000) -> None:
    """Yield to the loop until ``predicate()`` holds (bounded)."""
    for _ in range(rounds):
        if predicate():
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError("the loop never settled")


def changes(recorder: RecordingListener[Event]) -> list[BreakerStateChanged]:
    return [e for e in recorder.events if isinstance(e, BreakerStateChanged)]


def transitions(recorder: RecordingListener[Event]) -> list[tuple[BreakerState, BreakerState, str]]:
    return [(e.old, e.new, e.reason) for e in changes(recorder)]


# -- the Go semantics, made correct ---------------------------------------------------------------


async def test_trips_after_consecutive_failures_and_rejects_without_running(
    anyio_backend: Any,
) -> None:
    breaker = CircuitBreaker("db", max_failures=3, reset_timeout=10.0)
    await trip(breaker, 2)
    assert await breaker.call(ok) == "ok"  # a success resets the consecutive count
    await trip(breaker, 2)
    assert breaker.state is CLOSED
    await trip(breaker, 1)
    assert breaker.state is OPEN
    ran = False

    async def callee() -> None:
        nonlocal ran
        ran = True

    with pytest.raises(CircuitOpen) as info:
        await breaker.call(callee)
    assert not ran
    assert info.value.name == "db"
    assert info.value.retry_after == pytest.approx(10.0, abs=0.5)
    stats = breaker.statistics()
    assert (stats.successes, stats.failures, stats.rejected) == (1, 5, 1)
    assert stats.state_changes == {(CLOSED, OPEN): 1}
    assert int(stats.state) == 2


@pytest.mark.virtual_time
async def test_lazy_half_open_then_close(anyio_backend: Any) -> None:
    recorder: RecordingListener[Event] = RecordingListener()
    breaker = CircuitBreaker("db", max_failures=1, reset_timeout=60.0, listeners=[recorder])
    await trip(breaker, 1)
    await anyio.sleep(59.9)
    assert breaker.state is OPEN
    await anyio.sleep(0.1)
    assert breaker.state is HALF_OPEN  # a state read makes the due move, like a call would
    for _ in range(3):
        assert await breaker.call(ok) == "ok"
    assert breaker.state is CLOSED
    assert transitions(recorder) == [
        (CLOSED, OPEN, "consecutive_failures"),
        (OPEN, HALF_OPEN, "reset_timeout"),
        (HALF_OPEN, CLOSED, "probes_succeeded"),
    ]
    stats = breaker.statistics()
    assert stats.state_changes == {(CLOSED, OPEN): 1, (OPEN, HALF_OPEN): 1, (HALF_OPEN, CLOSED): 1}


@pytest.mark.virtual_time
async def test_half_open_failure_reopens_for_a_new_period(anyio_backend: Any) -> None:
    breaker = CircuitBreaker("db", max_failures=1, reset_timeout=5.0)
    await trip(breaker, 1)
    await anyio.sleep(5)
    assert await breaker.call(ok) == "ok"
    await trip(breaker, 1)
    assert breaker.state is OPEN
    with pytest.raises(CircuitOpen) as info:
        await breaker.call(ok)
    assert info.value.retry_after == pytest.approx(5.0)


@pytest.mark.parametrize("max_probes", [1, 3])
async def test_thundering_herd_admits_exactly_max_probes(
    anyio_backend: Any, max_probes: int
) -> None:
    """R16: 1000 calls the moment the break elapses run the callee exactly max_probes times."""
    breaker = CircuitBreaker(
        "herd",
        max_failures=1,
        reset_timeout=0.05,
        half_open_max_calls=max_probes,
        half_open_max_wait=30.0,
    )
    await trip(breaker, 1)
    gate = anyio.Event()
    invoked = 0
    results: list[str] = []
    rejected: list[CircuitOpen] = []

    async def probe() -> str:
        nonlocal invoked
        invoked += 1
        await gate.wait()
        return "ok"

    async def one() -> None:
        try:
            results.append(await breaker.call(probe))
        except CircuitOpen as exc:
            rejected.append(exc)

    await anyio.sleep(0.05)
    async with anyio.create_task_group() as tg:
        for _ in range(1000):
            tg.start_soon(one)
        await settle(lambda: invoked + len(rejected) == 1000)
        assert invoked == max_probes
        assert len(rejected) == 1000 - max_probes
        assert all(exc.retry_after is not None for exc in rejected)
        assert breaker.statistics().half_open_probes == max_probes
        gate.set()
    assert results == ["ok"] * max_probes
    stats = breaker.statistics()
    assert stats.rejected == 1000 - max_probes
    assert stats.inflight == 0 and stats.half_open_probes == 0


@pytest.mark.virtual_time
async def test_late_success_from_an_earlier_generation_does_not_close(anyio_backend: Any) -> None:
    """The Go stale-success bug: a slow probe's success lands after a fast probe reopened it."""
    breaker = CircuitBreaker(
        "db", max_failures=1, reset_timeout=10.0, half_open_max_calls=2, half_open_successes=1
    )
    await trip(breaker, 1)
    await anyio.sleep(10)
    outcomes: list[str] = []

    async def slow_probe() -> None:
        outcomes.append(await breaker.call(sleeper, 3.0))

    async with anyio.create_task_group() as tg:
        tg.start_soon(slow_probe)
        await settle(lambda: breaker.statistics().half_open_probes == 1)
        await trip(breaker, 1)  # the second probe fails fast: reopen
        assert breaker.state is OPEN
    assert outcomes == ["slow"]
    assert breaker.state is OPEN
    stats = breaker.statistics()
    assert stats.stale == 1 and stats.successes == 0


async def test_cancelled_probe_frees_its_slot(anyio_backend: Any) -> None:
    breaker = CircuitBreaker("db", max_failures=1, reset_timeout=0.02, half_open_max_wait=30.0)
    await trip(breaker, 1)
    await anyio.sleep(0.02)
    async with anyio.create_task_group() as tg:
        tg.start_soon(breaker.call, sleeper, 3600.0)
        await settle(lambda: breaker.statistics().half_open_probes == 1)
        with pytest.raises(CircuitOpen):
            await breaker.call(ok)  # the only slot is taken
        tg.cancel_scope.cancel()
    stats = breaker.statistics()
    assert stats.state is HALF_OPEN
    assert (stats.half_open_probes, stats.ignored, stats.failures) == (0, 1, 1)
    assert await breaker.call(ok) == "ok"  # the freed slot admits the next probe at once


async def test_cancellation_is_never_a_failure(anyio_backend: Any) -> None:
    """R06: a closed breaker with threshold 1 survives 5 cancelled calls; the cancel propagates."""
    breaker = CircuitBreaker("db", max_failures=1)
    seen: list[type[BaseException]] = []

    async def guarded() -> None:
        try:
            await breaker.call(sleeper, 3600.0)
        except BaseException as exc:
            seen.append(type(exc))
            raise

    for _ in range(5):
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(guarded)
                await anyio.lowlevel.checkpoint()
                scope.cancel()
        assert scope.cancelled_caught
    assert seen == [anyio.get_cancelled_exc_class()] * 5
    stats = breaker.statistics()
    assert (stats.state, stats.failures, stats.ignored, stats.inflight) == (CLOSED, 0, 5, 0)


async def test_failure_predicate_that_raises_does_not_leak_the_probe_slot(
    anyio_backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(exc: BaseException) -> bool:
        raise ZeroDivisionError("predicate bug")

    breaker = CircuitBreaker("db", max_failures=1, reset_timeout=0.02, failure=broken)
    with caplog.at_level(logging.ERROR, logger="dwcp_resilience"):
        await trip(breaker, 1)  # a raising predicate counts a failure
        assert breaker.state is OPEN
        await anyio.sleep(0.02)
        await trip(breaker, 1)  # the probe: its slot comes back, the breaker reopens
    stats = breaker.statistics()
    assert stats.state is OPEN and stats.half_open_probes == 0 and stats.inflight == 0
    assert "predicate raised" in caplog.text


async def test_result_predicate_marks_failures_and_may_raise(
    anyio_backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def picky(result: object) -> bool:
        if result == "boom":
            raise ValueError("predicate bug")
        return result is None

    async def value(v: str | None) -> str | None:
        return v

    breaker = CircuitBreaker("db", max_failures=3, failure_result=picky)
    assert await breaker.call(value, None) is None  # returned, but counted as a failure
    assert await breaker.call(value, "x") == "x"
    with caplog.at_level(logging.ERROR, logger="dwcp_resilience"):
        assert await breaker.call(value, "boom") == "boom"
    stats = breaker.statistics()
    assert (stats.failures, stats.successes) == (2, 1)


async def test_listener_that_raises_never_changes_the_outcome(
    anyio_backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """R35: the caller sees the callee's error, the transition completes, the next listener runs."""

    def bad(event: Event) -> None:
        raise RuntimeError("listener bug")

    recorder: RecordingListener[Event] = RecordingListener()
    breaker = CircuitBreaker("db", max_failures=1, listeners=[bad, recorder])
    with caplog.at_level(logging.ERROR, logger="dwcp_resilience"):
        await trip(breaker, 1)
    assert breaker.state is OPEN
    assert transitions(recorder) == [(CLOSED, OPEN, "consecutive_failures")]
    logged = [r for r in caplog.records if r.getMessage().startswith("listener")]
    assert len(logged) == 1
    with caplog.at_level(logging.ERROR, logger="dwcp_resilience"), pytest.raises(CircuitOpen):
        await breaker.call(ok)
    rejections = [e for e in recorder.events if isinstance(e, BreakerRejected)]
    assert len(rejections) == 1 and rejections[0].state is OPEN
    assert rejections[0].retry_after == pytest.approx(60.0, abs=0.5)


async def test_listeners_are_sync_callables() -> None:
    """R37: an async def listener is refused at registration."""

    async def listener(event: Event) -> None:
        return None

    with pytest.raises(TypeError):
        CircuitBreaker("db", listeners=[listener])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        CircuitBreaker("db").add_listener(listener)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"max_failures": 0}, ValueError),
        ({"max_failures": True}, TypeError),
        ({"max_failures": "5"}, TypeError),
        ({"max_failures": 1.5}, TypeError),
        ({"reset_timeout": math.nan}, ValueError),
        ({"reset_timeout": -1}, ValueError),
        ({"reset_timeout": 0}, ValueError),
        ({"reset_timeout": math.inf}, ValueError),
        ({"half_open_max_calls": 0}, ValueError),
        ({"half_open_successes": -1}, ValueError),
        ({"timeout": 0}, ValueError),
        ({"timeout": math.nan}, ValueError),
        ({"timeout": "1"}, TypeError),
        ({"record_latency": 1}, TypeError),
        ({"clock": 5}, TypeError),
        ({"failure": "ConnectionError"}, TypeError),
        ({"failure_result": 3}, TypeError),
        ({"window": CountWindow(10), "minimum_calls": 11}, ValueError),
        ({"slow_call_duration": 1.0}, ValueError),
    ],
)
async def test_bad_config_names_the_field(options: dict[str, Any], error: type[Exception]) -> None:
    """R31: bad settings fail at construction, naming the field."""
    with pytest.raises(error) as info:
        CircuitBreaker("db", **options)
    field = next(iter(options)) if "minimum_calls" not in options else "minimum_calls"
    assert field in str(info.value)


async def test_bad_names() -> None:
    with pytest.raises(ValueError, match="name"):
        CircuitBreaker("")
    with pytest.raises(TypeError, match="name"):
        CircuitBreaker(5)  # type: ignore[arg-type]


# -- manual control, statistics, listeners -------------------------------------------------------


async def test_reset_force_open_and_disable_update_stats_and_notify(anyio_backend: Any) -> None:
    recorder: RecordingListener[Event] = RecordingListener()
    breaker = CircuitBreaker("db", max_failures=2, listeners=[recorder])
    breaker.force_open()
    with pytest.raises(CircuitOpen) as info:
        await breaker.call(ok)
    assert info.value.retry_after is None  # isolated until reset()
    assert breaker.statistics().forced_open
    breaker.reset()
    assert breaker.state is CLOSED and await breaker.call(ok) == "ok"
    breaker.disable()  # already CLOSED: no event, but a new epoch and the flag
    await trip(breaker, 10)
    stats = breaker.statistics()
    assert stats.state is CLOSED and stats.disabled and stats.failures == 10
    breaker.reset()
    await trip(breaker, 2)
    assert breaker.state is OPEN
    breaker.reset()
    assert [(e.old, e.new, e.reason, e.manual) for e in changes(recorder)] == [
        (CLOSED, OPEN, "force_open", True),
        (OPEN, CLOSED, "reset", True),
        (CLOSED, OPEN, "consecutive_failures", False),
        (OPEN, CLOSED, "reset", True),
    ]
    counted = breaker.statistics().state_changes
    assert counted == {(CLOSED, OPEN): 2, (OPEN, CLOSED): 2}


@pytest.mark.virtual_time
async def test_trip_opens_like_a_trip_and_recovers_on_its_own(anyio_backend: Any) -> None:
    recorder: RecordingListener[Event] = RecordingListener()
    breaker = CircuitBreaker("db", reset_timeout=10.0, half_open_successes=1, listeners=[recorder])
    breaker.trip("fleet_quorum")
    assert breaker.state is OPEN
    with pytest.raises(CircuitOpen) as rejected:
        await breaker.call(ok)
    assert rejected.value.retry_after == pytest.approx(10.0, abs=0.01)
    await anyio.sleep(5.0)
    breaker.trip("fleet_quorum")  # already open: the open period starts again
    await anyio.sleep(6.0)
    assert breaker.state is OPEN
    await anyio.sleep(4.0)
    assert await breaker.call(ok) == "ok"
    assert breaker.state is CLOSED
    assert [(e.old, e.new, e.reason, e.manual) for e in changes(recorder)] == [
        (CLOSED, OPEN, "fleet_quorum", False),
        (OPEN, HALF_OPEN, "reset_timeout", False),
        (HALF_OPEN, CLOSED, "probes_succeeded", False),
    ]  # the restart of the open period is not a state change
    with pytest.raises(ValueError, match="reason"):
        breaker.trip("")


async def test_statistics_are_a_frozen_snapshot_and_repr_is_live(anyio_backend: Any) -> None:
    breaker = CircuitBreaker("db", max_failures=2)
    before = breaker.statistics()
    await trip(breaker, 1)
    with pytest.raises(AttributeError):
        before.failures = 3  # type: ignore[misc]
    assert before.failures == 0 and breaker.statistics().failures == 1
    assert "closed" in repr(breaker) and "1 consecutive" in repr(breaker)
    await trip(breaker, 1)
    assert "open" in repr(breaker) and "probe in" in repr(breaker)
    breaker.force_open()
    assert "forced" in repr(breaker)


async def test_listener_can_be_added_and_removed(anyio_backend: Any) -> None:
    recorder: RecordingListener[Event] = RecordingListener()
    breaker = CircuitBreaker("db", max_failures=1)
    breaker.add_listener(recorder)
    await trip(breaker, 1)
    with pytest.raises(CircuitOpen):
        await breaker.call(ok)
    breaker.remove_listener(recorder)
    with pytest.raises(CircuitOpen):
        await breaker.call(ok)
    assert len(recorder.events) == 2  # one state change, one rejection


# -- outcomes -------------------------------------------------------------------------------------


async def test_ignored_and_unlisted_exceptions(anyio_backend: Any) -> None:
    async def raising(exc: BaseException) -> None:
        raise exc

    breaker = CircuitBreaker("db", max_failures=1, failure=ConnectionError, ignore=TimeoutError)
    with pytest.raises(KeyError):
        await breaker.call(raising, KeyError("x"))  # the callee answered: a success
    with pytest.raises(TimeoutError):
        await breaker.call(raising, TimeoutError())  # neutral
    inner = CircuitBreaker("inner")
    inner.force_open()
    with pytest.raises(CircuitOpen):
        await breaker.call(inner.call, ok)  # our own rejection from inside: neutral
    stats = breaker.statistics()
    assert (stats.successes, stats.failures, stats.ignored, stats.state) == (1, 0, 2, CLOSED)
    await trip(breaker, 1)
    assert breaker.state is OPEN


async def test_per_call_timeout_cancels_and_counts_a_failure(anyio_backend: Any) -> None:
    finished: list[str] = []

    async def stuck() -> None:
        try:
            await anyio.sleep(3600)
        finally:
            finished.append("cleaned up")

    breaker = CircuitBreaker("db", max_failures=2, timeout=0.02, failure=ConnectionError)
    with pytest.raises(DeadlineExceeded) as info:
        await breaker.call(stuck)
    assert info.value.name == "db.timeout"
    assert finished == ["cleaned up"]  # the callee was cancelled: no leaked work
    with pytest.raises(DeadlineExceeded):
        async with breaker:
            await stuck()
    assert breaker.state is OPEN
    stats = breaker.statistics()
    assert stats.failures == 2 and stats.inflight == 0
    assert await CircuitBreaker("fast", timeout=1.0).call(ok) == "ok"


async def test_timeout_after_the_outer_deadline_counts_nothing(anyio_backend: Any) -> None:
    breaker = CircuitBreaker("db", max_failures=1, timeout=5.0)
    context = OperationContext.with_timeout("op", -1.0)
    with context.activate(), pytest.raises(DeadlineExceeded):
        await breaker.call(ok)
    stats = breaker.statistics()
    assert (stats.admitted, stats.failures, stats.state) == (0, 0, CLOSED)


# -- what the Go package lacked ------------------------------------------------------------------


@pytest.mark.virtual_time
async def test_slow_call_rate_trips_without_cancelling(anyio_backend: Any) -> None:
    recorder: RecordingListener[Event] = RecordingListener()
    breaker = CircuitBreaker(
        "db",
        max_failures=None,
        window=CountWindow(4),
        slow_call_duration=1.0,
        slow_call_rate_threshold=0.5,
        listeners=[recorder],
    )
    assert await breaker.call(sleeper, 2.0) == "slow"  # slow, but it completes
    assert await breaker.call(ok) == "ok"
    assert await breaker.call(ok) == "ok"
    assert breaker.state is CLOSED
    assert await breaker.call(sleeper, 1.5) == "slow"
    assert breaker.state is OPEN
    assert transitions(recorder)[-1] == (CLOSED, OPEN, "slow_call_rate")
    stats = breaker.statistics()
    assert stats.slow_calls == 2 and stats.latency_count == 4
    assert stats.latency_counts[0] == 2  # two no-op calls in the 5 ms bucket
    assert stats.latency_sum == pytest.approx(3.5)


@pytest.mark.virtual_time
async def test_time_window_rate_with_minimum_calls(anyio_backend: Any) -> None:
    breaker = CircuitBreaker(
        "db",
        max_failures=None,
        window=TimeWindow(10.0),
        failure_rate_threshold=0.5,
        minimum_calls=4,
    )
    assert breaker.window_duration == 10.0
    await trip(breaker, 3)  # 3 calls: below the minimum
    assert breaker.state is CLOSED
    await anyio.sleep(11)  # they slid out of the window
    assert await breaker.call(ok) == "ok"
    await trip(breaker, 2)
    assert breaker.state is CLOSED  # 2 failures in 3 calls: still below the minimum
    assert await breaker.call(ok) == "ok"
    await trip(breaker, 1)  # 3 of 5
    assert breaker.state is OPEN
    assert breaker.statistics().failure_rate == 0.6  # what tripped it (cleared on the next CLOSED)


@pytest.mark.virtual_time
async def test_half_open_max_wait_unwedges_a_stuck_probe(anyio_backend: Any) -> None:
    breaker = CircuitBreaker("db", max_failures=1, reset_timeout=10.0, half_open_max_wait=5.0)
    await trip(breaker, 1)
    await anyio.sleep(10)
    async with anyio.create_task_group() as tg:
        tg.start_soon(breaker.call, sleeper, 3600.0)  # the probe hangs
        await settle(lambda: breaker.statistics().half_open_probes == 1)
        await anyio.sleep(4.9)
        with pytest.raises(CircuitOpen) as info:
            await breaker.call(ok)
        assert info.value.retry_after == pytest.approx(0.1)
        await anyio.sleep(0.1)
        with pytest.raises(CircuitOpen) as info:
            await breaker.call(ok)
        assert breaker.state is OPEN  # reopened: the stuck probe cannot wedge it
        assert info.value.retry_after == pytest.approx(10.0)
        await anyio.sleep(10)
        assert await breaker.call(ok) == "ok"  # a fresh probe
        tg.cancel_scope.cancel()
    assert breaker.statistics().stale == 1  # the stuck probe's end belongs to an old epoch


@pytest.mark.virtual_time
async def test_open_duration_generator_backs_off(anyio_backend: Any) -> None:
    breaker = CircuitBreaker(
        "db", max_failures=1, half_open_successes=1, open_duration=lambda n: 2.0**n
    )
    await trip(breaker, 1)
    for expected in (2.0, 4.0, 8.0):
        with pytest.raises(CircuitOpen) as info:
            await breaker.call(ok)
        assert info.value.retry_after == pytest.approx(expected)
        await anyio.sleep(expected)
        await trip(breaker, 1)  # the probe fails: the next period is longer
    await anyio.sleep(16.0)
    assert await breaker.call(ok) == "ok"
    stats = breaker.statistics()
    assert breaker.state is CLOSED
    assert (stats.consecutive_opens, stats.times_opened) == (0, 4)  # 4 openings, none in force


@pytest.mark.virtual_time
async def test_a_bad_open_duration_falls_back_and_is_logged(
    anyio_backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = CircuitBreaker("db", max_failures=1, reset_timeout=3.0, open_duration=lambda n: -1.0)
    with caplog.at_level(logging.ERROR, logger="dwcp_resilience"):
        await trip(breaker, 1)
    assert "open_duration failed" in caplog.text
    with pytest.raises(CircuitOpen) as info:
        await breaker.call(ok)
    assert info.value.retry_after == pytest.approx(3.0)


@pytest.mark.virtual_time
async def test_record_latency_fills_the_histogram(anyio_backend: Any) -> None:
    breaker = CircuitBreaker("db", record_latency=True)
    await breaker.call(sleeper, 0.3)
    await breaker.call(sleeper, 3.0)
    await trip(breaker, 1)
    stats = breaker.statistics()
    assert stats.latency_buckets == (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
    assert stats.latency_count == 3
    assert stats.latency_counts[0] == 1 and stats.latency_counts[6] == 2  # le 0.005, le 0.5
    assert stats.latency_counts[9] == 3 and stats.latency_counts[-1] == 3
    assert stats.latency_sum == pytest.approx(3.3)
    assert CircuitBreaker("plain").statistics().latency_count == 0


# -- concurrency and the idioms -------------------------------------------------------------------


async def test_1000_concurrent_calls_match_the_oracle(anyio_backend: Any) -> None:
    """R22: exact counters with concurrent calls, half of them failing; each transition once."""
    recorder: RecordingListener[Event] = RecordingListener()
    breaker = CircuitBreaker(
        "db",
        max_failures=None,
        window=CountWindow(1000),
        failure_rate_threshold=0.9,
        listeners=[recorder],
    )

    async def flaky(i: int) -> int:
        await anyio.lowlevel.checkpoint()
        if i % 2:
            raise ConnectionError
        return i

    async def one(i: int) -> None:
        with contextlib.suppress(ConnectionError):
            await breaker.call(flaky, i)

    async with anyio.create_task_group() as tg:
        for i in range(1000):
            tg.start_soon(one, i)
    stats = breaker.statistics()
    assert (stats.admitted, stats.successes, stats.failures, stats.rejected) == (1000, 500, 500, 0)
    assert stats.window_calls == 1000 and stats.failure_rate == 0.5 and stats.inflight == 0
    assert recorder.events == []

    # Consecutive mode: all 1000 are admitted while CLOSED; the 5th failure trips it once, and
    # the 995 failures that land afterwards belong to the old epoch.
    tripping = CircuitBreaker("db2", max_failures=5, listeners=[recorder])

    async def fail_later() -> None:
        await anyio.lowlevel.checkpoint()
        raise ConnectionError

    async def call_failing() -> None:
        with pytest.raises(ConnectionError):
            await tripping.call(fail_later)

    async with anyio.create_task_group() as tg:
        for _ in range(1000):
            tg.start_soon(call_failing)
    stats = tripping.statistics()
    assert (stats.admitted, stats.failures, stats.stale, stats.inflight) == (1000, 5, 995, 0)
    assert transitions(recorder) == [(CLOSED, OPEN, "consecutive_failures")]


async def test_async_with_on_a_shared_breaker(anyio_backend: Any) -> None:
    breaker = CircuitBreaker("db", max_failures=100)

    async def one(i: int) -> None:
        try:
            async with breaker:
                await anyio.lowlevel.checkpoint()
                if i % 3 == 0:
                    raise ConnectionError
        except ConnectionError:
            pass

    async with anyio.create_task_group() as tg:
        for i in range(60):
            tg.start_soon(one, i)
    stats = breaker.statistics()
    assert (stats.successes, stats.failures, stats.inflight) == (40, 20, 0)
    breaker.force_open()
    with pytest.raises(CircuitOpen):
        async with breaker:
            raise AssertionError("not admitted")


async def test_decorator_keeps_metadata_and_binds_methods(anyio_backend: Any) -> None:
    breaker = CircuitBreaker("db", max_failures=2)

    class Client:
        def __init__(self) -> None:
            self.calls = 0

        @breaker
        async def fetch(self, key: str, *, suffix: str = "") -> str:
            """Fetch a key."""
            self.calls += 1
            if key == "bad":
                raise ConnectionError
            return key + suffix

    client = Client()
    assert await client.fetch("a", suffix="!") == "a!"
    assert Client.fetch.__name__ == "fetch" and Client.fetch.__doc__ == "Fetch a key."
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await client.fetch("bad")
    with pytest.raises(CircuitOpen):
        await client.fetch("a")
    assert client.calls == 3
    with pytest.raises(TypeError):
        breaker(lambda: None)  # type: ignore[arg-type, return-value]


@pytest.mark.parametrize("idiom", ["call", "decorator", "async with"])
async def test_every_idiom_follows_the_same_state_machine(anyio_backend: Any, idiom: str) -> None:
    breaker = CircuitBreaker(
        "db", max_failures=2, reset_timeout=0.02, half_open_successes=1, window=None
    )

    async def run(fn: Callable[[], Awaitable[str]]) -> str:
        if idiom == "call":
            return await breaker.call(fn)
        if idiom == "decorator":
            return await breaker(fn)()
        async with breaker:
            return await fn()

    assert await run(ok) == "ok"
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await run(down)
    with pytest.raises(CircuitOpen):
        await run(ok)
    await anyio.sleep(0.02)
    assert await run(ok) == "ok"
    stats = breaker.statistics()
    assert (stats.state, stats.successes, stats.failures, stats.rejected) == (CLOSED, 2, 2, 1)
    assert stats.admitted == 4 and stats.inflight == 0


@pytest.mark.parametrize("window", [CountWindow(10), TimeWindow(30.0)])
async def test_windowed_breakers_on_every_idiom(anyio_backend: Any, window: Any) -> None:
    breaker = CircuitBreaker("db", max_failures=None, window=window, minimum_calls=4)
    assert await breaker.call(ok) == "ok"
    assert await breaker(ok)() == "ok"
    await trip(breaker, 1)
    async with breaker:
        pass
    assert breaker.state is CLOSED
    await trip(breaker, 1)  # 2 of 5 failed: 40% < 50%
    assert breaker.state is CLOSED
    await trip(breaker, 1)  # 3 of 6
    assert breaker.state is OPEN


async def test_injected_clock(anyio_backend: Any) -> None:
    clock = FakeClock(100.0)
    breaker = CircuitBreaker("db", max_failures=1, reset_timeout=10.0, clock=clock)
    await trip(breaker, 1)
    clock.advance(9.0)
    with pytest.raises(CircuitOpen) as info:
        await breaker.call(ok)
    assert info.value.retry_after == pytest.approx(1.0)
    clock.advance(1.0)
    assert breaker.state is HALF_OPEN


_module_breaker = CircuitBreaker("module-level", max_failures=1, reset_timeout=3600.0)


def test_a_module_level_breaker_works_across_event_loops() -> None:
    """R47: built at import time (no loop), used from two asyncio.run() calls and from uvloop."""
    import uvloop

    async def first() -> None:
        await trip(_module_breaker, 1)

    async def second() -> float | None:
        try:
            await _module_breaker.call(ok)
        except CircuitOpen as exc:
            return exc.retry_after
        raise AssertionError("not rejected")

    # Explicit runners: asyncio.run() would also reset the policy's current loop under pytest.
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        runner.run(first())
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        retry_after = runner.run(second())
    assert retry_after is not None and 3500 < retry_after <= 3600
    _module_breaker.reset()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(_module_breaker.call(ok)) == "ok"
    assert _module_breaker.statistics().state is CLOSED


async def test_exception_groups_are_classified_by_their_leaves(anyio_backend: Any) -> None:
    """R40: a group holding a failure type is a failure; a group of cancellations is neutral."""

    async def raising(exc: BaseException) -> None:
        raise exc

    breaker = CircuitBreaker("db", max_failures=2, failure=ConnectionError)
    with pytest.raises(ExceptionGroup):
        await breaker.call(raising, ExceptionGroup("tg", [ConnectionError()]))
    with pytest.raises(ExceptionGroup):
        await breaker.call(raising, ExceptionGroup("tg", [KeyError()]))
    group = BaseExceptionGroup("tg", [asyncio.CancelledError()])  # trio's has no constructor
    with pytest.raises(BaseExceptionGroup):
        await breaker.call(raising, group)
    stats = breaker.statistics()
    assert (stats.failures, stats.successes, stats.ignored) == (1, 1, 1)


async def test_sleeping_exactly_retry_after_gets_a_probe(anyio_backend: Any) -> None:
    """A caller that waits exactly ``retry_after`` is admitted: on uvloop (millisecond clock) float
    rounding of ``opened_at + reset_timeout`` used to reject about a third of such calls."""
    rejected = 0
    for _ in range(50):
        breaker = CircuitBreaker("db", max_failures=1, reset_timeout=0.02, half_open_successes=1)
        with pytest.raises(ConnectionError):
            await breaker.call(down)
        with pytest.raises(CircuitOpen) as info:
            await breaker.call(ok)
        assert info.value.retry_after is not None
        await anyio.sleep(info.value.retry_after)
        try:
            await breaker.call(ok)
        except CircuitOpen:
            rejected += 1
    assert rejected == 0


@pytest.mark.virtual_time
async def test_end_open_period_probes_at_once_and_keeps_the_backoff(anyio_backend: Any) -> None:
    recorder: RecordingListener[Event] = RecordingListener()
    breaker = CircuitBreaker(
        "db",
        max_failures=1,
        half_open_successes=1,
        open_duration=lambda n: 10.0 * n,
        listeners=[recorder],
    )
    assert not breaker.end_open_period()  # CLOSED: nothing to end
    await trip(breaker, 1)
    assert breaker.end_open_period("health_check")
    assert breaker.state is HALF_OPEN
    await trip(breaker, 1)  # the early probe fails: the next, longer, period
    with pytest.raises(CircuitOpen) as info:
        await breaker.call(ok)
    assert info.value.retry_after == pytest.approx(20.0)
    assert breaker.end_open_period()
    assert await breaker.call(ok) == "ok"  # the probe succeeds: CLOSED, backoff forgotten
    assert breaker.state is CLOSED
    assert breaker.statistics().consecutive_opens == 0
    assert (OPEN, HALF_OPEN, "health_check") in transitions(recorder)
    breaker.force_open()
    assert not breaker.end_open_period()  # an isolation stays until reset()
    assert breaker.state is OPEN
    with pytest.raises(ValueError):
        breaker.end_open_period("")
