"""Chaos: R60 (binomial bounds, disabling at once, faults through breaker and retry), Go bugs."""

from __future__ import annotations

import math
import random
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from dwcp_resilience.core.errors import CircuitOpen, ResilienceError
from dwcp_resilience.core.policy import Pipeline
from dwcp_resilience.policies.chaos import (
    Chaos,
    ChaosInjected,
    ErrorFault,
    LatencyFault,
    ResultFault,
)

pytestmark = pytest.mark.anyio


async def op(value: str = "real") -> str:
    return value


class Fixed(random.Random):
    """A 'random' source that always returns the same number."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


async def _injected(chaos: Chaos, calls: int) -> list[int]:
    hits = []
    for i in range(calls):
        try:
            await chaos.call(op)
        except ChaosInjected:
            hits.append(i)
    return hits


# --- R60 ------------------------------------------------------------------------------------------


async def test_r60_ten_thousand_seeded_calls_at_rate_0_3_within_binomial_bounds(
    anyio_backend: Any,
) -> None:
    """10 000 calls at rate 0.3: the injections are within 4.5 standard deviations of 3000 (a
    false alarm once in ~150 000 seeds), and the same seed injects into the same calls."""
    chaos = Chaos("c", rate=0.3, rng=20240601)
    hits = await _injected(chaos, 10_000)
    mean, sd = 3000, math.sqrt(10_000 * 0.3 * 0.7)
    assert abs(len(hits) - mean) < 4.5 * sd
    stats = chaos.statistics()
    assert (stats.checks, stats.injections) == (10_000, len(hits))
    assert stats.injections_by_type == {"exception": len(hits), "latency": 0, "result": 0}
    assert stats.injection_rate == pytest.approx(len(hits) / 10_000)
    again = await _injected(Chaos("c", rate=0.3, rng=random.Random(20240601)), 10_000)
    assert again == hits


async def test_r60_disabling_takes_effect_at_once(anyio_backend: Any) -> None:
    """The switch is read on every call: the very next call after ``disable()`` is untouched and
    not even counted; ``enable()`` brings injection back on the next call."""
    chaos = Chaos("c", rate=1.0, rng=1)
    with pytest.raises(ChaosInjected):
        await chaos.call(op)
    chaos.disable()
    assert not chaos.enabled
    assert [await chaos.call(op) for _ in range(100)] == ["real"] * 100
    assert chaos.statistics().checks == 1
    chaos.enable()
    with pytest.raises(ChaosInjected):
        await chaos.call(op)
    off = Chaos("off", rate=1.0, enabled=False)
    assert await off.call(op) == "real"
    assert "off" in repr(off)
    switch = {"on": False}
    generated = Chaos("g", rate=1.0, enabled=lambda: switch["on"])
    assert await generated.call(op) == "real"
    switch["on"] = True
    with pytest.raises(ChaosInjected):
        await generated.call(op)


@pytest.mark.virtual_time
async def test_r60_disabling_ends_injected_latency_that_is_sleeping(anyio_backend: Any) -> None:
    chaos = Chaos("c", rate=1.0, faults=[LatencyFault(100.0)])
    results: list[tuple[str, float]] = []
    start = anyio.current_time()

    async def caller() -> None:
        value = await chaos.call(op, "late")
        results.append((value, anyio.current_time() - start))

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(caller)
        await anyio.sleep(1.0)
        chaos.disable()
    assert [value for value, _ in results] == ["late"] * 3
    assert [elapsed for _, elapsed in results] == pytest.approx([1.0] * 3)


async def test_r60_injected_faults_flow_through_retry_and_breaker(anyio_backend: Any) -> None:
    """Innermost chaos: every injected exception is an attempt failure the retry sees and the
    breaker counts, exactly like a real one; once the breaker opens, chaos is not even reached."""
    from dwcp_resilience.policies.backoff import ConstantBackoff
    from dwcp_resilience.policies.breaker import CircuitBreaker
    from dwcp_resilience.policies.breaker_core import BreakerState
    from dwcp_resilience.policies.retry import Retry

    chaos = Chaos("c", rate=1.0, rng=7)
    breaker = CircuitBreaker("b", max_failures=3, reset_timeout=60.0)
    retry = Retry("r", max_retries=2, backoff=ConstantBackoff(0.0), retry_on=ChaosInjected)
    pipeline = Pipeline(retry, breaker, chaos, name="p")
    with pytest.raises(ChaosInjected):  # the last real exception, not a wrapper
        await pipeline.call(op)
    assert chaos.statistics().checks == 3  # three attempts reached the operation's seat
    assert breaker.state == BreakerState.OPEN
    with pytest.raises(CircuitOpen):
        await pipeline.call(op)
    assert chaos.statistics().checks == 3


async def test_concurrent_callers_share_one_seeded_stream(anyio_backend: Any) -> None:
    """500 tasks at once: every call is checked once, and the injections equal a replay of the
    seeded stream (one draw per call, nothing lost or double-counted between tasks)."""
    chaos = Chaos("c", rate=0.3, rng=99)
    injected = 0

    async def slow_op() -> str:
        await anyio.lowlevel.checkpoint()
        return "real"

    async def caller() -> None:
        nonlocal injected
        try:
            await chaos.call(slow_op)
        except ChaosInjected:
            injected += 1

    async with anyio.create_task_group() as tg:
        for _ in range(500):
            tg.start_soon(caller)
    replay = random.Random(99)
    assert injected == sum(replay.random() < 0.3 for _ in range(500))
    assert chaos.statistics().checks == 500


# --- the Go bugs ----------------------------------------------------------------------------------


async def test_go_bug_one_injection_rate_no_hidden_multiplier(anyio_backend: Any) -> None:
    """Go's ErrorFault had its own rate that multiplied the monkey's probability (0.01 x 0.1 in
    the DWCP wiring). Here the injection rate is the only probability: at rate 0.5 with an error
    fault, about half of the calls fail, and every injection is that error."""
    chaos = Chaos("c", rate=0.5, faults=[ErrorFault(ConnectionResetError)], rng=3)
    failures = 0
    for _ in range(2000):
        try:
            await chaos.call(op)
        except ConnectionResetError:
            failures += 1
    assert abs(failures - 1000) < 4.5 * math.sqrt(2000 * 0.25)
    assert chaos.statistics().injections == failures


async def test_go_bug_rate_zero_never_injects(anyio_backend: Any) -> None:
    """Go injected when ``rand <= p``, so p = 0 could still inject on a 0.0 draw."""
    never = Chaos("c", rate=0.0, rng=Fixed(0.0))
    assert [await never.call(op) for _ in range(50)] == ["real"] * 50
    always = Chaos("c", rate=1.0, rng=Fixed(0.999999))
    with pytest.raises(ChaosInjected):
        await always.call(op)


@pytest.mark.virtual_time
async def test_go_bug_latency_fault_is_cancellable(anyio_backend: Any) -> None:
    """Go's LatencyFault called time.Sleep: nothing could cut it short."""
    chaos = Chaos("c", rate=1.0, faults=[LatencyFault(50.0, 200.0)], rng=5)
    ran = []

    async def marked() -> None:
        ran.append(1)

    start = anyio.current_time()
    with anyio.move_on_after(2.0) as scope:
        await chaos.call(marked)
    assert scope.cancelled_caught
    assert anyio.current_time() - start == pytest.approx(2.0)
    assert ran == []


