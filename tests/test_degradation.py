"""Degradation: Go's execute semantics, the Go bugs, hysteresis, watchers, flags, load shedding."""

from __future__ import annotations

import random
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dwcp_resilience.core.errors import Rejected, ResilienceError
from dwcp_resilience.slo.checks import PingCheck
from dwcp_resilience.slo.degradation import (
    DegradationLevel,
    DegradationManager,
    DegradationThresholds,
    EmergencyMode,
    LevelChanged,
    level_for_ratio,
)
from dwcp_resilience.slo.error_budget import ErrorBudget
from dwcp_resilience.slo.health import HealthMonitor
from dwcp_resilience.slo.latency_budget import LatencyBudget
from dwcp_resilience.slo.shedding import FeatureFlags, LoadShed, LoadShedder
from dwcp_resilience.testing import FakeClock

pytestmark = pytest.mark.anyio

N, D, S, E = (
    DegradationLevel.NORMAL,
    DegradationLevel.DEGRADED,
    DegradationLevel.SEVERELY_DEGRADED,
    DegradationLevel.EMERGENCY,
)


async def normal() -> str:
    return "normal"


async def degraded() -> str:
    return "degraded"


async def emergency() -> str:
    return "emergency"


# --- Go semantics kept ----------------------------------------------------------------------------


def test_levels_values_and_names() -> None:
    assert [int(level) for level in (N, D, S, E)] == [0, 1, 2, 3]
    assert [str(level) for level in (N, D, S, E)] == [
        "normal",
        "degraded",
        "severely_degraded",
        "emergency",
    ]


@pytest.mark.parametrize(
    ("level", "with_all", "normal_only"),
    [
        (N, "normal", "normal"),
        (D, "normal", "normal"),  # Go: Degraded still runs `normal` (its test asserts this)
        (S, "degraded", "normal"),  # falls back to `normal` when there is no `degraded`
        (E, "emergency", EmergencyMode),
    ],
)
async def test_execute_follows_the_go_semantics(
    anyio_backend: Any, level: DegradationLevel, with_all: str, normal_only: Any
) -> None:
    manager = DegradationManager("m", clock=FakeClock())
    manager.set_component_level("net", level)
    assert await manager.execute(normal, degraded, emergency) == with_all
    if isinstance(normal_only, str):
        assert await manager.execute(normal) == normal_only
    else:
        with pytest.raises(EmergencyMode, match="system in emergency mode") as info:
            await manager.execute(normal, degraded)
        assert isinstance(info.value, ResilienceError)


def test_overall_level_is_the_max_of_components() -> None:
    manager = DegradationManager("m", clock=FakeClock())
    assert manager.level == N
    assert manager.component_level("unknown") == N
    manager.set_component_level("a", D)
    manager.set_component_level("b", S)
    assert manager.level == S
    manager.recover("b")
    assert manager.level == D
    manager.set_component_level("c", 3)
    assert manager.level == E
    manager.recover_all()
    assert manager.level == N
    assert manager.component_levels() == {"a": N, "b": N, "c": N}
    with pytest.raises(ValueError):
        manager.set_component_level("a", 7)
    with pytest.raises(ValueError, match="component"):
        manager.set_component_level("", D)


def test_should_degrade_is_gos_static_rule() -> None:
    manager = DegradationManager("m", clock=FakeClock())
    assert manager.should_degrade(0.01, 0.05, 0.01, 0.1) == N  # at the threshold: not above
    assert manager.should_degrade(0.011, 0.05, 0.01, 0.1) == D
    assert manager.should_degrade(0.0, 0.16, 0.01, 0.1) == S
    assert manager.should_degrade(0.021, 0.0, 0.01, 0.1) == E
    assert level_for_ratio(1.5) == D
    assert level_for_ratio(1.5000001) == S


# --- the Go bugs ----------------------------------------------------------------------------------


