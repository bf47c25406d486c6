"""Fallback on asyncio (looptime), trio (MockClock) and uvloop: what it answers, what it never
answers, degradation levels, listeners, statistics, configuration."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dwcp_resilience import (
    BulkheadFull,
    CircuitOpen,
    DeadlineExceeded,
    DegradationLevel,
    DegradationManager,
    Degraded,
    Fallback,
    FallbackUsed,
    NotCallable,
    RateLimited,
    Timeout,
)
from dwcp_resilience.testing import RecordingListener

pytestmark = pytest.mark.anyio


async def ok(value: int = 1) -> int:
    await anyio.lowlevel.checkpoint()
    return value


def raising(exc: BaseException) -> Any:
    async def fn() -> int:
        await anyio.lowlevel.checkpoint()
        raise exc

    return fn


async def test_success_passes_through_and_is_counted(backend_name: str) -> None:
    fallback = Fallback("f", value=-1)
    assert await fallback.call(ok, 5) == 5
    stats = fallback.statistics()
    assert (stats.successes, stats.total_fallbacks, stats.calls) == (1, 0, 1)


async def test_a_failure_gets_the_value(backend_name: str) -> None:
    fallback = Fallback("f", value="cached")
    assert await fallback.call(raising(ConnectionError("down"))) == "cached"
    assert fallback.statistics().fallbacks_by_reason() == {
        "failure": 1,
        "rejected": 0,
        "degraded": 0,
    }


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_handler_receives_the_exception(backend_name: str, kind: str) -> None:
    seen: list[BaseException] = []

    def sync_handler(exc: Exception) -> str:
        seen.append(exc)
        return f"from {type(exc).__name__}"

    async def async_handler(exc: Exception) -> str:
        await anyio.lowlevel.checkpoint()
        seen.append(exc)
        return f"from {type(exc).__name__}"

    fallback = Fallback("f", handler=sync_handler if kind == "sync" else async_handler)
    error = TimeoutError("slow")
    assert await fallback.call(raising(error)) == "from TimeoutError"
    assert seen == [error]


@pytest.mark.parametrize(
    "rejection",
    [CircuitOpen("b", 1.0), RateLimited("r", 0.5), BulkheadFull("k"), DeadlineExceeded("t", 1.0)],
)
async def test_our_rejections_are_answered_unless_on_rejected_is_false(
    backend_name: str, rejection: Exception
) -> None:
    answering = Fallback("f", value="fallback", on=ConnectionError)  # `on` does not match them
    assert await answering.call(raising(rejection)) == "fallback"
    assert answering.statistics().fallbacks_by_reason()["rejected"] == 1
    strict = Fallback("f", value="fallback", on_rejected=False)  # `on` matches everything
    with pytest.raises(type(rejection)):
        await strict.call(raising(rejection))
    assert strict.statistics().unhandled == 1


async def test_only_the_classified_failures_are_answered(backend_name: str) -> None:
    fallback = Fallback(
        "f", value=0, on=(ConnectionError, TimeoutError), ignore=ConnectionAbortedError
    )
    assert await fallback.call(raising(ConnectionResetError())) == 0
    with pytest.raises(KeyError):
        await fallback.call(raising(KeyError("bug")))
    with pytest.raises(ConnectionAbortedError):
        await fallback.call(raising(ConnectionAbortedError()))
    with pytest.raises(NotCallable):
        await fallback.call(ok(1))  # type: ignore[arg-type]
    by_predicate = Fallback("f", value=0, on=lambda exc: "retry" in str(exc))
    assert await by_predicate.call(raising(ValueError("please retry"))) == 0
    with pytest.raises(ValueError, match="nope"):
        await by_predicate.call(raising(ValueError("nope")))
    stats = fallback.statistics()
    assert (stats.total_fallbacks, stats.unhandled) == (1, 2)


@pytest.mark.parametrize("fatal", ["cancel", KeyboardInterrupt, SystemExit, GeneratorExit])
async def test_cancellation_and_interrupts_are_never_answered(
    backend_name: str, fatal: Any
) -> None:
    fallback = Fallback("f", value="never", on=lambda exc: True)  # the widest matcher
    if fatal == "cancel":
        entered = anyio.Event()

        async def slow() -> str:
            entered.set()
            await anyio.sleep(10)
            return "late"

        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(fallback.call, slow)
                await entered.wait()
                scope.cancel()
        assert scope.cancelled_caught
    else:
        with pytest.raises(fatal):
            await fallback.call(raising(fatal()))
    stats = fallback.statistics()
    assert (stats.cancelled, stats.total_fallbacks) == (1, 0)


async def test_a_raising_handler_propagates_chained_and_counted(backend_name: str) -> None:
    def broken(exc: Exception) -> int:
        raise LookupError("cache miss")

    fallback = Fallback("f", handler=broken)
    original = ConnectionError("down")
    with pytest.raises(LookupError) as info:
        await fallback.call(raising(original))
    assert info.value.__context__ is original
    stats = fallback.statistics()
    assert (stats.handler_errors, stats.total_fallbacks) == (1, 1)


async def test_cancelled_inside_an_async_handler(backend_name: str) -> None:
    entered = anyio.Event()

    async def slow_handler(exc: Exception) -> str:
        entered.set()
        await anyio.sleep(10)
        return "late"

    fallback = Fallback("f", handler=slow_handler)
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(fallback.call, raising(ConnectionError()))
            await entered.wait()
            scope.cancel()
    assert scope.cancelled_caught


@pytest.mark.virtual_time
async def test_around_a_timeout_the_deadline_gets_the_fallback(backend_name: str) -> None:
    fallback = Fallback("f", value="stale")
    timeout = Timeout(1.0)
    start = anyio.current_time()
    assert await fallback.call(timeout.call, anyio.sleep, 10) == "stale"
    assert anyio.current_time() - start == pytest.approx(1.0)


# --- degradation ----------------------------------------------------------------------------------


async def test_shed_at_a_degradation_level(backend_name: str) -> None:
    dm = DegradationManager("dm")
    received: list[Exception] = []

    def cached(exc: Exception) -> str:
        received.append(exc)
        return "cached"

    fallback = Fallback(
        "f", handler=cached, degradation=dm, shed_at=DegradationLevel.SEVERELY_DEGRADED
    )
    ran: list[int] = []

    async def backend() -> str:
        ran.append(1)
        return "fresh"

    assert await fallback.call(backend) == "fresh"
    dm.set_component_level("db", DegradationLevel.DEGRADED)
    assert await fallback.call(backend) == "fresh"  # below shed_at: still called
    dm.set_component_level("db", DegradationLevel.EMERGENCY)
    assert await fallback.call(backend) == "cached"  # at or above: not called at all
    assert len(ran) == 2
    shed = received[0]
    assert isinstance(shed, Degraded) and shed.level == DegradationLevel.EMERGENCY
    dm.recover("db")
    assert await fallback.call(backend) == "fresh"
    assert fallback.statistics().fallbacks_by_reason()["degraded"] == 1
    assert fallback.shed_at == DegradationLevel.SEVERELY_DEGRADED


@settings(max_examples=50, deadline=None)
@given(level=st.sampled_from(list(DegradationLevel)), shed=st.sampled_from(list(DegradationLevel)))
def test_shed_exactly_at_and_above_the_level(
    level: DegradationLevel, shed: DegradationLevel
) -> None:
    async def main() -> tuple[str, int]:
        dm = DegradationManager("dm")
        dm.set_component_level("c", level)
        fallback = Fallback("f", value="fallback", degradation=dm, shed_at=shed)
        calls = 0

        async def backend() -> str:
            nonlocal calls
            calls += 1
            return "backend"

        return await fallback.call(backend), calls

    answer, calls = anyio.run(main)
    assert (answer, calls) == (("fallback", 0) if level >= shed else ("backend", 1))


# --- idioms, events, config -----------------------------------------------------------------------


async def test_decorator_keeps_the_signature(backend_name: str) -> None:
    fallback: Fallback[str] = Fallback("f", value="default")

    @fallback
    async def greet(name: str, *, punctuation: str = "!") -> str:
        if not name:
            raise ConnectionError("no name")
        return f"hello {name}{punctuation}"

    assert await greet("ann", punctuation="?") == "hello ann?"
    assert await greet("") == "default"
    assert greet.__name__ == "greet"
    with pytest.raises(TypeError, match="async def"):
        fallback(lambda: None)  # type: ignore[arg-type, return-value]


async def test_the_decorator_sheds_and_never_answers_a_cancellation(backend_name: str) -> None:
    dm = DegradationManager("dm")
    fallback = Fallback("f", value="shed", degradation=dm, shed_at=DegradationLevel.EMERGENCY)
    events: RecordingListener[FallbackUsed] = RecordingListener()
    fallback.add_listener(events)
    entered = anyio.Event()

    @fallback
    async def slow() -> str:
        entered.set()
        await anyio.sleep(10)
        return "late"

    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(slow)
            await entered.wait()
            scope.cancel()
    assert scope.cancelled_caught
    dm.set_component_level("net", DegradationLevel.EMERGENCY)
    assert await slow() == "shed"
    stats = fallback.statistics()
    assert (stats.cancelled, stats.fallbacks_by_reason()["degraded"]) == (1, 1)
    assert [e.exception for e in events.events] == [Degraded]
    assert fallback.name == "f"


async def test_listeners_see_each_fallback_and_a_raising_one_changes_nothing(
    backend_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    events: RecordingListener[FallbackUsed] = RecordingListener()

    def broken(event: FallbackUsed) -> None:
        raise RuntimeError("listener bug")

    fallback = Fallback("f", value=0, listeners=[broken, events])
    with caplog.at_level(logging.ERROR, logger="dwcp_resilience"):
        assert await fallback.call(raising(CircuitOpen("b", 1.0))) == 0
    assert "listener" in caplog.text
    assert [(e.policy, e.reason, e.exception) for e in events.events] == [
        ("f", "rejected", CircuitOpen)
    ]
    fallback.remove_listener(events)
    await fallback.call(raising(ConnectionError()))
    assert len(events.events) == 1
    assert "fallbacks=2" in repr(fallback)


async def test_many_concurrent_calls_are_counted_exactly(backend_name: str) -> None:
    fallback = Fallback("f", handler=lambda exc: -1)

    async def op(i: int) -> int:
        await anyio.sleep(0.001 * (i % 3))
        if i % 4 == 0:
            raise ConnectionError(str(i))
        if i % 4 == 1:
            raise CircuitOpen("b", 1.0)
        return i

    results: dict[int, int] = {}

    async def one(i: int) -> None:
        results[i] = await fallback.call(op, i)

    async with anyio.create_task_group() as tg:
        for i in range(400):
            tg.start_soon(one, i)
    assert results == {i: (-1 if i % 4 in (0, 1) else i) for i in range(400)}
    stats = fallback.statistics()
    assert stats.successes == 200
    assert stats.fallbacks_by_reason() == {"failure": 100, "rejected": 100, "degraded": 0}


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({}, TypeError, "value= and handler="),
        ({"value": 1, "handler": lambda exc: 2}, TypeError, "value= and handler="),
        ({"handler": 3}, TypeError, "handler"),
        ({"value": 1, "on": 3}, TypeError, "failure"),
        ({"value": 1, "ignore": "x"}, TypeError, "ignore"),
        ({"value": 1, "on_rejected": 1}, TypeError, "on_rejected"),
        ({"value": 1, "shed_at": 2}, ValueError, "shed_at"),
        ({"value": 1, "degradation": DegradationManager("d")}, ValueError, "shed_at"),
        (
            {"value": 1, "degradation": DegradationManager("d"), "shed_at": -1},
            ValueError,
            "shed_at",
        ),
        (
            {"value": 1, "degradation": DegradationManager("d"), "shed_at": True},
            TypeError,
            "shed_at",
        ),
        ({"value": 1, "degradation": object(), "shed_at": 2}, TypeError, "degradation"),
        ({"value": 1, "clock": 3}, TypeError, "clock"),
        ({"value": 1, "listeners": [3]}, TypeError, "listener"),
        ({"value": 1, "name": ""}, ValueError, "name"),
    ],
)
def test_bad_config_fails_at_construction(
    kwargs: dict[str, Any], error: type[Exception], field: str
) -> None:
    args = {"name": "f", **kwargs}
    with pytest.raises(error, match=field):
        Fallback(**args)


def test_value_none_is_a_value() -> None:
    fallback = Fallback("f", value=None)

    async def main() -> object:
        return await fallback.call(raising(ConnectionError()))

    assert anyio.run(main) is None
