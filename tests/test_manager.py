"""ResilienceManager: order, propagation, missing parts, concurrency, cancellation, deadlines."""

from __future__ import annotations

import math
import random
import warnings
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from dwcp_resilience import (
    AIMD,
    AdaptiveConcurrencyLimiter,
    AdaptiveThrottle,
    BulkheadFull,
    CircuitOpen,
    DeadlineExceeded,
    DegradationLevel,
    Fallback,
    Hedge,
    OperationContext,
    RateLimited,
    Timeout,
    current_deadline,
    hedge_attempt,
)
from dwcp_resilience.manager import (
    PipelineConfigError,
    PipelineWarning,
    ResilienceManager,
    ResilienceSnapshot,
)
from dwcp_resilience.policies.backoff import ConstantBackoff
from dwcp_resilience.policies.breaker import BreakerState, CircuitBreaker
from dwcp_resilience.policies.breaker_core import TimeWindow
from dwcp_resilience.policies.bulkhead import Bulkhead
from dwcp_resilience.policies.chaos import Chaos
from dwcp_resilience.policies.ratelimit import RateLimiter
from dwcp_resilience.policies.retry import Retry
from dwcp_resilience.slo.checks import PingCheck
from dwcp_resilience.testing import FakeClock, RecordingListener

pytestmark = pytest.mark.anyio


class Boom(ConnectionError):
    pass


