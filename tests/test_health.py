"""HealthMonitor and checks: R38, the Go bugs, rise/fall, statistics, config, cancellation."""

from __future__ import annotations

import math
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dwcp_resilience.core.clock import loop_time
from dwcp_resilience.slo.checks import (
    CheckResult,
    CompositeCheck,
    HealthCheck,
    PingCheck,
    ThresholdCheck,
    evaluate,
)
from dwcp_resilience.slo.health import HealthChanged, HealthMonitor
from dwcp_resilience.testing import FakeClock, RecordingListener

pytestmark = pytest.mark.anyio


class Probe(HealthCheck):
    """A healthy check that records when it runs."""

    def __init__(self, name: str = "probe") -> None:
        super().__init__(name)
        self.times: list[float] = []

    async def check(self) -> object:
        self.times.append(anyio.current_time())
        return True


class Script(HealthCheck):
    """Returns the scripted results in turn (an exception instance is raised)."""

    def __init__(self, name: str, *results: object) -> None:
        super().__init__(name)
        self.results = list(results)

    async def check(self) -> object:
        result = self.results.pop(0)
        if isinstance(result, BaseException):
            raise result
        return result


async def raises() -> bool:
    raise RuntimeError("disk on fire")


async def hangs() -> bool:
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


async def returns_none() -> None:
    return None


async def returns_ok() -> str:
    return "ok"


async def twice_the_interval() -> bool:
    await anyio.sleep(20.0)
    return True


# --- R38 ------------------------------------------------------------------------------------------


@pytest.mark.virtual_time
async def test_r38_ten_intervals_of_bad_checks_each_unhealthy_with_reason_on_schedule(
    anyio_backend: Any,
) -> None:
    """Checks that raise, hang, return None or "ok", or take twice the interval are each reported
    unhealthy with their reason, every round; the per-check timeout holds and the monitor keeps its
    10 s grid for 10 intervals."""
    probe = Probe()
    checks = [
        PingCheck("raises", raises),
        PingCheck("hangs", hangs),
        PingCheck("none", returns_none),
        PingCheck("ok-string", returns_ok),
        PingCheck("slow", twice_the_interval),
        probe,
    ]
    monitor = HealthMonitor("r38", interval=10.0, timeout=5.0, checks=checks)
    start = anyio.current_time()
    async with monitor:
        await anyio.sleep(96.0)
        assert monitor.running
    assert not monitor.running
    assert probe.times == pytest.approx([start + 10.0 * k for k in range(10)], abs=1e-6)
    reasons = {
        "raises": "raised RuntimeError: disk on fire",
        "hangs": "timed out after 5s",
        "none": "returned garbage: None",
        "ok-string": "returned garbage: 'ok'",
        "slow": "timed out after 5s",
    }
    for name, reason in reasons.items():
        status = monitor.status(name)
        assert status.healthy is False, name
        assert status.error is not None and status.error.startswith(reason), (name, status.error)
        assert (status.checks, status.failures) == (10, 10), name
        assert status.last_success is None
    assert monitor.status("probe").healthy is True
    assert monitor.status("probe").checks == 10
    assert not monitor.healthy
    stats = monitor.statistics()
    assert (stats.rounds, stats.missed_rounds) == (10, 0)
    assert (stats.total_checks, stats.total_failures) == (60, 50)
    # The timed-out checks took exactly the timeout, the quick ones nothing.
    assert monitor.status("hangs").duration == pytest.approx(5.0)
    assert monitor.status("raises").duration == pytest.approx(0.0)


# --- the Go bugs ----------------------------------------------------------------------------------


@pytest.mark.virtual_time
async def test_go_bug_restart_after_stop_works(anyio_backend: Any) -> None:
    """Go's stop channel was never recreated: Start-Stop-Start-Stop panicked, and a restarted loop
    exited at once. Here both idioms restart and keep running rounds."""
    probe = Probe()
    monitor = HealthMonitor("m", interval=1.0, checks=[probe])
    for _ in range(2):
        async with monitor:
            await anyio.sleep(2.5)
        assert not monitor.running
    assert len(probe.times) == 6
    for _ in range(2):
        async with anyio.create_task_group() as tg:
            await monitor.start(tg)
            assert monitor.running
            await anyio.sleep(1.5)
            monitor.stop()
        assert not monitor.running
    assert len(probe.times) == 10
    monitor.stop()  # a no-op when stopped


