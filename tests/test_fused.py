"""Fused admissions run in fewer frames with the unfused chain's semantics.

``Pipeline`` and the manager run a breaker followed by a limiter in one hand-inlined frame, and the
manager enters its outermost admission (the bulkhead) in its own frame (``core/_fused.py``). These
tests compare such runs against the hand-chained ``outer.call(inner.call, fn)`` and check the cleanup
of every await point: queued in the bulkhead, waiting for tokens, inside the callee.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Awaitable, Callable
from typing import Any, cast

import anyio
import anyio.lowlevel
import pytest
from conftest import LaneFallbacks
from hypothesis import given, settings
from hypothesis import strategies as st

from dwcp_resilience import (
    AdaptiveRateLimiter,
    BreakerState,
    Bulkhead,
    BulkheadFull,
    CircuitBreaker,
    CircuitOpen,
    CountWindow,
    OperationContext,
    Pipeline,
    RateLimited,
    RateLimiter,
    ResilienceManager,
    Retry,
    Timeout,
    current_deadline,
)
from dwcp_resilience._lane import _LaneStack
from dwcp_resilience.core._fused import fuse
from dwcp_resilience.policies.backoff import ConstantBackoff
from dwcp_resilience.slo.error_budget import ErrorBudget
from dwcp_resilience.slo.latency_budget import LatencyBudget
from dwcp_resilience.testing import FakeClock

pytestmark = pytest.mark.anyio


def _layers(pipeline: Pipeline) -> list[str]:
    return [type(layer).__name__ for layer in pipeline.layers]


# -- what fuses ----------------------------------------------------------------------------------


def test_consecutive_admissions_fuse_and_others_do_not() -> None:
    breaker = CircuitBreaker("b")
    limiter = RateLimiter("l", rate=10, burst=10)
    bulkhead = Bulkhead("h", max_concurrent=2)
    retry = Retry("r", max_retries=1)
    timeout = Timeout(1.0)
    assert _layers(Pipeline(breaker, limiter)) == ["_Inlined"]
    # Only a breaker followed by a limiter has a hand-inlined runner; the rest keep their own call.
    assert _layers(Pipeline(limiter, breaker)) == ["RateLimiter", "CircuitBreaker"]
    assert _layers(Pipeline(bulkhead, breaker, limiter)) == ["Bulkhead", "_Inlined"]
    assert _layers(Pipeline(breaker, limiter, breaker)) == ["_Inlined", "CircuitBreaker"]
    assert _layers(Pipeline(retry, breaker, limiter, timeout, bulkhead)) == [
        "Retry",
        "_Inlined",
        "Timeout",
        "Bulkhead",
    ]
    # Not fusable: a breaker with its own per-call timeout, a subclass with its own call.
    timed = CircuitBreaker("t", timeout=1.0)
    adaptive = AdaptiveRateLimiter(
        "a", initial_rate=10, min_rate=1, max_rate=100, target_latency=0.1
    )
    assert _layers(Pipeline(timed, limiter)) == ["CircuitBreaker", "RateLimiter"]
    assert _layers(Pipeline(breaker, adaptive)) == ["CircuitBreaker", "AdaptiveRateLimiter"]
    assert fuse([breaker]) == [breaker]
    assert "b+l" in repr(Pipeline(breaker, limiter).layers[0])


# -- equivalence: fused vs hand-chained, driven by Hypothesis --------------------------------------

OUTCOMES = ("ok", "fail", "ignored", "bad_result", "cancel", "advance", "reset", "force_open")


class Rig:
    """One set of policies on a FakeClock, run either fused (Pipeline) or hand-chained."""

    def __init__(self, fused: bool, half_open_max_calls: int, burst: int) -> None:
        self.clock = FakeClock(100.0)
        self.bulkhead = Bulkhead("h", max_concurrent=1, clock=self.clock)
        self.breaker = CircuitBreaker(
            "b",
            max_failures=2,
            reset_timeout=5.0,
            half_open_max_calls=half_open_max_calls,
            half_open_successes=2,
            ignore=KeyError,
            failure_result=lambda result: result == "bad",
            clock=self.clock,
        )
        self.plain = CircuitBreaker("p", max_failures=3, reset_timeout=5.0, clock=self.clock)
        self.limiter = RateLimiter("l", rate=1.0, burst=burst, max_wait=0, clock=self.clock)
        policies = (self.bulkhead, self.plain, self.breaker, self.limiter)
        pipeline = Pipeline(*policies)
        bulkhead, plain, breaker, limiter = policies

        def chained(fn: Callable[..., Awaitable[Any]], *args: Any) -> Awaitable[Any]:
            run: Any = bulkhead.call
            return cast(Awaitable[Any], run(plain.call, breaker.call, limiter.call, fn, *args))

        self.call: Callable[..., Awaitable[Any]] = pipeline.call if fused else chained

    async def step(self, action: str) -> str:
        if action == "advance":
            self.clock.advance(3.0)
            return "advanced"
        if action == "reset":
            self.breaker.reset()
            return "reset"
        if action == "force_open":
            self.breaker.force_open()
            return "forced"

        async def op() -> str:
            await anyio.lowlevel.checkpoint()
            if action == "fail":
                raise ConnectionError("down")
            if action == "ignored":
                raise KeyError("neutral")
            return "bad" if action == "bad_result" else "ok"

        with anyio.CancelScope() as scope:
            if action == "cancel":
                scope.cancel()  # lands at the op's checkpoint (the admissions never await here)
            try:
                return str(await self.call(op))
            except Exception as exc:
                return type(exc).__name__
        return "cancelled"

    def snapshot(self) -> tuple[Any, ...]:
        return (
            self.breaker.statistics(),
            self.plain.statistics(),
            self.limiter.statistics(),
            self.bulkhead.statistics(),
        )


@settings(max_examples=60, deadline=None)
@given(
    actions=st.lists(st.sampled_from(OUTCOMES), min_size=1, max_size=40),
    half_open_max_calls=st.integers(1, 2),
    burst=st.integers(1, 4),
    backend=st.sampled_from(["asyncio", "trio"]),
)
def test_fused_matches_the_chain(
    actions: list[str], half_open_max_calls: int, burst: int, backend: str
) -> None:
    """Same caller-visible results and the same statistics of every policy, step by step."""

    async def main() -> None:
        fused = Rig(True, half_open_max_calls, burst)
        chained = Rig(False, half_open_max_calls, burst)
        for action in actions:
            seen = await fused.step(action)
            assert seen == await chained.step(action), action
            assert fused.snapshot() == chained.snapshot(), action

    anyio.run(main, backend=backend)


async def test_rejections_reach_outer_policies_as_in_the_chain(backend_name: str) -> None:
    """Breaker sees the limiter's RateLimited as neutral; an open breaker releases the bulkhead."""
    bulkhead = Bulkhead("h", max_concurrent=1)
    breaker = CircuitBreaker("b", max_failures=1, reset_timeout=60.0)
    limiter = RateLimiter("l", rate=0.001, burst=1, max_wait=0)
    pipeline = Pipeline(bulkhead, breaker, limiter)

    async def op() -> int:
        return 1

    assert await pipeline.call(op) == 1
    with pytest.raises(RateLimited):
        await pipeline.call(op)
    stats = breaker.statistics()
    assert (stats.successes, stats.failures, stats.ignored, stats.state) == (
        1,
        0,
        1,
        BreakerState.CLOSED,
    )
    breaker.force_open()
    with pytest.raises(CircuitOpen):
        await pipeline.call(op)
    assert bulkhead.available == 1
    assert limiter.statistics().rejected == 1  # the open breaker refused before the limiter