def test_go_bug_level_change_listeners_fire_inline_in_order() -> None:
    """Go fired onLevelChange in a goroutine (order unspecified) and set it without a lock."""
    clock = FakeClock(7.0)
    seen: list[tuple[str, int, int]] = []

    def broken(event: LevelChanged) -> None:
        raise RuntimeError("listener bug")

    manager = DegradationManager("m", clock=clock, listeners=[broken])
    manager.add_listener(lambda e: seen.append((e.component, e.old, e.new)))
    manager.set_component_level("a", D)
    assert seen == [("a", N, D)]  # before set_component_level returned
    manager.set_component_level("b", D)  # the overall level does not change: no event
    manager.set_component_level("b", E)
    manager.recover("b")
    assert seen == [("a", N, D), ("b", D, E), ("b", E, D)]


def test_go_bug_levels_change_automatically_with_hysteresis() -> None:
    """Go's triggers were manual only. ``observe`` moves a component up at once and down only below
    ``recover_ratio`` times the threshold, and after ``min_hold`` seconds."""
    clock = FakeClock()
    manager = DegradationManager("m", clock=clock)
    manager.set_thresholds(
        "db", DegradationThresholds(error_rate=0.05, recover_ratio=0.8, min_hold=10.0)
    )
    assert manager.observe("db", error_rate=0.06) == D
    clock.advance(60.0)
    assert manager.observe("db", error_rate=0.045) == D  # below 0.05 but above 0.04: stays
    assert manager.observe("db", error_rate=0.039) == N
    assert manager.observe("db", error_rate=0.11) == E  # above 2x: straight to emergency
    assert manager.observe("db", error_rate=0.02) == E  # held for less than min_hold
    clock.advance(10.0)
    assert manager.observe("db", error_rate=0.07) == S  # ratio 1.4: above 1.5 * 0.8, below 1.6
    clock.advance(10.0)
    assert manager.observe("db", error_rate=0.0) == N
    assert manager.level == N
    with pytest.raises(KeyError):
        manager.observe("unknown", error_rate=1.0)


async def test_go_bug_fallback_walks_to_more_severe_levels_as_documented(
    anyio_backend: Any,
) -> None:
    """Go's ExecuteWithFallback walked to *more* severe levels while its comment said "lower".
    The walk is toward more severe levels, documented and tested: an emergency never runs the
    normal path."""
    manager = DegradationManager("m", clock=FakeClock())
    fallbacks = {N: normal, E: emergency}
    assert await manager.execute_with_fallback(fallbacks) == "normal"
    manager.set_component_level("a", D)
    assert await manager.execute_with_fallback(fallbacks) == "emergency"
    manager.set_component_level("a", E)
    with pytest.raises(EmergencyMode):
        await manager.execute_with_fallback({N: normal, D: degraded})
    assert await manager.execute_with_fallback({E: emergency}) == "emergency"


def test_go_bug_time_in_current_level_is_not_mislabelled() -> None:
    """Go's TimeInCurrentLevel added TimeInDegraded to it."""
    clock = FakeClock(100.0)
    manager = DegradationManager("m", clock=clock)
    manager.set_component_level("a", D)
    clock.advance(30.0)
    manager.set_component_level("a", S)
    clock.advance(5.0)
    stats = manager.statistics()
    assert stats.time_in_current_level == pytest.approx(5.0)
    assert stats.time_in_degraded == pytest.approx(35.0)
    manager.recover("a")
    clock.advance(20.0)
    stats = manager.statistics()
    assert (stats.time_in_current_level, stats.time_in_degraded) == pytest.approx((20.0, 35.0))
    assert stats.level_changes == 3
    assert stats.last_level_change == 135.0


def test_go_bug_unknown_feature_flag_is_an_error_not_enabled() -> None:
    """Go reported every unknown flag as enabled, so a misspelt flag switched a feature on."""
    flags = FeatureFlags({"compression": True})
    assert flags.is_enabled("compression")
    with pytest.raises(KeyError, match="compresion"):
        flags.is_enabled("compresion")
    with pytest.raises(KeyError):
        flags.enable("compresion")
    flags.disable("compression")
    assert flags.all_flags() == {"compression": False}
    assert "compression" in flags
    assert "0/1 enabled" in repr(flags)


