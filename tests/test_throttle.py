"""AdaptiveThrottle: the shell on asyncio (looptime), trio (MockClock) and uvloop."""

from __future__ import annotations

import logging
import math
import random
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from dwcp_resilience import (
    AdaptiveThrottle,
    ConcurrencyLimited,
    RateLimited,
    Rejected,
    Throttled,
    ThrottleRejected,
)
from dwcp_resilience.core.events import Event
from dwcp_resilience.testing import RecordingListener

pytestmark = pytest.mark.anyio


class Overloaded(Exception):
    """The backend's "too busy" answer."""


class CountingRandom(random.Random):
    """A seeded ``random.Random`` that counts its draws."""

    draws = 0

    def random(self) -> float:
        self.draws += 1
        return super().random()


class CapacityBackend:
    """Accepts at most ``rate`` calls per second (a token bucket of ``burst``), refuses the rest
    with :class:`Overloaded`; counts what it received and accepted after ``since``."""

    def __init__(self, rate: float, burst: float, since: float) -> None:
        self.rate, self.burst, self.since = rate, burst, since
        self.tokens, self.last = burst, 0.0
        self.received = self.accepted = 0

    async def __call__(self) -> str:
        now = anyio.current_time()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        counted = now >= self.since
        self.received += counted
        if self.tokens < 1.0:
            raise Overloaded("try later")
        self.tokens -= 1.0
        self.accepted += counted
        return "ok"


async def offer(throttle: AdaptiveThrottle | None, backend: CapacityBackend, seconds: float) -> int:
    """Ten calls a second for ``seconds``; returns how many the throttle refused locally."""
    refused = 0
    while anyio.current_time() < seconds:
        try:
            await (backend() if throttle is None else throttle.call(backend))
        except Overloaded:
            pass
        except Throttled:
            refused += 1
        await anyio.sleep(0.1)
    return refused