# -- cancellation at every await point -------------------------------------------------------------


async def test_cancel_while_queued_in_the_bulkhead(backend_name: str) -> None:
    bulkhead = Bulkhead("h", max_concurrent=1, max_queue=5)
    breaker = CircuitBreaker("b", max_failures=1)
    limiter = RateLimiter("l", rate=1000, burst=1000)
    pipeline = Pipeline(bulkhead, breaker, limiter)
    release = anyio.Event()
    ran = []

    async def hold() -> None:
        await release.wait()

    async def op() -> None:
        ran.append(1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(pipeline.call, hold)
        await anyio.wait_all_tasks_blocked()
        with anyio.CancelScope() as scope:
            tg.start_soon(lambda: _cancel_soon(scope))
            await pipeline.call(op)
        assert scope.cancelled_caught
        release.set()
    assert ran == []
    stats = bulkhead.statistics()
    assert (stats.available, stats.queued, stats.cancelled) == (1, 0, 1)
    assert breaker.statistics().admitted == 1  # the queued call never reached the breaker
    assert breaker.inflight == 0
    assert limiter.statistics().allowed == 1


async def _cancel_soon(scope: anyio.CancelScope) -> None:
    await anyio.wait_all_tasks_blocked()
    scope.cancel()


async def test_cancel_while_waiting_for_tokens(backend_name: str) -> None:
    """The breaker's probe slot and the bulkhead's permit are given back; the queue has no debt."""
    clock_free = Bulkhead("h", max_concurrent=2)
    breaker = CircuitBreaker("b", max_failures=1, reset_timeout=1.0, half_open_max_calls=1)
    limiter = RateLimiter("l", rate=1.0, burst=1)
    pipeline = Pipeline(clock_free, breaker, limiter)

    async def boom() -> None:
        raise ConnectionError

    async def op() -> str:
        return "ok"

    with pytest.raises(ConnectionError):
        await pipeline.call(boom)  # trips the breaker and spends the only token
    await anyio.sleep(1.0)  # the breaker is due to probe, the bucket is 1 token short of nothing
    limiter.try_acquire()  # the token refilled meanwhile: take it, so the probe must wait
    with anyio.move_on_after(0.5) as scope:
        await pipeline.call(op)
    assert scope.cancelled_caught
    stats = breaker.statistics()
    assert stats.state is BreakerState.HALF_OPEN
    assert stats.half_open_probes == 0 and stats.inflight == 0  # the probe slot was freed
    assert clock_free.available == 2
    assert limiter.statistics().cancelled == 1 and limiter.statistics().waiting == 0
    await anyio.sleep(0.6)
    assert await pipeline.call(op) == "ok"  # a token is there exactly when it would have been


async def test_cancel_during_the_op(backend_name: str) -> None:
    bulkhead = Bulkhead("h", max_concurrent=1)
    breaker = CircuitBreaker("b", max_failures=1)
    limiter = RateLimiter("l", rate=1000, burst=1000)
    pipeline = Pipeline(bulkhead, breaker, limiter)

    async def slow() -> None:
        await anyio.sleep(10)

    with anyio.move_on_after(1):
        await pipeline.call(slow)
    stats = breaker.statistics()
    assert (stats.failures, stats.ignored, stats.state) == (0, 1, BreakerState.CLOSED)
    assert bulkhead.available == 1


async def test_half_open_probe_slots_are_not_leaked(backend_name: str) -> None:
    """Neutral and cancelled probes free their slots; a success closes after enough probes."""
    breaker = CircuitBreaker(
        "b", max_failures=1, reset_timeout=1.0, half_open_max_calls=1, half_open_successes=1,
        ignore=KeyError,
    )  # fmt: skip
    limiter = RateLimiter("l", rate=1000, burst=1000)
    pipeline = Pipeline(breaker, limiter)

    async def raise_(exc: BaseException) -> None:
        raise exc

    with pytest.raises(ConnectionError):
        await pipeline.call(raise_, ConnectionError())
    await anyio.sleep(1.0)
    with pytest.raises(KeyError):
        await pipeline.call(raise_, KeyError("neutral"))
    assert breaker.statistics().half_open_probes == 0
    with anyio.CancelScope() as scope:
        scope.cancel()
        await pipeline.call(anyio.sleep, 1)
    assert breaker.statistics().half_open_probes == 0
    assert breaker.state is BreakerState.HALF_OPEN
    await pipeline.call(anyio.sleep, 0)
    state: BreakerState = breaker.state  # the probe closed it (mypy narrowed it to HALF_OPEN)
    assert state is BreakerState.CLOSED


async def test_stale_results_are_ignored(backend_name: str) -> None:
    """A call admitted before a reset reports into the old epoch: counted stale, nothing else."""
    for record_latency in (False, True):  # the fast CLOSED path and the general path
        breaker = CircuitBreaker("b", max_failures=1, record_latency=record_latency)
        pipeline = Pipeline(breaker, RateLimiter("l", rate=1000, burst=1000))
        for fail in (False, True):
            await _reset_while_running(breaker, pipeline, fail)
        stats = breaker.statistics()
        assert stats.stale == 2 and stats.failures == 0 and stats.state is BreakerState.CLOSED
        assert stats.inflight == 0


async def _reset_while_running(breaker: CircuitBreaker, pipeline: Pipeline, fail: bool) -> None:
    started, go = anyio.Event(), anyio.Event()

    async def hold() -> None:
        started.set()
        await go.wait()
        if fail:
            raise ConnectionError

    async def run() -> None:
        try:
            await pipeline.call(hold)
        except ConnectionError:
            assert fail

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await started.wait()
        breaker.reset()
        go.set()


# -- exactly-once release under load ---------------------------------------------------------------


@pytest.mark.virtual_time
async def test_many_tasks_release_exactly_once(backend_name: str) -> None:
    """An oracle counts permits: running never exceeds the cap, and everything comes back."""
    rng = random.Random(7)
    bulkhead = Bulkhead("h", max_concurrent=3, max_queue=20, max_wait=0.5)
    breaker = CircuitBreaker("b", max_failures=1000)
    limiter = RateLimiter("l", rate=200.0, burst=5, max_wait=0.3)
    pipeline = Pipeline(bulkhead, breaker, limiter)
    running = 0
    peak = 0
    ran = 0
    seen: dict[str, int] = {}

    async def op(hold: float, fail: bool) -> None:
        nonlocal running, peak, ran
        running += 1
        ran += 1
        peak = max(peak, running)
        try:
            await anyio.sleep(hold)
            if fail:
                raise ConnectionError
        finally:
            running -= 1

    async def one(hold: float, fail: bool, cancel_after: float | None) -> None:
        with anyio.CancelScope() as scope:
            if cancel_after is not None:
                scope.deadline = anyio.current_time() + cancel_after
            try:
                await pipeline.call(op, hold, fail)
                key = "ok"
            except (BulkheadFull, RateLimited, CircuitOpen, ConnectionError) as exc:
                key = type(exc).__name__
        if scope.cancelled_caught:
            key = "cancelled"
        seen[key] = seen.get(key, 0) + 1

    async with anyio.create_task_group() as tg:
        for _ in range(300):
            cancel = rng.choice([None, None, rng.uniform(0, 0.2)])
            tg.start_soon(one, rng.uniform(0, 0.05), rng.random() < 0.2, cancel)
            await anyio.sleep(rng.uniform(0, 0.004))
    assert peak <= 3 and running == 0
    assert sum(seen.values()) == 300
    hs = bulkhead.statistics()
    assert (hs.available, hs.queued, hs.concurrent) == (3, 0, 0)
    assert hs.admitted + hs.rejected + hs.cancelled == 300
    bs = breaker.statistics()
    assert bs.inflight == 0
    assert bs.admitted == hs.admitted
    assert bs.successes == seen.get("ok", 0)
    assert bs.failures == seen.get("ConnectionError", 0)
    ls = limiter.statistics()
    assert ls.waiting == 0
    assert ls.allowed + ls.rejected + ls.cancelled == bs.admitted
    assert ls.allowed == ran


# -- the manager -----------------------------------------------------------------------------------


async def test_manager_runs_breaker_and_limiter_fused(backend_name: str) -> None:
    rm = ResilienceManager("m")
    bulkhead = rm.register_bulkhead("op", 1)
    breaker = rm.register_circuit_breaker("op", max_failures=2, timeout=None)
    limiter = RateLimiter("op", rate=0.001, burst=1, max_wait=0)
    rm.register("op", limiter)
    stack = rm._stacks["op"]
    assert stack._head is not None and stack._head.policy is bulkhead
    assert len(stack._chain) == 0 and stack._outer is not None  # one fused breaker+limiter layer

    async def op(ctx: OperationContext) -> str:
        return ctx.operation

    assert await rm.execute_with_all_protections("op", op) == "op"
    with pytest.raises(RateLimited):
        await rm.execute_with_all_protections("op", op)
    assert breaker.statistics().ignored == 1
    assert bulkhead.available == 1
    assert limiter.statistics().allowed == 1
    stats = rm.statistics("op")
    assert (stats.successes, stats.rejected) == (1, 1)


# -- the manager vs the plain chain of its policies, driven by Hypothesis ---------------------------


class _ChainedBulkhead(Bulkhead):
    async def call(self, fn: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any) -> Any:
        return await super().call(fn, *args, **kwargs)


class _ChainedBreaker(CircuitBreaker):
    async def call(self, fn: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any) -> Any:
        return await super().call(fn, *args, **kwargs)


class _ChainedLimiter(RateLimiter):
    async def call(self, fn: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any) -> Any:
        return await super().call(fn, *args, **kwargs)


MANAGER_ACTIONS = (
    "ok",
    "fail",
    "flaky",
    "ignored",
    "slow",
    "deadline",
    "cancel",
    "cancel_in_op",  # an outer cancellation while op runs inside the attempt timeout
    "cancel_in_backoff",  # an outer cancellation during the retry's backoff
    "deadline_ok",  # a call deadline that does not fire
    "deadline_flaky",  # a call deadline around a retried first failure
    "reset",
    "full",
)


BREAKER_KINDS = ("fast", "timed", "window")


class ManagerRig:
    """bulkhead > retry > breaker > limiter > attempt timeout on the loop clock, with an error and a
    latency budget: with the stock policies (the manager runs them in its fast lane,
    ``dwcp_resilience._lane``, on asyncio, and fused on trio), or with subclasses whose own ``call``
    makes the manager chain every policy's ``call`` as written.

    ``breaker``: ``fast`` (consecutive count), ``timed`` (``record_latency=True``: the lane fills
    the histogram) or ``window`` (a count window with a failure rate: the lane admits through the
    core's counters)."""

    def __init__(
        self,
        fused: bool,
        max_failures: int,
        breaker: str = "fast",
        backoff: float = 0.5,
        total: float | None = None,
        *,
        latency_target: float = 0.7,
    ) -> None:
        self.backoff = backoff
        self.rm = ResilienceManager("m")
        self.bulkhead = (Bulkhead if fused else _ChainedBulkhead)(
            "h", max_concurrent=1, max_queue=0
        )
        self.retry = Retry(
            "r", max_retries=2, backoff=ConstantBackoff(backoff), retry_on=ConnectionError
        )
        kinds: dict[str, dict[str, Any]] = {
            "fast": {},
            "timed": {"record_latency": True},
            "window": {
                "window": CountWindow(4),
                "failure_rate_threshold": 0.5,
                "minimum_calls": 2,
                "slow_call_duration": 3.0,
            },
        }
        options = kinds[breaker]
        self.breaker = (CircuitBreaker if fused else _ChainedBreaker)(
            "b", max_failures=max_failures, reset_timeout=1e9, ignore=KeyError, **options
        )
        self.limiter = (RateLimiter if fused else _ChainedLimiter)(
            "l", rate=1e-9, burst=10_000, max_wait=0
        )
        # A window no run slides out of (1e9 s built 2 x 16.7M buckets of 60 s: 1.5 s per rig).
        self.budget = ErrorBudget("e", slo=0.9, window=1e6)
        # 0.7 s: off the 0.5 s grid of the virtual-time actions.
        self.latency = LatencyBudget("lat", target=latency_target, max_samples=8)
        timeout = Timeout(4.0, name="t")  # off the histogram bounds (2.5, 5.0)
        self.rm.register(
            "op",
            self.bulkhead,
            self.retry,
            self.breaker,
            self.limiter,
            timeout,
            self.budget,
            self.latency,
        )
        if total is not None:  # the operation's own total deadline
            self.rm.register_deadline("op", total)
        stack = self.rm._stacks["op"]
        assert (stack._head is not None) is fused
        assert isinstance(stack, _LaneStack) is fused
        self.calls = 0
        self.deadlines: list[float] = []

    async def step(self, action: str) -> str:
        if action == "reset":
            self.breaker.reset()
            return "reset"
        self.calls += 1
        attempts = 0

        async def op(ctx: OperationContext) -> str:
            nonlocal attempts
            attempts += 1
            # What op sees of its deadline (the tightest of the call's, the operation's and the
            # attempt timeout's), as time left: the rigs run one after the other.
            self.deadlines.append(round(current_deadline() - anyio.current_time(), 6))
            await anyio.lowlevel.checkpoint()
            if action == "fail" or (action in ("flaky", "cancel_in_backoff") and attempts == 1):
                raise ConnectionError("down")
            if action == "ignored":
                raise KeyError("neutral")
            if action in ("slow", "deadline", "cancel_in_op"):
                await anyio.sleep(10.0)
            return f"ok after {attempts}"

        ctx: OperationContext | str = "op"
        if action == "deadline":
            ctx = OperationContext("op", deadline=anyio.current_time() + 2.0)
        elif action in ("deadline_ok", "deadline_flaky"):
            ctx = OperationContext("op", deadline=anyio.current_time() + 100.0)
        with anyio.CancelScope() as scope:
            if action == "cancel":
                scope.cancel()
            elif action in ("cancel_in_op", "cancel_in_backoff"):
                scope.deadline = anyio.current_time() + self.backoff / 2
            try:
                if action == "full":  # a second call while one holds the only permit
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self.rm.execute_with_all_protections, "op", _hold)
                        await anyio.sleep(0.1)
                        try:
                            await self.rm.execute_with_all_protections("op", op)
                        finally:
                            tg.cancel_scope.cancel()
                    return "not rejected"
                return str(await self.rm.execute_with_all_protections(ctx, op))
            except Exception as exc:
                return f"{type(exc).__name__} after {attempts}"
        return f"cancelled after {attempts}"

    def snapshot(self) -> tuple[Any, ...]:
        """Every counter; not the readings of the clock (the two rigs run one after the other)."""
        stats = self.rm.statistics("op")
        timeless = [
            {
                f.name: _rounded(getattr(snapshot, f.name))
                for f in dataclasses.fields(snapshot)
                if f.name not in _CLOCK_FIELDS
            }
            for snapshot in (
                self.bulkhead.statistics(),
                self.retry.statistics(),
                self.breaker.statistics(),
                self.limiter.statistics(),
                self.budget.statistics(),
                self.latency.statistics(),
            )
        ]
        counts = (stats.calls, stats.successes, stats.failures, stats.rejected, stats.cancelled)
        return (counts, tuple(self.deadlines), *timeless)