@pytest.mark.virtual_time
async def test_go_bug_a_check_resisting_cancellation_does_not_stall_the_monitor(
    anyio_backend: Any,
) -> None:
    """Go waited for the whole round, so a check that ignored its context stalled the monitor.
    Here a check that shields itself for 27 s misses two turns (reported unhealthy, "still in
    progress") while the other checks stay on their 10 s grid."""

    calls = []

    async def stubborn() -> bool:
        calls.append(anyio.current_time())
        if len(calls) == 1:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(27.0)
        return True

    probe = Probe()
    monitor = HealthMonitor(
        "m", interval=10.0, timeout=5.0, checks=[PingCheck("s", stubborn), probe]
    )
    start = anyio.current_time()
    async with monitor:
        await anyio.sleep(35.0)
    assert probe.times == pytest.approx([start + 10.0 * k for k in range(4)], abs=1e-6)
    # round 0 ran (ends at 27 s, timed out); rounds 1 and 2 waited 5 s each for it and found it
    # still in progress (not started twice); round 3 ran again, and passed.
    assert calls == pytest.approx([start, start + 30.0], abs=1e-6)
    status = monitor.status("s")
    assert (status.checks, status.failures, status.healthy) == (4, 3, True)
    assert monitor.statistics().checks[0].consecutive_successes == 1


async def test_go_bug_a_check_that_never_ran_is_not_reported_healthy(anyio_backend: Any) -> None:
    """Go created each status with Healthy=true before the check ever ran."""
    monitor = HealthMonitor("m", checks=[Script("a", True)])
    assert monitor.status("a").healthy is None
    assert not monitor.healthy
    await monitor.check_now()
    assert monitor.status("a").healthy is True
    assert monitor.healthy


async def test_go_bug_zero_checks_healthy_is_a_documented_choice(anyio_backend: Any) -> None:
    """Go's IsHealthy() was true with zero checks, undocumented. Here it is the documented default,
    and ``empty_is_healthy=False`` flips it."""
    assert HealthMonitor("m").healthy is True
    assert HealthMonitor("m", empty_is_healthy=False).healthy is False
    assert await HealthMonitor("m").check_now() == {}


async def test_go_bug_rise_and_fall_thresholds(anyio_backend: Any) -> None:
    """Go flipped on every single result; rise/fall need N consecutive results (1/1 = Go)."""
    events: RecordingListener[HealthChanged] = RecordingListener()
    check = Script("a", False, False, True, False, False, False, True, True)
    monitor = HealthMonitor("m", rise=2, fall=3, checks=[check], listeners=[events])
    seen = []
    for _ in range(8):
        await monitor.check_now()
        seen.append(monitor.status("a").healthy)
    assert seen == [None, None, None, None, None, False, False, True]
    assert [(e.check, e.healthy) for e in events.events] == [
        ("a", False),
        ("a", True),
        (None, True),
    ]
    go = HealthMonitor("go", checks=[Script("a", False, True, False)])
    flips = []
    for _ in range(3):
        await go.check_now()
        flips.append(go.status("a").healthy)
    assert flips == [False, True, False]


async def test_go_bug_callbacks_fire_inline_in_order(anyio_backend: Any) -> None:
    """Go fired each callback in its own goroutine (order unspecified), set without a lock."""
    seen: list[str] = []

    def broken(event: HealthChanged) -> None:
        raise RuntimeError("listener bug")

    monitor = HealthMonitor("m", checks=[Script("a", RuntimeError("x"), True)], listeners=[broken])
    monitor.on_unhealthy(lambda name, reason: seen.append(f"unhealthy {name}: {reason}"))
    monitor.on_healthy(lambda name: seen.append(f"healthy {name}"))
    monitor.add_listener(lambda e: seen.append(f"event {e.check} {e.healthy}"))
    await monitor.check_now()
    assert seen == ["unhealthy a: raised RuntimeError: x", "event a False"]
    await monitor.check_now()
    assert seen[2:] == ["healthy a", "event a True", "event None True"]