async def test_three_idioms_and_statistics(backend_name: str) -> None:
    throttle = AdaptiveThrottle("api", rng=random.Random(1))

    @throttle
    async def fetch(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return x + 1

    assert await fetch(1) == 2
    assert await throttle.call(fetch, 2) == 3  # nested: two requests
    async with throttle:
        pass
    with pytest.raises(Overloaded):
        async with throttle:
            raise Overloaded
    stats = throttle.statistics()
    assert (stats.requests, stats.accepts, stats.admitted, stats.rejected) == (5, 4, 5, 0)
    assert (stats.accepted, stats.refused, stats.neutral) == (4, 1, 0)
    assert stats.probability == 0.0 and (stats.k, stats.window) == (2.0, 120.0)
    assert "requests=5 accepts=4" in repr(throttle)


async def test_admission_never_waits(backend_name: str) -> None:
    throttle = AdaptiveThrottle("api")

    async def plain() -> int:
        return 7

    with anyio.CancelScope() as scope:
        scope.cancel()
        assert await throttle.call(plain) == 7
        async with throttle:
            pass
    assert throttle.statistics().accepted == 2


@pytest.mark.virtual_time
async def test_a_healthy_backend_is_never_throttled(backend_name: str) -> None:
    rng = CountingRandom(3)
    throttle = AdaptiveThrottle("api", rng=rng)
    backend = CapacityBackend(rate=100.0, burst=10.0, since=0.0)
    assert await offer(throttle, backend, 300.0) == 0
    assert backend.accepted == backend.received == throttle.statistics().admitted
    assert rng.draws == 0  # the probability stayed 0: not even a draw


@pytest.mark.virtual_time
async def test_a_backend_refusing_90_percent_is_sent_about_k_times_what_it_accepts(
    backend_name: str,
) -> None:
    """Ten calls a second against a backend that accepts one a second (it refuses 90 % of the
    offered load): past the first window (120 s), the backend receives between 1.8 and 2.2 times
    what it accepts (K = 2), and the throttle refuses the rest locally."""
    alone = CapacityBackend(rate=1.0, burst=5.0, since=120.0)
    await offer(None, alone, 360.0)
    assert alone.received >= 9.5 * alone.accepted  # unthrottled: about 10x

    start = anyio.current_time()
    backend = CapacityBackend(rate=1.0, burst=5.0, since=start + 120.0)
    backend.last = start
    throttle = AdaptiveThrottle("api", rng=random.Random(11))
    refused = await offer(throttle, backend, start + 360.0)
    ratio = backend.received / backend.accepted
    assert 1.8 <= ratio <= 2.2, (backend.received, backend.accepted)
    assert backend.accepted >= 0.8 * 240  # the backend is still used to its capacity
    stats = throttle.statistics()
    assert refused == stats.rejected > 0.7 * 3600
    assert stats.probability == pytest.approx(1 - 2 * stats.accepts / stats.requests, abs=0.05)


async def test_outcomes_that_say_nothing_of_the_backend_count_as_no_request(
    backend_name: str,
) -> None:
    """Our own inner rejections, cancellation and ``ignore=`` are neutral; with ``failure=``
    naming the overload errors, other exceptions are answers (accepts); a result can be a refusal."""
    throttle = AdaptiveThrottle(
        "api",
        failure=Overloaded,
        ignore=KeyError,
        failure_result=lambda r: r == 503,
        rng=Scripted(),  # never refuses: the test counts outcomes
    )
    for exc in (RateLimited("inner", 1.0), ConcurrencyLimited("inner", None), KeyError("x")):
        with pytest.raises(type(exc)):
            await throttle.call(_raise, exc)
    with anyio.CancelScope() as scope:
        async with throttle:
            scope.cancel()
            await anyio.lowlevel.checkpoint()
    with pytest.raises(ValueError, match="not found"):
        await throttle.call(_raise, ValueError("not found"))  # an answer: accepted
    with pytest.raises(Overloaded):
        await throttle.call(_raise, Overloaded())
    assert await throttle.call(_value, 503) == 503
    assert await throttle.call(_value, 200) == 200
    stats = throttle.statistics()
    assert (stats.neutral, stats.accepted, stats.refused) == (4, 2, 2)
    assert (stats.requests, stats.accepts) == (4, 2)


async def _raise(exc: BaseException) -> None:
    raise exc


async def _value(value: int) -> int:
    return value


class Scripted(random.Random):
    """Draws ``value`` every time (1.0 - 1e-9: never refuses; 0.0: refuses whenever p > 0)."""

    value = 1.0 - 1e-9

    def random(self) -> float:
        return self.value


async def test_refusals_raise_throttled_and_tell_listeners(
    backend_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: object) -> None:
        raise RuntimeError("listener bug")

    events: RecordingListener[Event] = RecordingListener()
    draws = Scripted()
    throttle = AdaptiveThrottle("api", rng=draws, listeners=[broken])
    throttle.add_listener(events)
    assert throttle.name == "api"
    for _ in range(20):
        with pytest.raises(Overloaded):
            await throttle.call(_raise, Overloaded())
    draws.value = 0.0
    with caplog.at_level(logging.ERROR, logger="dwcp_resilience"):
        for _ in range(3):
            with pytest.raises(Throttled) as info:
                await throttle.call(_value, 1)
            assert (info.value.name, info.value.retry_after) == ("api", None)
            assert isinstance(info.value, Rejected) and not isinstance(info.value, RateLimited)
    # each refusal is a request too: 20/21, 21/22, 22/23
    assert [e.probability for e in events.of_type(ThrottleRejected)] == pytest.approx(
        [20 / 21, 21 / 22, 22 / 23]
    )
    assert "listener bug" in caplog.text
    assert "throttled" in str(info.value)
    with pytest.raises(Throttled):
        throttle.acquire()  # the manual path refuses too
    async with anyio.create_task_group():  # and the block form, before the block runs
        with pytest.raises(Throttled):
            async with throttle:
                raise AssertionError("not reached")
    throttle.remove_listener(broken)
    throttle.reset()
    assert throttle.probability() == 0.0
    assert await throttle.call(_value, 1) == 1
    assert throttle.statistics().rejected == 5  # the lifetime counters stay


async def test_permits_end_exactly_once(backend_name: str) -> None:
    throttle = AdaptiveThrottle("api")
    accepted, refused, neutral = throttle.acquire(), throttle.acquire(), throttle.acquire()
    assert throttle.statistics().requests == 0  # in flight: no requests yet
    accepted.record(True)
    accepted.record(False)  # no effect
    refused.record(False)
    neutral.release()
    neutral.record(True)
    stats = throttle.statistics()
    assert (stats.requests, stats.accepts, stats.accepted, stats.refused) == (2, 1, 1, 1)


async def test_cancel_inside_the_call_counts_no_request(backend_name: str) -> None:
    throttle = AdaptiveThrottle("api")
    with anyio.move_on_after(0.01):
        await throttle.call(anyio.sleep_forever)
    with anyio.move_on_after(0.01):
        async with throttle:
            await anyio.sleep_forever()
    stats = throttle.statistics()
    assert (stats.admitted, stats.neutral, stats.requests) == (2, 2, 0)


@pytest.mark.virtual_time
async def test_many_tasks_keep_the_books(backend_name: str) -> None:
    """Many concurrent calls with random outcomes and cancellations: every attempt is admitted
    or refused, every admitted call ends in exactly one outcome, and the window (all within it)
    holds every request but the neutral ones, and every accept."""
    rng = random.Random(5)
    throttle = AdaptiveThrottle("api", window=1000.0, rng=random.Random(6))
    attempts = refused = 0
    outcomes = {"accepted": 0, "refused": 0, "neutral": 0}

    async def job() -> None:
        await anyio.sleep(rng.uniform(0.0, 0.5))
        roll = rng.random()
        if roll < 0.5:
            raise Overloaded
        if roll < 0.55:
            raise RateLimited("inner")

    async def worker() -> None:
        nonlocal attempts, refused
        attempts += 1
        with anyio.move_on_after(rng.choice([math.inf, math.inf, rng.uniform(0.0, 0.6)])):
            try:
                await throttle.call(job)
                outcomes["accepted"] += 1
            except Throttled:
                refused += 1
            except Overloaded:
                outcomes["refused"] += 1
            except RateLimited:
                outcomes["neutral"] += 1
            return
        outcomes["neutral"] += 1  # cancelled

    async with anyio.create_task_group() as tg:
        for _ in range(2000):
            tg.start_soon(worker)
            await anyio.sleep(rng.expovariate(100.0))
    stats = throttle.statistics()
    assert attempts == 2000 and stats.admitted + stats.rejected == attempts
    assert stats.rejected == refused > 0
    assert (stats.accepted, stats.refused, stats.neutral) == (
        outcomes["accepted"],
        outcomes["refused"],
        outcomes["neutral"],
    )
    assert stats.requests == attempts - stats.neutral and stats.accepts == stats.accepted


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"k": 0.5}, ValueError),
        ({"k": math.nan}, ValueError),
        ({"k": True}, TypeError),
        ({"k": "2"}, TypeError),
        ({"window": 0.0}, ValueError),
        ({"window": math.inf}, ValueError),
        ({"buckets": 0}, ValueError),
        ({"buckets": 2.0}, TypeError),
        ({"failure": 3}, TypeError),
        ({"failure_result": 3}, TypeError),
        ({"rng": 7}, TypeError),
        ({"clock": 5}, TypeError),
        ({"listeners": [5]}, TypeError),
    ],
)
def test_bad_config(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        AdaptiveThrottle("api", **kwargs)


def test_bad_name_and_decorated_sync_function() -> None:
    with pytest.raises(ValueError, match="name"):
        AdaptiveThrottle("")

    def sync() -> None:
        return None

    with pytest.raises(TypeError, match="async def"):
        AdaptiveThrottle("api")(sync)  # type: ignore[arg-type]


_MODULE_THROTTLE = AdaptiveThrottle("module")


async def test_module_level_instance_works_on_every_backend(backend_name: str) -> None:
    _MODULE_THROTTLE.reset()  # each loop's clock starts afresh
    assert await _MODULE_THROTTLE.call(_value, 3) == 3
    assert _MODULE_THROTTLE.statistics().requests == 1