async def test_go_bug_load_shedder_counts_are_exact_under_concurrency(anyio_backend: Any) -> None:
    """Go's ShouldShed mutated its counters under a read lock (a race). With 500 concurrent tasks
    the counts are exact and equal a replay of the seeded random stream."""
    shedder = LoadShedder("s", max_load=100.0, rng=42)
    shedder.update_load(150.0)  # p = 0.5
    ran = 0

    async def op() -> None:
        nonlocal ran
        await anyio.lowlevel.checkpoint()
        ran += 1

    shed = 0

    async def one() -> None:
        nonlocal shed
        try:
            await shedder.call(op)
        except LoadShed:
            shed += 1

    async with anyio.create_task_group() as tg:
        for _ in range(500):
            tg.start_soon(one)
    replay = random.Random(42)
    expected = sum(replay.random() < 0.5 for _ in range(500))
    stats = shedder.statistics()
    assert (stats.checks, stats.shed) == (500, expected)
    assert shed == expected
    assert ran == 500 - expected


# --- watchers -------------------------------------------------------------------------------------


def test_watch_error_budget_drives_a_component() -> None:
    clock = FakeClock()
    manager = DegradationManager("m", clock=clock)
    budget = ErrorBudget("b", slo=0.9, window=60.0, min_requests=10, clock=clock)
    manager.watch_error_budget("send", budget, S)
    for _ in range(10):
        budget.record(False)
    assert manager.component_level("send") == S
    clock.advance(61.0)
    assert not budget.exhausted  # the read slides the window and fires "recovered"
    assert manager.component_level("send") == N


def test_watch_latency_budget_drives_a_component() -> None:
    manager = DegradationManager("m", clock=FakeClock())
    budget = LatencyBudget("l", target=0.1, percentile=50.0, max_samples=2, clock=FakeClock())
    manager.watch_latency_budget("recv", budget)
    budget.record(0.5)
    assert manager.component_level("recv") == D
    budget.record(0.01)
    budget.record(0.01)
    assert manager.component_level("recv") == N


async def test_watch_health_drives_a_component(anyio_backend: Any) -> None:
    state = {"ok": False}
    monitor = HealthMonitor("h", checks=[PingCheck("p", lambda: state["ok"])])
    manager = DegradationManager("m")
    manager.watch_health("transport", monitor)
    await monitor.check_now()
    assert manager.component_level("transport") == S
    state["ok"] = True
    await monitor.check_now()
    assert manager.component_level("transport") == N


async def test_watch_breaker_follows_its_state_changes(anyio_backend: Any) -> None:
    from dwcp_resilience.policies.breaker import CircuitBreaker

    breaker = CircuitBreaker("b", max_failures=2, reset_timeout=60.0)
    manager = DegradationManager("m", clock=FakeClock())
    manager.watch_breaker("peer", breaker)
    assert manager.component_level("peer") == N

    async def boom() -> None:
        raise ConnectionError("down")

    for _ in range(2):
        with pytest.raises(ConnectionError):
            await breaker.call(boom)
    assert manager.component_level("peer") == S
    breaker.reset()
    assert manager.component_level("peer") == N
    manager.set_breaker_state("peer", 1)
    assert manager.component_level("peer") == D
    with pytest.raises(TypeError):
        manager.watch_breaker("peer", object())


# --- feature flags and load shedding --------------------------------------------------------------