@pytest.mark.virtual_time
async def test_go_bug_composite_runs_concurrently_and_reports_every_failure(
    anyio_backend: Any,
) -> None:
    """Go's composite ran its checks in sequence and stopped at the first error."""

    async def slow_false() -> bool:
        await anyio.sleep(3.0)
        return False

    async def slow_true() -> bool:
        await anyio.sleep(3.0)
        return True

    composite = CompositeCheck(
        "all", PingCheck("a", slow_false), PingCheck("b", raises), PingCheck("c", slow_true)
    )
    start = anyio.current_time()
    result = await evaluate(composite)
    assert anyio.current_time() - start == pytest.approx(3.0)
    assert result == CheckResult(
        False, "a failed: returned False; b failed: raised RuntimeError: disk on fire"
    )
    ok = await evaluate(CompositeCheck("ok", PingCheck("c", slow_true)))
    assert ok.healthy


@pytest.mark.virtual_time
async def test_go_bug_health_statistics_are_written(anyio_backend: Any) -> None:
    """Go declared 4 health metrics and wrote none: status, totals, failures and a DefBuckets
    duration histogram are kept here for the collector."""

    async def takes(seconds: float, ok: bool) -> bool:
        await anyio.sleep(seconds)
        return ok

    monitor = HealthMonitor(
        "m",
        checks=[
            PingCheck("fast", lambda: takes(0.03, True)),
            PingCheck("slow", lambda: takes(0.3, False)),
        ],
    )
    for _ in range(3):
        await monitor.check_now()
    fast, slow = monitor.status("fast"), monitor.status("slow")
    # DefBuckets .005 .01 .025 .05 .1 .25 .5 1 2.5 5 10 +Inf, cumulative.
    assert fast.duration_buckets == (0, 0, 0, 3, 3, 3, 3, 3, 3, 3, 3, 3)
    assert slow.duration_buckets == (0, 0, 0, 0, 0, 0, 3, 3, 3, 3, 3, 3)
    assert fast.duration_sum == pytest.approx(0.09)
    assert (slow.checks, slow.failures, slow.success_rate) == (3, 3, 0.0)
    assert (fast.checks, fast.failures, fast.success_rate) == (3, 0, 1.0)
    assert fast.last_success is not None and slow.last_failure is not None


@pytest.mark.virtual_time
async def test_go_bug_threshold_check_honours_the_timeout(anyio_backend: Any) -> None:
    """Go's threshold check ignored its context; here a value function that hangs is cut off by
    the per-check timeout and reported."""

    async def stuck_value() -> float:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    monitor = HealthMonitor("m", interval=10.0, timeout=2.0)
    monitor.add_check(ThresholdCheck("lag", stuck_value, 0.0, 1.0))
    start = anyio.current_time()
    await monitor.check_now()
    assert anyio.current_time() - start == pytest.approx(2.0)
    assert monitor.status("lag").error == "timed out after 2s"


async def test_monitor_runs_on_every_backend(anyio_backend: Any, backend_name: str) -> None:
    """Short real waits on uvloop, virtual time elsewhere: rounds run and a listener can leave."""
    probe = Probe()
    events: RecordingListener[HealthChanged] = RecordingListener()
    monitor = HealthMonitor("m", interval=0.01, timeout=0.005, checks=[probe], listeners=[events])
    async with monitor:
        await anyio.sleep(0.035)
    if backend_name == "uvloop":
        assert len(probe.times) >= 2
    else:
        assert len(probe.times) == 4
    assert monitor.healthy
    monitor.remove_listener(events)
    with pytest.raises(ValueError):
        monitor.remove_listener(events)