def _recording(cls: type[Any], log: list[str], label: str) -> type[Any]:
    """A subclass of a policy type whose ``call`` logs ``label`` on the way in."""

    class Recording(cls):  # type: ignore[misc]
        async def call(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            log.append(label)
            return await super().call(fn, *args, **kwargs)

    return Recording


# --- order and propagation --------------------------------------------------------------------


async def test_order_is_the_documented_one(anyio_backend: Any) -> None:
    log: list[str] = []
    rm = ResilienceManager("m")
    rm.register(
        "op",
        _recording(Chaos, log, "chaos")("chaos", rate=0.0),
        _recording(Timeout, log, "timeout")(5.0),
        _recording(RateLimiter, log, "rate_limiter")("rl", rate=1000, burst=10),
        _recording(AdaptiveConcurrencyLimiter, log, "adaptive_concurrency")("ac"),
        _recording(AdaptiveThrottle, log, "adaptive_throttle")("at"),
        _recording(CircuitBreaker, log, "circuit_breaker")("cb"),
        _recording(Retry, log, "retry")("r", max_retries=1, backoff=ConstantBackoff(0.0)),
        _recording(Bulkhead, log, "bulkhead")("bh", max_concurrent=2),
    )

    async def op(ctx: OperationContext) -> str:
        log.append(f"op:{ctx.operation}")
        return "result"

    assert await rm.execute_with_all_protections("op", op) == "result"
    assert log == [
        "bulkhead",
        "retry",
        "circuit_breaker",
        "adaptive_throttle",
        "adaptive_concurrency",
        "rate_limiter",
        "timeout",
        "chaos",
        "op:op",
    ]
    assert rm.describe("op").layers == (
        "bulkhead",
        "retry",
        "circuit_breaker",
        "adaptive_throttle",
        "adaptive_concurrency",
        "rate_limiter",
        "timeout",
        "chaos",
    )


class NeverRefuses(random.Random):
    """Draws that never fall under a throttle's probability (below 1): it lets every call through,
    and still counts."""

    def random(self) -> float:
        return 1.0 - 1e-12


async def test_the_adaptive_policies_see_each_attempt_and_stay_out_of_the_breaker(
    anyio_backend: Any,
) -> None:
    """Inside the retry: each attempt is a throttle request and a concurrency sample. Outside the
    rate limiter: its refusal is no request to the backend and no sample. The breaker, outside
    both, counts a throttle's refusal as no failure."""
    rm = ResilienceManager("m")
    rm.register_retry_policy("op", 2, 0.0, 0.0, 1.0, False, retry_on=Boom)
    breaker = rm.register_circuit_breaker("op", max_failures=10)
    throttle = rm.register_adaptive_throttle("op", failure=Boom, rng=NeverRefuses())
    limiter = rm.register_adaptive_concurrency_limiter("op", initial_limit=5, failure=Boom)
    rm.register_rate_limiter("op", 1.0, 4, max_wait=0.0)
    calls = 0

    async def flaky(ctx: OperationContext) -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise Boom("down")
        return "up"

    assert await rm.execute_with_all_protections("op", flaky) == "up"  # 3 attempts, 3 tokens
    throttled = throttle.statistics()
    assert (throttled.requests, throttled.accepts) == (3, 1)
    sampled = limiter.statistics()
    assert (sampled.samples, sampled.drops) == (3, 2)
    await rm.execute_with_all_protections("op", flaky)  # the 4th token
    with pytest.raises(RateLimited):  # no token: inside the throttle and the limiter
        await rm.execute_with_all_protections("op", flaky)
    assert throttle.statistics().neutral == 1 and limiter.statistics().ignored == 1
    assert breaker.statistics().failures == 2
    assert breaker.statistics().ignored == 1  # the inner rejection


def test_register_the_adaptive_policies_on_the_managers_clock() -> None:
    clock = FakeClock(100.0)
    rm = ResilienceManager("m", clock=clock)
    throttle = rm.register_adaptive_throttle("op", k=1.5, window=60.0, buckets=6)
    limiter = rm.register_adaptive_concurrency_limiter(
        "op", algorithm=AIMD(latency_threshold=0.5), initial_limit=3, max_queue=2, max_wait=1.5
    )
    assert rm.components("op") == {"adaptive_throttle": throttle, "adaptive_concurrency": limiter}
    assert (throttle.k, throttle.window, limiter.limit) == (1.5, 60.0, 3)
    assert throttle.statistics().window == 60.0
    rm.register_timeout("op", 2.0)
    rm.register_retry_policy("op", 1)
    # two attempts, each may wait 1.5 s for a permit, then run 2.0 s; one backoff
    assert rm.describe("op").worst_case_latency == pytest.approx(2 * (1.5 + 2.0) + 10.0)
    other = ResilienceManager("n")
    other.register("op", AdaptiveThrottle("t"), AdaptiveConcurrencyLimiter("c"))
    assert list(other.components("op")) == ["adaptive_throttle", "adaptive_concurrency"]


async def test_order_with_a_fallback_and_a_hedge(anyio_backend: Any) -> None:
    """fallback -> [deadline] -> bulkhead -> retry -> hedge -> circuit breaker -> rate limiter ->
    attempt timeout -> chaos -> op; the fallback is outside the operation's deadline, the
    bulkhead inside it."""
    log: list[str] = []

    def recording(cls: type[Any], label: str) -> type[Any]:
        class Recording(cls):  # type: ignore[misc]
            async def call(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
                deadline = "deadline" if math.isfinite(current_deadline()) else "no deadline"
                log.append(f"{label} ({deadline})")
                return await super().call(fn, *args, **kwargs)

        return Recording

    rm = ResilienceManager("m")
    rm.register(
        "op",
        recording(Chaos, "chaos")("chaos", rate=0.0),
        recording(Timeout, "timeout")(5.0),
        recording(RateLimiter, "rate_limiter")("rl", rate=1000, burst=10),
        recording(CircuitBreaker, "circuit_breaker")("cb"),
        recording(Hedge, "hedge")("hd", delay=4.0),
        recording(Retry, "retry")("r", max_retries=1, backoff=ConstantBackoff(0.0)),
        recording(Bulkhead, "bulkhead")("bh", max_concurrent=2),
        recording(Fallback, "fallback")("fb", value="fallback"),
    )
    rm.register_deadline("op", 60.0)

    async def op(ctx: OperationContext) -> str:
        log.append("op")
        return "result"

    assert await rm.execute_with_all_protections("op", op) == "result"
    assert log == [
        "fallback (no deadline)",
        "bulkhead (deadline)",
        "retry (deadline)",
        "hedge (deadline)",
        "circuit_breaker (deadline)",
        "rate_limiter (deadline)",
        "timeout (deadline)",
        "chaos (deadline)",
        "op",
    ]
    assert rm.describe("op").layers == (
        "fallback",
        "deadline",
        "bulkhead",
        "retry",
        "hedge",
        "circuit_breaker",
        "rate_limiter",
        "timeout",
        "chaos",
    )


@pytest.mark.virtual_time
async def test_order_seen_by_recording_listeners(anyio_backend: Any) -> None:
    """Every attempt fails after 0.5 s. The hedge races two attempts per retry attempt, the retry
    retries the hedged call once, the breaker sees all four attempts, and the fallback answers
    what the retry gave up on: the events come in exactly that nesting."""
    events: RecordingListener[Any] = RecordingListener()
    rm = ResilienceManager("m")
    fallback = rm.register_fallback("op", value="fallback", listeners=[events])
    retry = rm.register_retry_policy("op", 1, 0.25, 0.25, 1.0, False, retry_on=OSError)
    retry.add_listener(events)
    hedge = rm.register_hedge("op", delay=0.1, budget_ratio=None, listeners=[events])
    breaker = rm.register_circuit_breaker("op", max_failures=10)
    attempts: list[tuple[int, float]] = []
    start = anyio.current_time()

    async def op(ctx: OperationContext) -> str:
        attempts.append((hedge_attempt(), anyio.current_time() - start))
        await anyio.sleep(0.5)
        raise Boom("down")

    assert await rm.execute_with_all_protections("op", op) == "fallback"
    assert [type(e).__name__ for e in events.events] == [
        "HedgeStarted",
        "RetryScheduled",
        "HedgeStarted",
        "RetryGaveUp",
        "FallbackUsed",
    ]
    assert attempts == [(1, 0.0), (2, 0.1), (1, 0.85), (2, pytest.approx(0.95))]
    assert breaker.statistics().failures == 4
    assert hedge.statistics().failures == 2 and fallback.statistics().total_fallbacks == 1
    counts = rm.statistics("op")
    assert (counts.calls, counts.failures) == (1, 1)  # the real outcome, behind the fallback


async def test_each_attempt_passes_the_breaker_and_spends_a_token(anyio_backend: Any) -> None:
    rm = ResilienceManager("m")
    retry = rm.register_retry_policy("op", 2, 0.0, 0.0, 1.0, False, retry_on=Boom)
    breaker = rm.register_circuit_breaker("op", max_failures=10, timeout=None)
    limiter = rm.register_rate_limiter("op", 1000, 10)
    calls = 0

    async def op(ctx: OperationContext) -> None:
        nonlocal calls
        calls += 1
        raise Boom("down")

    with pytest.raises(Boom) as info:
        await rm.execute_with_all_protections("op", op)
    assert calls == 3
    assert "3 attempts" in "".join(getattr(info.value, "__notes__", []))
    assert breaker.statistics().failures == 3
    assert limiter.statistics().allowed == 3
    assert retry.statistics().successes == 0


async def test_nothing_runs_until_the_call_is_awaited(anyio_backend: Any) -> None:
    rm = ResilienceManager("m")
    limiter = RateLimiter("op", rate=0.001, burst=1)
    rm.register("op", limiter)
    ran: list[str] = []

    async def op(ctx: OperationContext) -> str:
        ran.append(ctx.operation)
        return "done"

    pending = rm.execute_with_all_protections("op", op)
    assert ran == [] and rm.statistics("op").calls == 0
    assert limiter.statistics().allowed == 0  # no token taken before the await
    assert await pending == "done"
    assert ran == ["op"] and rm.statistics("op").calls == 1
    rm.execute_with_all_protections("op", op).close()  # dropped unawaited: no effect
    assert rm.statistics("op").calls == 1 and limiter.statistics().allowed == 1


async def test_errors_propagate_unchanged_and_results_return(anyio_backend: Any) -> None:
    rm = ResilienceManager("m")
    rm.register_circuit_breaker("op", timeout=1.0)
    rm.register_retry_policy("op", 0)
    error = KeyError("the real one")

    async def failing(ctx: OperationContext) -> None:
        raise error

    async def ok(ctx: OperationContext) -> dict[str, int]:
        return {"n": 1}

    with pytest.raises(KeyError) as info:
        await rm.execute_with_all_protections("op", failing)
    assert info.value is error
    assert await rm.execute_with_all_protections("op", ok) == {"n": 1}
    stats = rm.statistics("op")
    assert (stats.calls, stats.successes, stats.failures) == (2, 1, 1)


async def test_missing_components_never_skip_the_call(anyio_backend: Any) -> None:
    """Go skipped fn when the bulkhead, breaker or retry was missing; here each is optional."""
    rm = ResilienceManager("m")
    rm.register_error_budget("only-budget", 0.99)
    ran: list[str] = []

    async def op(ctx: OperationContext) -> str:
        ran.append(ctx.operation)
        return ctx.operation

    assert await rm.execute_with_all_protections("only-budget", op) == "only-budget"
    assert await rm.execute_with_all_protections("nothing-registered", op) == "nothing-registered"
    ctx = OperationContext("with-context", labels={"peer": "p"})
    assert await rm.execute_with_all_protections(ctx, op) == "with-context"
    assert ran == ["only-budget", "nothing-registered", "with-context"]
    assert rm.statistics("nothing-registered").successes == 1


async def test_op_receives_the_context_and_sees_it_as_current(anyio_backend: Any) -> None:
    from dwcp_resilience import current_context

    rm = ResilienceManager("m")
    ctx = OperationContext("op", labels={"tenant": "t1"})

    async def op(received: OperationContext) -> bool:
        return received is ctx and current_context() is ctx

    assert await rm.execute_with_all_protections(ctx, op)
    assert current_context() is None


# --- budgets ----------------------------------------------------------------------------------


@pytest.mark.virtual_time
async def test_outcomes_and_latency_reach_the_budgets(anyio_backend: Any) -> None:
    rm = ResilienceManager("m")
    budget = rm.register_error_budget("op", 0.9, window=60, min_requests=1)
    latency = rm.register_latency_budget("op", target=0.5, percentile=95.0)
    rm.register_circuit_breaker("op", max_failures=2, timeout=None, reset_timeout=30)

    async def slow_ok(ctx: OperationContext) -> None:
        await anyio.sleep(0.25)

    async def fail(ctx: OperationContext) -> None:
        await anyio.sleep(1.0)
        raise Boom()

    await rm.execute_with_all_protections("op", slow_ok)
    for _ in range(2):
        with pytest.raises(Boom):
            await rm.execute_with_all_protections("op", fail)
    with pytest.raises(CircuitOpen):
        await rm.execute_with_all_protections("op", slow_ok)
    assert budget.counts() == (4, 3)  # the rejection counts as a failed request
    assert latency.total == 3  # but its (zero) latency is not recorded
    assert latency.p50 == pytest.approx(1.0, abs=1e-3)
    stats = rm.statistics("op")
    assert (stats.successes, stats.failures, stats.rejected) == (1, 2, 1)


# --- deadlines --------------------------------------------------------------------------------


@pytest.mark.virtual_time
async def test_context_deadline_bounds_retries_and_backoffs(anyio_backend: Any) -> None:
    rm = ResilienceManager("m")
    rm.register_retry_policy("op", 8, 0.4, 0.4, 1.0, False, retry_on=Boom)
    attempts: list[float] = []
    start = anyio.current_time()

    async def op(ctx: OperationContext) -> None:
        attempts.append(anyio.current_time() - start)
        await anyio.sleep(0.1)
        raise Boom()

    ctx = OperationContext.with_timeout("op", 1.2)
    with pytest.raises((Boom, DeadlineExceeded)):
        await rm.execute_with_all_protections(ctx, op)
    elapsed = anyio.current_time() - start
    assert elapsed <= 1.2 + 1e-6
    assert len(attempts) <= 3  # 0.0, 0.5, 1.0 at most: none starts that cannot finish
    assert all(t < 1.2 for t in attempts)


@pytest.mark.virtual_time
async def test_deadline_also_bounds_a_hung_attempt(anyio_backend: Any) -> None:
    rm = ResilienceManager("m")
    rm.register_retry_policy("op", 3, 0.1, 0.1, 1.0, False, retry_on=Boom)

    async def hang(ctx: OperationContext) -> None:
        await anyio.sleep(100)

    start = anyio.current_time()
    with pytest.raises(DeadlineExceeded):
        await rm.execute_with_all_protections(OperationContext.with_timeout("op", 2), hang)
    assert anyio.current_time() - start == pytest.approx(2, abs=1e-3)


@pytest.mark.virtual_time
async def test_registered_deadline_bounds_bulkhead_queueing(anyio_backend: Any) -> None:
    rm = ResilienceManager("m")
    bulkhead = rm.register_bulkhead("op", 1, max_queue=10)
    rm.register_deadline("op", 1.0)

    async def hold(ctx: OperationContext) -> None:
        await anyio.sleep(0.9)

    results: list[str] = []

    async def caller() -> None:
        try:
            await rm.execute_with_all_protections("op", hold)
            results.append("ok")
        except DeadlineExceeded:
            results.append("deadline")

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(caller)
    assert sorted(results) == ["deadline", "deadline", "ok"]
    assert bulkhead.statistics().available == 1


# --- cancellation leaves nothing behind ---------------------------------------------------------


@pytest.mark.virtual_time
@pytest.mark.parametrize("stage", ["queued", "backoff", "tokens", "probe", "op"])
async def test_cancelling_the_caller_at_each_stage_leaks_nothing(
    anyio_backend: Any, stage: str
) -> None:
    rm = ResilienceManager("m")
    bulkhead = rm.register_bulkhead("op", 1, max_queue=5)
    retry = rm.register_retry_policy("op", 3, 5.0, 5.0, 1.0, False, retry_on=Boom)
    breaker = rm.register_circuit_breaker(
        "op", max_failures=1, timeout=None, reset_timeout=1.0, half_open_successes=1
    )
    limiter = rm.register_rate_limiter("op", 1.0, 1)
    assert retry is not None
    gate = anyio.Event()

    async def blocker(ctx: OperationContext) -> None:
        await gate.wait()

    async def fail(ctx: OperationContext) -> None:
        raise Boom()

    async def hang(ctx: OperationContext) -> None:
        await anyio.sleep(100)

    async with anyio.create_task_group() as tg:
        if stage == "queued":
            tg.start_soon(rm.execute_with_all_protections, "op", blocker)
            await anyio.sleep(0.01)
            with anyio.move_on_after(0.5):
                await rm.execute_with_all_protections("op", hang)
            gate.set()
        elif stage == "backoff":
            with anyio.move_on_after(1.0):  # first attempt fails, then sleeps 5 s
                await rm.execute_with_all_protections("op", fail)
        elif stage == "tokens":
            limiter.try_acquire()  # the bucket is empty now: the next attempt waits ~1 s
            with anyio.move_on_after(0.2):
                await rm.execute_with_all_protections("op", hang)
        elif stage == "probe":
            with pytest.raises(Boom):  # trips the breaker (retries: Boom then CircuitOpen)
                await rm.execute_with_all_protections("op", fail)
            await anyio.sleep(6)  # past reset_timeout and refilled bucket
            with anyio.move_on_after(0.5):
                await rm.execute_with_all_protections("op", hang)
            assert breaker.state is BreakerState.HALF_OPEN
        else:
            with anyio.move_on_after(0.5):
                await rm.execute_with_all_protections("op", hang)
    assert bulkhead.statistics().available == 1
    assert bulkhead.statistics().queued == 0
    assert breaker.inflight == 0
    assert limiter.statistics().waiting == 0
    await anyio.sleep(2)
    assert breaker.state in (BreakerState.CLOSED, BreakerState.HALF_OPEN)
    assert rm.statistics("op").cancelled >= 1


# --- concurrency --------------------------------------------------------------------------------


async def test_concurrent_registration_and_execution(anyio_backend: Any) -> None:
    """1000 tasks execute while registrations swap stacks; counts equal the oracle."""
    rm = ResilienceManager("m")
    rng = random.Random(5)
    outcomes = {"ok": 0, "rejected": 0}

    async def op(ctx: OperationContext) -> int:
        await anyio.lowlevel.checkpoint()
        return 1

    async def worker(i: int) -> None:
        operation = f"op{i % 7}"
        if i % 50 == 0:
            rm.register_bulkhead(operation, 1000, 0)
            rm.register_circuit_breaker(operation, timeout=None)
        try:
            await rm.execute_with_all_protections(operation, op)
            outcomes["ok"] += 1
        except (BulkheadFull, CircuitOpen):
            outcomes["rejected"] += 1
        if rng.random() < 0.1:
            rm.register_rate_limiter(operation, 1e9, 1000)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        async with anyio.create_task_group() as tg:
            for i in range(1000):
                tg.start_soon(worker, i)
    assert outcomes == {"ok": 1000, "rejected": 0}
    snapshot = rm.get_all_metrics()
    assert sum(s.calls for s in snapshot.operations.values()) == 1000
    assert sum(s.successes for s in snapshot.operations.values()) == 1000


# --- the pipeline check -------------------------------------------------------------------------


def test_attempt_timeout_beyond_deadline_warns_and_strict_refuses() -> None:
    rm = ResilienceManager("m")
    rm.register_deadline("op", 5.0)
    rm.register_timeout("op", 10.0)
    with pytest.warns(PipelineWarning, match="no retry can ever run"):
        rm.register_retry_policy("op", 2)
    strict = ResilienceManager("s", strict=True)
    strict.register_deadline("op", 5.0)
    strict.register_timeout("op", 10.0)
    with pytest.raises(PipelineConfigError):
        strict.register_retry_policy("op", 2)
    assert strict.components("op").get("retry") is None  # refused: nothing half-registered


def test_retry_amplification_warns() -> None:
    rm = ResilienceManager("m", max_attempts=5)
    with pytest.warns(PipelineWarning, match="6 attempts"):
        rm.register_retry_policy("op", 5)


def test_short_breaker_window_warns() -> None:
    rm = ResilienceManager("m")
    rm.register_timeout("op", 5.0)
    with pytest.warns(PipelineWarning, match="window"):
        rm.register_circuit_breaker(
            "op", timeout=None, window=TimeWindow(8.0), failure_rate_threshold=0.5
        )


def test_report_gives_worst_case_attempts_and_latency() -> None:
    rm = ResilienceManager("m")
    rm.register_bulkhead("op", 10, max_queue=5, max_wait=2.0)
    rm.register_retry_policy("op", 3, 0.1, 1.0, 2.0, True)
    rm.register_timeout("op", 0.5)
    report = rm.describe("op")
    assert report.worst_case_attempts == 4
    assert report.worst_case_latency == pytest.approx(2.0 + 4 * 0.5 + 3 * 1.0)
    assert report.problems == ()
    rm.register_deadline("op", 3.0)
    assert rm.describe("op").worst_case_latency == 3.0
    assert rm.describe("op").layers[0] == "deadline"
    assert rm.describe("unknown").worst_case_latency == math.inf


def test_report_counts_hedges_and_flags_a_delay_past_the_attempt_timeout() -> None:
    rm = ResilienceManager("m")
    rm.register_retry_policy("op", 3, 0.1, 1.0, 2.0, True)
    rm.register_timeout("op", 0.5)
    rm.register_hedge("op", delay=0.2, max_hedged_attempts=1)
    report = rm.describe("op")
    assert report.worst_case_attempts == 8  # 4 retry attempts, each hedged once
    # each retry attempt: the hedge starts at most 0.2 s in and times out 0.5 s later
    assert report.worst_case_latency == pytest.approx(4 * (0.5 + 0.2) + 3 * 1.0)
    assert report.problems == ()
    with pytest.warns(PipelineWarning, match="hedge delay 1s >= attempt timeout"):
        rm.register_hedge("op", delay=1.0)
    rm.register_hedge("op", delay=0.2, max_hedged_attempts=2)  # budgeted: no warning
    assert rm.describe("op").worst_case_attempts == 12
    with pytest.warns(PipelineWarning, match="unbudgeted hedges multiply each call into 12"):
        rm.register_hedge("op", delay=0.2, max_hedged_attempts=2, budget_ratio=None)


async def test_register_fallback_sheds_at_the_managers_level(anyio_backend: Any) -> None:
    rm = ResilienceManager("m")
    fallback = rm.register_fallback(
        "op", handler=lambda exc: type(exc).__name__, shed_at=DegradationLevel.EMERGENCY
    )
    ran: list[str] = []

    async def op(ctx: OperationContext) -> str:
        ran.append(ctx.operation)
        return "ran"

    assert await rm.execute_with_all_protections("op", op) == "ran"
    rm.degradation.set_component_level("db", DegradationLevel.EMERGENCY)
    assert await rm.execute_with_all_protections("op", op) == "Degraded"
    assert ran == ["op"] and fallback.shed_at == DegradationLevel.EMERGENCY
    assert rm.register_fallback("other", value=None).shed_at is None
    with pytest.raises(TypeError, match="exactly one"):
        rm.register_fallback("op")
    with pytest.raises(TypeError, match="exactly one"):
        rm.register_fallback("op", value=1, handler=lambda exc: 2)


def test_register_refuses_unknown_objects_and_bad_names() -> None:
    rm = ResilienceManager("m")
    with pytest.raises(TypeError):
        rm.register("op", object())
    with pytest.raises(ValueError):
        rm.register_timeout("", 1.0)
    with pytest.raises(ValueError):
        ResilienceManager("")
    with pytest.raises(ValueError):
        rm.register_deadline("op", -1)


# --- snapshot and lifetime ----------------------------------------------------------------------


async def test_snapshot_is_frozen_and_complete(anyio_backend: Any) -> None:
    rm = ResilienceManager("m")
    rm.register_circuit_breaker("op", timeout=None)
    rm.register_error_budget("op", 0.99)

    async def op(ctx: OperationContext) -> None:
        return None

    await rm.execute_with_all_protections("op", op)
    snapshot = rm.get_all_metrics()
    assert isinstance(snapshot, ResilienceSnapshot)
    assert set(snapshot.operations["op"].policies) == {"circuit_breaker", "error_budget"}
    with pytest.raises(TypeError):
        snapshot.operations["x"] = snapshot.operations["op"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        snapshot.name = "other"  # type: ignore[misc]


@pytest.mark.virtual_time
async def test_async_with_runs_health_monitoring(anyio_backend: Any) -> None:
    rm = ResilienceManager("m", health_interval=1.0, health_timeout=0.5)
    pings = 0

    async def ping() -> bool:
        nonlocal pings
        pings += 1
        return True

    rm.register_health_check(PingCheck("ping", ping))
    async with rm:
        await anyio.sleep(3.5)
        assert rm.is_healthy()
    assert pings == 4
    await anyio.sleep(5)
    assert pings == 4  # stopped with the context
    async with rm:  # and restartable
        await anyio.sleep(0.1)
    assert pings == 5