_CLOCK_FIELDS = {"retry_after", "tokens", "availability"}  # readings of the clock


def _rounded(value: object) -> object:
    """Durations are differences of clock readings: the rigs, run one after the other, can differ
    in the last bits (5.0 against 4.999999999999999)."""
    return round(value, 9) if isinstance(value, float) else value


async def _hold(ctx: OperationContext) -> None:
    await anyio.sleep_forever()


@pytest.mark.parametrize("breaker", BREAKER_KINDS)
@settings(max_examples=25, deadline=None)
@given(
    actions=st.lists(st.sampled_from(MANAGER_ACTIONS), min_size=1, max_size=25),
    max_failures=st.integers(1, 4),
    total=st.sampled_from([None, 9.0]),
    backend=st.sampled_from(["asyncio", "trio"]),
)
def test_manager_stack_matches_the_plain_chain(
    actions: list[str], max_failures: int, total: float | None, breaker: str, backend: str
) -> None:
    """The manager's stack (its fast lane on asyncio, fused on trio) gives the caller, its counts
    and every policy's statistics exactly what the plain chain of each policy's own ``call`` gives,
    step by step, in virtual time."""
    import looptime
    import trio.testing

    async def main() -> None:
        fused = ManagerRig(True, max_failures, breaker, total=total)
        chained = ManagerRig(False, max_failures, breaker, total=total)
        for action in actions:
            seen = await fused.step(action)
            assert seen == await chained.step(action), action
            assert fused.snapshot() == chained.snapshot(), action

    if backend == "trio":
        anyio.run(
            main,
            backend="trio",
            backend_options={"clock": trio.testing.MockClock(autojump_threshold=0)},
        )
    else:
        anyio.run(
            main, backend="asyncio", backend_options={"loop_factory": looptime.new_event_loop}
        )


