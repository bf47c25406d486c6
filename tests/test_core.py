"""Core vocabulary: errors, outcome classification, listeners, context, pipeline, clock."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import anyio
import pytest

from dwcp_resilience import (
    BulkheadFull,
    CircuitOpen,
    Classifier,
    DeadlineExceeded,
    Event,
    Listeners,
    OperationContext,
    Outcome,
    Pipeline,
    PolicyBase,
    RateLimited,
    Rejected,
    ResilienceError,
    current_context,
    current_deadline,
    loop_time,
)
from dwcp_resilience.core.policy import P, T
from dwcp_resilience.core.validate import check_int, check_number
from dwcp_resilience.testing import FakeClock, RecordingListener

# --- errors -----------------------------------------------------------------------------------


def test_error_tree() -> None:
    for cls in (CircuitOpen, RateLimited, BulkheadFull):
        assert issubclass(cls, Rejected)
    assert issubclass(Rejected, ResilienceError)
    assert issubclass(DeadlineExceeded, ResilienceError)
    assert issubclass(DeadlineExceeded, TimeoutError)
    assert not issubclass(Rejected, TimeoutError)


def test_rejections_carry_retry_after_and_describe_themselves() -> None:
    exc = CircuitOpen("db", retry_after=1.5)
    assert exc.retry_after == 1.5
    assert "circuit breaker is open" in str(exc)
    assert "1.500" in str(exc)
    assert repr(RateLimited("x")) == "RateLimited('x', retry_after=None)"
    full = BulkheadFull("pool", reason="timeout")
    assert full.reason == "timeout"
    assert "wait timeout" in str(full)
    assert "is full" in str(BulkheadFull("pool"))
    assert "2s" in str(DeadlineExceeded("t", 2.0))
    assert "deadline exceeded" in str(DeadlineExceeded("t"))


# --- outcome ----------------------------------------------------------------------------------


def test_base_exceptions_and_rejections_are_neutral() -> None:
    classifier = Classifier()
    for exc in (
        asyncio.CancelledError(),
        KeyboardInterrupt(),
        SystemExit(1),
        GeneratorExit(),
        CircuitOpen("x"),
        RateLimited("x"),
        BaseExceptionGroup("g", [asyncio.CancelledError()]),
    ):
        assert classifier.of_exception(exc) is Outcome.NEUTRAL, exc


def test_default_counts_every_exception_as_failure() -> None:
    assert Classifier().of_exception(ValueError()) is Outcome.FAILURE
    assert Classifier().of_result(None) is Outcome.SUCCESS


def test_failure_types_ignore_and_other_exceptions() -> None:
    classifier = Classifier((ConnectionError, TimeoutError), ignore=ConnectionResetError)
    assert classifier.of_exception(ConnectionRefusedError()) is Outcome.FAILURE
    assert classifier.of_exception(ConnectionResetError()) is Outcome.NEUTRAL
    assert classifier.of_exception(KeyError()) is Outcome.SUCCESS
    group = ExceptionGroup("g", [ValueError(), ConnectionError()])
    assert classifier.of_exception(group) is Outcome.FAILURE
    assert classifier.of_exception(ExceptionGroup("g", [ValueError()])) is Outcome.SUCCESS


def test_predicates_and_result_predicate() -> None:
    classifier = Classifier(lambda e: "bad" in str(e), failure_result=lambda r: r is None)
    assert classifier.has_result_predicate
    assert classifier.of_exception(ValueError("bad thing")) is Outcome.FAILURE
    assert classifier.of_exception(ValueError("fine")) is Outcome.SUCCESS
    assert classifier.of_result(None) is Outcome.FAILURE
    assert classifier.of_result(1) is Outcome.SUCCESS


def test_raising_predicates_count_as_failure_and_are_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(_: object) -> bool:
        raise RuntimeError("predicate bug")

    classifier = Classifier(broken, failure_result=broken)
    with caplog.at_level(logging.ERROR, logger="dwcp_resilience"):
        assert classifier.of_exception(ValueError()) is Outcome.FAILURE
        assert classifier.of_result(1) is Outcome.FAILURE
    assert len(caplog.records) == 2


@pytest.mark.parametrize("bad", [int, (), (ValueError, 3), "ValueError", 3])
def test_bad_matchers_are_type_errors(bad: Any) -> None:
    with pytest.raises(TypeError, match="failure"):
        Classifier(bad)


def test_bad_result_predicate_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="failure_result"):
        Classifier(failure_result=3)  # type: ignore[arg-type]


# --- listeners --------------------------------------------------------------------------------


def test_raising_listener_is_logged_and_the_next_is_called(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder: RecordingListener[Event] = RecordingListener()

    def broken(event: Event) -> None:
        raise RuntimeError("listener bug")

    listeners: Listeners[Event] = Listeners([broken, recorder])
    with caplog.at_level(logging.ERROR, logger="dwcp_resilience"):
        listeners.emit(Event("p", 1.0))
    assert recorder.events == [Event("p", 1.0)]
    assert recorder.of_type(Event) == [Event("p", 1.0)]
    assert "listener bug" in caplog.text


def test_async_and_non_callable_listeners_are_refused() -> None:
    async def coro(event: Event) -> None:
        return None

    listeners: Listeners[Event] = Listeners()
    assert not listeners
    with pytest.raises(TypeError, match="async"):
        listeners.add(coro)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        Listeners([3])  # type: ignore[arg-type]
    recorder: RecordingListener[Event] = RecordingListener()
    listeners.add(recorder)
    assert len(listeners) == 1
    listeners.remove(recorder)
    assert not listeners


# --- validation -------------------------------------------------------------------------------


def test_check_number_rules() -> None:
    assert check_number(2, "x") == 2.0
    with pytest.raises(TypeError, match="x"):
        check_number(True, "x")
    with pytest.raises(ValueError, match="x"):
        check_number(math.nan, "x")
    with pytest.raises(ValueError, match="finite"):
        check_number(math.inf, "x")
    assert check_number(math.inf, "x", allow_inf=True) == math.inf
    with pytest.raises(ValueError, match=">="):
        check_number(-1, "x", min_value=0)
    with pytest.raises(ValueError, match="zero"):
        check_number(0, "x", min_value=0, allow_zero=False)
    with pytest.raises(ValueError, match="<="):
        check_number(2, "x", max_value=1)
    assert check_int(3, "n", min_value=1) == 3
    with pytest.raises(TypeError):
        check_int(1.0, "n")
    with pytest.raises(TypeError):
        check_int(False, "n")
    with pytest.raises(ValueError):
        check_int(0, "n", min_value=1)
    with pytest.raises(ValueError):
        check_int(9, "n", max_value=1)


# --- context ----------------------------------------------------------------------------------


def test_context_validation() -> None:
    with pytest.raises(ValueError, match="operation"):
        OperationContext("")
    with pytest.raises(TypeError, match="operation"):
        OperationContext(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN"):
        OperationContext("op", deadline=math.nan)
    with pytest.raises(TypeError, match="deadline"):
        OperationContext("op", deadline="soon")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="labels"):
        OperationContext("op", labels={"a": 1})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="NaN"):
        OperationContext.with_timeout("op", math.nan)
    ctx = OperationContext("op", labels={"peer": "a"})
    with pytest.raises(TypeError):
        ctx.labels["peer"] = "b"  # type: ignore[index]


def test_remaining_and_expiry() -> None:
    clock = FakeClock(100)
    ctx = OperationContext.with_timeout("op", 5, clock=clock)
    assert ctx.deadline == 105
    assert ctx.remaining(101) == 4
    assert ctx.remaining(200) == 0
    assert ctx.expired(105)
    assert not ctx.expired(104)
    assert OperationContext("op").remaining() == math.inf


def test_activate_nests_and_clamps_the_effective_deadline() -> None:
    assert current_context() is None
    assert current_deadline() == math.inf
    outer = OperationContext("outer", deadline=10)
    inner = OperationContext("inner", deadline=20)
    with outer.activate():
        assert current_context() is outer
        assert current_deadline() == 10
        with inner.activate():
            assert current_context() is inner
            assert current_deadline() == 10  # the later inner deadline cannot extend the outer one
        assert current_context() is outer
    assert current_context() is None
    assert current_deadline() == math.inf


@pytest.mark.anyio
async def test_context_propagates_to_child_tasks(anyio_backend: Any) -> None:
    ctx = OperationContext.with_timeout("op", 30, labels={"peer": "p1"})
    seen: list[OperationContext | None] = []

    async def child() -> None:
        seen.append(current_context())

    with ctx.activate():
        async with anyio.create_task_group() as tg:
            tg.start_soon(child)
    assert seen == [ctx]
    assert ctx.remaining() == pytest.approx(30, abs=0.1)


# --- clock ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_loop_time_follows_the_backend(anyio_backend: Any) -> None:
    assert loop_time() == pytest.approx(anyio.current_time(), abs=0.01)


def test_loop_time_without_a_loop_is_monotonic() -> None:
    assert loop_time() == pytest.approx(time.monotonic(), abs=0.01)


def test_fake_clock() -> None:
    clock = FakeClock()
    clock.advance(1.5)
    assert clock() == 1.5
    with pytest.raises(ValueError):
        clock.advance(-1)
    with pytest.raises(ValueError):
        clock.advance(math.inf)
    assert "1.5" in repr(clock)


# --- pipeline ---------------------------------------------------------------------------------


class Recording(PolicyBase):
    def __init__(self, name: str, log: list[str]) -> None:
        self._name = name
        self.log = log

    @property
    def name(self) -> str:
        return self._name

    async def call(self, fn: Any, /, *args: P.args, **kwargs: P.kwargs) -> T:  # type: ignore[valid-type]
        self.log.append(f"enter {self._name}")
        try:
            result: T = await fn(*args, **kwargs)
            return result
        finally:
            self.log.append(f"exit {self._name}")


@pytest.mark.anyio
async def test_pipeline_runs_outermost_first(anyio_backend: Any) -> None:
    log: list[str] = []
    pipeline = Pipeline(Recording("a", log), Recording("b", log), Recording("c", log), name="p")

    async def op(x: int, *, y: int) -> int:
        log.append("op")
        return x + y

    assert await pipeline.call(op, 1, y=2) == 3
    assert log == ["enter a", "enter b", "enter c", "op", "exit c", "exit b", "exit a"]
    assert "a > b > c" in repr(pipeline)
    decorated = pipeline(op)
    assert await decorated(2, y=3) == 5


@pytest.mark.anyio
async def test_empty_pipeline_calls_through(anyio_backend: Any) -> None:
    async def op() -> str:
        return "x"

    assert await Pipeline(name="empty").call(op) == "x"


def test_pipeline_refuses_non_policies_and_sync_functions() -> None:
    with pytest.raises(TypeError, match="not a policy"):
        Pipeline(3, name="p")  # type: ignore[arg-type]

    def sync() -> None:
        return None

    with pytest.raises(TypeError, match="async def"):
        Pipeline(name="p")(sync)  # type: ignore[arg-type]