@pytest.mark.virtual_time
async def test_go_bug_statistics_count_each_fault_kind(anyio_backend: Any) -> None:
    """Go read its probability without the lock; here a snapshot is consistent and counts each
    kind: latencies run the operation after the delay, results replace it."""
    faults = (LatencyFault(0.5, 1.5), ResultFault("fake"), ErrorFault(weight=2.0))
    chaos = Chaos("c", rate=0.5, faults=faults, rng=11)
    outcomes = {"real": 0, "fake": 0, "error": 0}
    for _ in range(400):
        try:
            outcomes[await chaos.call(op)] += 1
        except ChaosInjected:
            outcomes["error"] += 1
    stats = chaos.statistics()
    by_type = stats.injections_by_type
    assert sum(by_type.values()) == stats.injections
    assert outcomes["fake"] == by_type["result"]
    assert outcomes["error"] == by_type["exception"]
    assert outcomes["real"] == 400 - stats.injections + by_type["latency"]
    assert by_type["exception"] > by_type["result"]  # weight 2 against 1
    assert all(count > 0 for count in by_type.values())


# --- idioms and config ----------------------------------------------------------------------------


async def test_decorator_and_result_fault(anyio_backend: Any) -> None:
    chaos = Chaos("c", rate=1.0, faults=[ResultFault({"status": "chaos"})])

    @chaos
    async def fetch(key: str) -> dict[str, str]:
        return {"status": key}

    assert await fetch("ok") == {"status": "chaos"}
    chaos.rate = 0.0
    assert await fetch("ok") == {"status": "ok"}
    assert "rate=0" in repr(chaos)


async def test_error_fault_raises_a_fresh_exception_each_time(anyio_backend: Any) -> None:
    chaos = Chaos("c", rate=1.0)
    seen = []
    for _ in range(2):
        with pytest.raises(ChaosInjected) as info:
            await chaos.call(op)
        seen.append(info.value)
    assert seen[0] is not seen[1]
    assert isinstance(seen[0], ResilienceError)
    assert str(seen[0]) == "chaos monkey injected error"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rate": -0.1}, ValueError, "rate"),
        ({"rate": 1.5}, ValueError, "rate"),
        ({"rate": math.nan}, ValueError, "rate"),
        ({"rate": True}, TypeError, "rate"),
        ({"rate": 0.1, "faults": []}, ValueError, "faults"),
        ({"rate": 0.1, "faults": ["boom"]}, TypeError, "fault"),
        ({"rate": 0.1, "faults": [ErrorFault(weight=0.0)]}, ValueError, "weight"),
        ({"rate": 0.1, "rng": "seed"}, TypeError, "rng"),
        ({"rate": 0.1, "enabled": "yes"}, TypeError, "enabled"),
    ],
)
def test_bad_config(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        Chaos("c", **kwargs)


def test_bad_faults() -> None:
    with pytest.raises(ValueError, match="max"):
        LatencyFault(2.0, 1.0)
    with pytest.raises(ValueError, match="min"):
        LatencyFault(-1.0)
    with pytest.raises(TypeError, match="error"):
        ErrorFault(RuntimeError("an instance, not a factory"))  # type: ignore[arg-type]
    chaos = Chaos("c", rate=0.1)
    with pytest.raises(ValueError, match="rate"):
        chaos.rate = 2.0