def test_flags_switched_off_by_a_degradation_level() -> None:
    manager = DegradationManager("m", clock=FakeClock())
    flags = FeatureFlags(manager=manager)
    flags.define("analytics", disable_at=D)
    flags.define("replication", disable_at=E)
    flags.define("beta", enabled=False)
    assert flags.all_flags() == {"analytics": True, "replication": True, "beta": False}
    manager.set_component_level("a", S)
    assert flags.all_flags() == {"analytics": False, "replication": True, "beta": False}
    manager.recover("a")
    assert flags.is_enabled("analytics")
    with pytest.raises(ValueError, match="manager"):
        FeatureFlags().define("x", disable_at=D)
    with pytest.raises(TypeError):
        flags.define("x", enabled=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        flags.set_flag("beta", "yes")  # type: ignore[arg-type]


def test_load_shedding_probability_follows_go() -> None:
    shedder = LoadShedder("s", max_load=100.0, rng=1)
    assert shedder.probability == 0.0
    shedder.update_load(100.0)
    assert shedder.probability == 0.0
    shedder.update_load(130.0)
    assert shedder.probability == pytest.approx(0.3)
    shedder.update_load(1000.0)
    assert shedder.probability == 0.9  # Go's cap
    assert sum(shedder.should_shed() for _ in range(1000)) > 800
    shedder.enabled = False
    assert not any(shedder.should_shed() for _ in range(100))
    assert "p=0.90" in repr(shedder)


async def test_a_shed_call_is_a_rejection_and_does_not_run(anyio_backend: Any) -> None:
    shedder = LoadShedder("s", max_load=1.0, max_probability=1.0, rng=3)
    shedder.update_load(10.0)
    ran = []

    async def op() -> None:
        ran.append(1)

    with pytest.raises(LoadShed) as info:
        await shedder.call(op)
    assert isinstance(info.value, Rejected)
    assert "load shed" in str(info.value)
    assert ran == []


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"max_load": 0.0}, ValueError, "max_load"),
        ({"max_load": 1.0, "max_probability": 1.5}, ValueError, "max_probability"),
        ({"max_load": 1.0, "rng": "seed"}, TypeError, "rng"),
        ({"max_load": 1.0, "rng": True}, TypeError, "rng"),
        ({"max_load": 1.0, "enabled": 1}, TypeError, "enabled"),
    ],
)
def test_load_shedder_bad_config(
    kwargs: dict[str, Any], error: type[Exception], field: str
) -> None:
    with pytest.raises(error, match=field):
        LoadShedder("s", **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({}, "at least one"),
        ({"error_rate": 0.0}, "error_rate"),
        ({"latency": -1.0}, "latency"),
        ({"error_rate": 0.1, "multipliers": (1.0, 1.0, 2.0)}, "increasing"),
        ({"error_rate": 0.1, "recover_ratio": 1.5}, "recover_ratio"),
        ({"error_rate": 0.1, "min_hold": -1.0}, "min_hold"),
    ],
)
def test_thresholds_bad_config(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        DegradationThresholds(**kwargs)


# --- hysteresis properties ------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    current=st.sampled_from(list(DegradationLevel)),
    ratio=st.floats(0.0, 5.0, allow_nan=False),
    recover=st.floats(0.5, 1.0),
    held=st.floats(0.0, 20.0),
)
def test_hysteresis_rule_properties(
    current: DegradationLevel, ratio: float, recover: float, held: float
) -> None:
    """Never below what the values call for; up moves go exactly there; down moves only once the
    ratio is under the scaled multiplier and the hold time passed; one step is a fixed point."""
    rule = DegradationThresholds(error_rate=1.0, recover_ratio=recover, min_hold=10.0)
    new = rule.next_level(current, ratio, held)
    called_for = level_for_ratio(ratio)
    assert new >= called_for
    if new > current:
        assert new == called_for
    if new < current:
        assert held >= 10.0
        assert ratio <= rule.multipliers[current - 1] * recover
    assert rule.next_level(new, ratio, held) == new
    if recover == 1.0 and held >= 10.0:
        assert new == called_for  # no hysteresis: Go's rule


def test_repr() -> None:
    manager = DegradationManager("m", clock=FakeClock())
    manager.set_component_level("a", S)
    assert repr(manager) == "<DegradationManager 'm' level=severely_degraded components=1>"