def _counts_only(snapshot: tuple[Any, ...]) -> tuple[Any, ...]:
    """A snapshot without the durations and deadlines left (real time: they differ between the
    rigs); the number of deadlines op saw stays."""
    counts, deadlines, *policies = snapshot
    return (
        counts,
        len(deadlines),
        *(
            {k: v for k, v in part.items() if not isinstance(v, float) and k != "latency_counts"}
            for part in policies
        ),
    )


@pytest.mark.parametrize("breaker", BREAKER_KINDS)
async def test_manager_lane_matches_the_plain_chain_on_every_backend(
    breaker: str, backend_name: str, lane_fallbacks: LaneFallbacks
) -> None:
    """uvloop too (looptime cannot patch it): same results and counts as the plain chain, and the
    lane runs every call on asyncio and uvloop that finds every admission open at once (all but
    the one that finds the bulkhead full, with a consecutive-count breaker)."""
    # On uvloop the rigs run in real time, where none of these actions lasts 0.7 s: a violation
    # there could only come from a loaded machine stalling one rig (CI saw 0.7 s stalls next to the
    # 4-process Redis test), so the latency target is set beyond any stall.
    target = 60.0 if backend_name == "uvloop" else 0.7
    fused = ManagerRig(True, 2, breaker, backoff=0.004, latency_target=target)
    chained = ManagerRig(False, 2, breaker, backoff=0.004, latency_target=target)
    actions = ["ok", "flaky", "ignored", "cancel", "cancel_in_op", "cancel_in_backoff", "ok"]
    actions += ["fail", "reset", "full", "ok"]
    for action in actions:
        seen = await fused.step(action)
        assert seen == await chained.step(action), action
        assert _counts_only(fused.snapshot()) == _counts_only(chained.snapshot()), action
    calls = len(actions) - 1 + 1  # "reset" is no call; "full" makes two
    if backend_name == "trio":
        assert lane_fallbacks.count == calls
    elif breaker == "window":  # the failure rate opens it for a while: those calls take the chain
        assert 1 < lane_fallbacks.count < calls
    else:
        assert lane_fallbacks.count == 1


async def test_pipeline_call_returns_the_outer_layer_awaitable(backend_name: str) -> None:
    """As documented: ``Pipeline.call`` is the outer layer's call, so an outermost RateLimiter
    (whose ``call`` is a plain function) takes its token when ``call`` is called."""
    limiter = RateLimiter("l", rate=0.001, burst=2)
    breaker = CircuitBreaker("b")
    pipeline = Pipeline(limiter, breaker)

    async def op() -> str:
        return "ok"

    pending = pipeline.call(op)
    assert limiter.statistics().allowed == 1
    assert await pending == "ok"
    assert breaker.statistics().successes == 1
    empty = Pipeline()
    assert await empty.call(op) == "ok"