@settings(max_examples=200, deadline=None)
@given(
    rise=st.integers(1, 4),
    fall=st.integers(1, 4),
    results=st.lists(st.booleans(), max_size=40),
)
def test_rise_fall_core_matches_a_model(rise: int, fall: int, results: list[bool]) -> None:
    """The pure core (``_apply``) against a model: the state flips after exactly ``rise``
    consecutive successes or ``fall`` consecutive failures, and an event marks every flip."""
    events: RecordingListener[HealthChanged] = RecordingListener()
    monitor = HealthMonitor("m", rise=rise, fall=fall, clock=FakeClock(), listeners=[events])
    monitor.add_check(Script("a"))
    state = monitor._states["a"]
    healthy: bool | None = None
    run_ok = run_bad = flips = 0
    for i, ok in enumerate(results):
        monitor._apply(state, CheckResult(ok, None if ok else "bad"), float(i), 0.001)
        run_ok, run_bad = (run_ok + 1, 0) if ok else (0, run_bad + 1)
        if ok and healthy is not True and run_ok >= rise:
            healthy, flips = True, flips + 1
        elif not ok and healthy is not False and run_bad >= fall:
            healthy, flips = False, flips + 1
        assert monitor.status("a").healthy is healthy
    assert len([e for e in events.events if e.check == "a"]) == flips
    status = monitor.status("a")
    assert (status.checks, status.failures) == (len(results), results.count(False))
    assert status.duration_buckets[0] == len(results)  # 1 ms <= 5 ms


# --- checks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "healthy", "reason"),
    [
        (1.0, True, None),
        (0.0, True, None),  # both bounds are inclusive
        (2.0, True, None),
        (-0.5, False, "value -0.50 below minimum threshold 0.00"),
        (2.5, False, "value 2.50 exceeds maximum threshold 2.00"),
        (None, False, "value is not a number: None"),
        (math.nan, False, "value is not a number: nan"),
        (True, False, "value is not a number: True"),
        ("1", False, "value is not a number: '1'"),
    ],
)
async def test_threshold_check(
    anyio_backend: Any, value: object, healthy: bool, reason: str | None
) -> None:
    async def async_value() -> object:
        return value

    for fn in (lambda: value, async_value):
        check = ThresholdCheck("t", fn, 0.0, 2.0)  # type: ignore[arg-type]
        assert await evaluate(check) == CheckResult(healthy, reason)


def test_threshold_check_config() -> None:
    with pytest.raises(ValueError, match="min"):
        ThresholdCheck("t", lambda: 1.0, 2.0, 1.0)
    with pytest.raises(ValueError, match="min"):
        ThresholdCheck("t", lambda: 1.0, math.nan, 1.0)
    with pytest.raises(TypeError, match="value_fn"):
        ThresholdCheck("t", 1.0, 0.0, 1.0)  # type: ignore[arg-type]
    unbounded = ThresholdCheck("t", lambda: 1e300)
    assert (unbounded.min, unbounded.max) == (-math.inf, math.inf)


async def test_ping_check_results(anyio_backend: Any) -> None:
    assert await evaluate(PingCheck("p", lambda: True)) == CheckResult(True)
    assert await evaluate(PingCheck("p", lambda: False)) == CheckResult(False, "returned False")
    custom = CheckResult(False, "replica lag")
    assert await evaluate(PingCheck("p", lambda: custom)) is custom
    garbage = await evaluate(PingCheck("p", lambda: 1))
    assert garbage.reason is not None and garbage.reason.startswith("returned garbage: 1")
    with pytest.raises(TypeError):
        PingCheck("p", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        CompositeCheck("c")
    with pytest.raises(TypeError):
        CompositeCheck("c", "x")  # type: ignore[arg-type]
    with pytest.raises(NotImplementedError):
        await HealthCheck("base").check()


# --- monitor behaviour ----------------------------------------------------------------------------


@pytest.mark.virtual_time
async def test_timeout_is_clamped_to_the_interval(anyio_backend: Any) -> None:
    monitor = HealthMonitor("m", interval=2.0, timeout=30.0, checks=[PingCheck("h", hangs)])
    async with monitor:
        await anyio.sleep(5.0)
    status = monitor.status("h")
    assert status.error == "timed out after 2s"
    assert status.checks == 2  # rounds at 0, 2 and 4; the third is cancelled by the stop at 5


@pytest.mark.virtual_time
async def test_a_starved_loop_skips_missed_rounds(anyio_backend: Any) -> None:
    """When the clock jumps past several ticks (a blocked loop), missed rounds are skipped and
    counted, not run back to back."""
    offset = [0.0]

    def clock() -> float:
        return loop_time() + offset[0]

    async def jump() -> bool:
        offset[0] += 35.0
        return True

    probe = Probe()
    monitor = HealthMonitor(
        "m", interval=10.0, clock=clock, checks=[Script("j", *([True] * 9)), probe]
    )
    monitor.add_check(PingCheck("jump-once", lambda: jump() if not offset[0] else _true()))
    async with monitor:
        await anyio.sleep(12.0)
    assert monitor.missed_rounds == 3
    assert len(probe.times) == 2


async def _true() -> bool:
    return True


@pytest.mark.virtual_time
async def test_outside_cancellation_stops_run_cleanly(anyio_backend: Any) -> None:
    monitor = HealthMonitor("m", interval=1.0, checks=[PingCheck("h", hangs)])
    with anyio.move_on_after(3.5):
        await monitor.run()
    assert not monitor.running
    assert monitor.status("h").checks == 3
    async with monitor:  # and it can run again
        await anyio.sleep(0.5)
    assert monitor.status("h").checks == 3


@pytest.mark.virtual_time
async def test_cancelling_check_now_propagates(anyio_backend: Any) -> None:
    monitor = HealthMonitor("m", timeout=100.0, interval=100.0, checks=[PingCheck("h", hangs)])
    with anyio.move_on_after(1.0) as scope:
        await monitor.check_now()
    assert scope.cancelled_caught
    assert monitor.status("h").checks == 0
    assert monitor.status("h").in_flight is False


async def test_running_twice_is_refused(anyio_backend: Any) -> None:
    monitor = HealthMonitor("m", interval=1.0)
    async with monitor:
        with pytest.raises(RuntimeError, match="already running"):
            await monitor.run()
        with pytest.raises(RuntimeError, match="already running"):
            async with monitor:
                pass
    assert "stopped" in repr(monitor)


async def test_add_and_remove_checks_update_overall_health(anyio_backend: Any) -> None:
    events: RecordingListener[HealthChanged] = RecordingListener()
    monitor = HealthMonitor("m", checks=[Script("a", True, True)], listeners=[events])
    await monitor.check_now()
    assert monitor.healthy
    monitor.add_check(Script("b", False))
    assert monitor.statistics().healthy is False  # b is unknown
    await monitor.check_now()
    assert monitor.status("b").healthy is False
    monitor.remove_check("b")
    assert monitor.healthy
    with pytest.raises(KeyError):
        monitor.remove_check("b")
    with pytest.raises(ValueError, match="already registered"):
        monitor.add_check(Script("a"))
    with pytest.raises(TypeError):
        monitor.add_check("a")  # type: ignore[arg-type]
    overall = [e.healthy for e in events.events if e.check is None]
    assert overall == [True, False, True]
    assert set(monitor.statuses()) == {"a"}


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"interval": 0}, ValueError, "interval"),
        ({"interval": math.inf}, ValueError, "interval"),
        ({"interval": math.nan}, ValueError, "interval"),
        ({"timeout": 0}, ValueError, "timeout"),
        ({"timeout": -1.0}, ValueError, "timeout"),
        ({"rise": 0}, ValueError, "rise"),
        ({"fall": True}, TypeError, "fall"),
        ({"empty_is_healthy": 1}, TypeError, "empty_is_healthy"),
        ({"name": ""}, ValueError, "name"),
    ],
)
def test_bad_config(kwargs: dict[str, Any], error: type[Exception], field: str) -> None:
    kwargs.setdefault("name", "m")
    with pytest.raises(error, match=field):
        HealthMonitor(**kwargs)
