"""Timeout: own deadline vs outer cancellation, nesting, contexts, bad config, sharing."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from dwcp_resilience import DeadlineExceeded, OperationContext, Timeout, current_deadline
from dwcp_resilience.core import _runtime
from dwcp_resilience.policies import timeout as timeout_module

pytestmark = pytest.mark.anyio


def _sweeper() -> Any:
    """The running loop's deadline timer."""
    state = _runtime.running()
    assert state is not None
    return timeout_module.sweeper_of(state)


async def sleeper(seconds: float, result: str = "done") -> str:
    await anyio.sleep(seconds)
    return result


# --- the three idioms -------------------------------------------------------------------------


async def test_call_returns_the_result(anyio_backend: Any) -> None:
    """No deadline reached: the callee's result comes back unchanged."""
    assert await Timeout(5).call(sleeper, 0.001, result="ok") == "ok"


async def test_decorator_keeps_the_signature(anyio_backend: Any) -> None:
    @Timeout(5)
    async def double(x: int) -> int:
        return 2 * x

    assert await double(21) == 42
    assert double.__name__ == "double"


async def test_async_with_returns_normally(anyio_backend: Any) -> None:
    async with Timeout(5):
        await anyio.sleep(0.001)


async def test_callee_exception_propagates_unchanged(anyio_backend: Any) -> None:
    async def boom() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        await Timeout(5).call(boom)


# --- own deadline -----------------------------------------------------------------------------


@pytest.mark.virtual_time
async def test_own_deadline_raises_deadline_exceeded_at_the_deadline(anyio_backend: Any) -> None:
    start = anyio.current_time()
    with pytest.raises(DeadlineExceeded) as info:
        await Timeout(2.5, name="t").call(sleeper, 10)
    assert anyio.current_time() - start == pytest.approx(2.5, abs=1e-3)
    assert isinstance(info.value, TimeoutError)
    assert info.value.name == "t"
    assert info.value.timeout == 2.5


@pytest.mark.virtual_time
async def test_async_with_own_deadline(anyio_backend: Any) -> None:
    start = anyio.current_time()
    with pytest.raises(DeadlineExceeded):
        async with Timeout(1.5):
            await anyio.sleep(10)
    assert anyio.current_time() - start == pytest.approx(1.5, abs=1e-3)


@pytest.mark.virtual_time
async def test_a_shield_inside_holds_off_the_deadline_on_trio_only(backend_name: str) -> None:
    """The one difference between the loops (module docstring): on asyncio and uvloop the deadline
    cancels the task as ``asyncio.timeout`` does, through an anyio shield inside it; on trio the
    shielded part runs to its end, and the deadline takes effect at the next checkpoint."""
    finished = False

    async def shielded_then_sleep() -> None:
        nonlocal finished
        with anyio.CancelScope(shield=True):
            await anyio.sleep(2.0)
            finished = True
        await anyio.sleep(10)

    start = anyio.current_time()
    with pytest.raises(DeadlineExceeded):
        await Timeout(1.0).call(shielded_then_sleep)
    trio = backend_name == "trio"
    assert finished is trio
    assert anyio.current_time() - start == pytest.approx(2.0 if trio else 1.0, abs=1e-3)


async def test_own_deadline_real_time(anyio_backend: Any) -> None:
    """A short real deadline fires on every backend, uvloop included."""
    with pytest.raises(DeadlineExceeded):
        await Timeout(0.01).call(sleeper, 5)


async def test_deadline_restores_cancelling_count_on_asyncio(backend_name: str) -> None:
    if backend_name == "trio":
        pytest.skip("Task.cancelling() is asyncio's")
    task = asyncio.current_task()
    assert task is not None
    before = task.cancelling()
    with pytest.raises(DeadlineExceeded):
        await Timeout(0.01).call(sleeper, 5)
    with pytest.raises(DeadlineExceeded):
        async with Timeout(0.01):
            await anyio.sleep(5)
    assert task.cancelling() == before
    await anyio.lowlevel.checkpoint()  # no stray cancellation is pending


# --- outer cancellation stays a cancellation --------------------------------------------------


@pytest.mark.virtual_time
async def test_outer_cancel_scope_is_not_a_timeout(anyio_backend: Any) -> None:
    with anyio.move_on_after(1) as outer:
        await Timeout(10).call(sleeper, 100)
    assert outer.cancelled_caught


@pytest.mark.virtual_time
async def test_outer_cancel_with_async_with_is_not_a_timeout(anyio_backend: Any) -> None:
    with anyio.move_on_after(1) as outer:
        async with Timeout(10):
            await anyio.sleep(100)
    assert outer.cancelled_caught


@pytest.mark.virtual_time
async def test_task_group_cancel_propagates_as_cancellation(anyio_backend: Any) -> None:
    seen: list[str] = []

    async def guarded() -> None:
        try:
            await Timeout(10).call(sleeper, 100)
        except DeadlineExceeded:
            seen.append("timeout")
        except anyio.get_cancelled_exc_class():
            seen.append("cancelled")
            raise

    async with anyio.create_task_group() as tg:
        tg.start_soon(guarded)
        await anyio.sleep(1)
        tg.cancel_scope.cancel()
    assert seen == ["cancelled"]


@pytest.mark.virtual_time
async def test_deadline_and_outer_deadline_in_same_iteration_is_cancellation(
    anyio_backend: Any,
) -> None:
    """Both fire at t+1: the outer scope owns the cancellation, the caller sees no DeadlineExceeded."""
    with anyio.move_on_after(1) as outer:
        await Timeout(1).call(sleeper, 100)
    assert outer.cancelled_caught


async def test_external_cancel_in_same_iteration_as_deadline_asyncio(backend_name: str) -> None:
    """asyncio: task.cancel() and our deadline land in one loop iteration -> CancelledError."""
    if backend_name != "asyncio":
        pytest.skip("drives asyncio's task.cancel() directly, in virtual time")
    loop = asyncio.get_running_loop()

    async def victim() -> str:
        return await Timeout(1).call(sleeper, 100)

    task = asyncio.ensure_future(victim())
    await asyncio.sleep(0)  # the victim registered its deadline at now + 1
    loop.call_at(loop.time() + 1, task.cancel)
    with pytest.raises(asyncio.CancelledError):
        await task


# --- nesting and contexts ---------------------------------------------------------------------


@pytest.mark.virtual_time
async def test_inner_timeout_never_outlives_outer(anyio_backend: Any) -> None:
    outer = Timeout(2, name="outer")
    inner = Timeout(100, name="inner")
    seen: list[float] = []

    async def body() -> None:
        seen.append(current_deadline())
        await inner.call(sleeper, 50)

    start = anyio.current_time()
    with pytest.raises(DeadlineExceeded) as info:
        await outer.call(body)
    assert anyio.current_time() - start == pytest.approx(2, abs=1e-3)
    assert seen[0] == pytest.approx(start + 2, abs=1e-3)
    assert info.value.name == "outer"


@pytest.mark.virtual_time
async def test_inner_shorter_timeout_fires_and_outer_goes_on(anyio_backend: Any) -> None:
    outer = Timeout(10, name="outer")
    inner = Timeout(1, name="inner")

    async def body() -> str:
        with pytest.raises(DeadlineExceeded) as info:
            await inner.call(sleeper, 5)
        assert info.value.name == "inner"
        return await sleeper(2, "after")

    start = anyio.current_time()
    assert await outer.call(body) == "after"
    assert anyio.current_time() - start == pytest.approx(3, abs=1e-3)
    assert current_deadline() == math.inf


@pytest.mark.virtual_time
async def test_operation_context_deadline_bounds_timeout(anyio_backend: Any) -> None:
    ctx = OperationContext.with_timeout("op", 3)
    start = anyio.current_time()
    with ctx.activate(), pytest.raises(DeadlineExceeded):
        await Timeout(60).call(sleeper, 30)
    assert anyio.current_time() - start == pytest.approx(3, abs=1e-3)


async def test_expired_context_fails_at_once_without_running(anyio_backend: Any) -> None:
    ran: list[bool] = []

    async def callee() -> None:
        ran.append(True)

    ctx = OperationContext("op", deadline=anyio.current_time() - 1)
    with ctx.activate(), pytest.raises(DeadlineExceeded):
        await Timeout(60).call(callee)
    with ctx.activate(), pytest.raises(DeadlineExceeded):
        async with Timeout(60):
            ran.append(True)
    assert ran == []


# --- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, float("nan")])
def test_nan_is_a_value_error(bad: float) -> None:
    with pytest.raises(ValueError, match="seconds"):
        Timeout(bad)


@pytest.mark.parametrize("bad", ["1", None, True, [1]])
def test_wrong_types_are_type_errors(bad: object) -> None:
    with pytest.raises(TypeError, match="seconds"):
        Timeout(bad)  # type: ignore[arg-type]


def test_empty_name_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="name"):
        Timeout(1, name="")


@pytest.mark.parametrize("seconds", [0, -1, -math.inf])
async def test_non_positive_fails_at_once_without_running(
    anyio_backend: Any, seconds: float
) -> None:
    ran: list[bool] = []

    async def callee() -> None:
        ran.append(True)

    with pytest.raises(DeadlineExceeded):
        await Timeout(seconds).call(callee)
    with pytest.raises(DeadlineExceeded):
        async with Timeout(seconds):
            ran.append(True)
    assert ran == []


@pytest.mark.virtual_time
async def test_infinite_never_fires(anyio_backend: Any) -> None:
    assert await Timeout(math.inf).call(sleeper, 10_000, result="late") == "late"
    async with Timeout(math.inf):
        await anyio.sleep(10_000)


def test_construction_needs_no_loop() -> None:
    timeout = Timeout(1)
    assert "1s" in repr(timeout)
    assert timeout.seconds == 1.0


# --- sharing ----------------------------------------------------------------------------------


@pytest.mark.virtual_time
async def test_one_instance_shared_by_many_tasks(anyio_backend: Any) -> None:
    """100 tasks share one Timeout(5); exactly those that sleep past 5 s time out, at 5 s."""
    timeout = Timeout(5)
    outcomes: dict[int, tuple[str, float]] = {}
    start = anyio.current_time()

    async def worker(i: int) -> None:
        duration = i / 10  # 0.0 .. 9.9
        try:
            await timeout.call(sleeper, duration)
            outcomes[i] = ("ok", anyio.current_time() - start)
        except DeadlineExceeded:
            outcomes[i] = ("timeout", anyio.current_time() - start)

    async with anyio.create_task_group() as tg:
        for i in range(100):
            tg.start_soon(worker, i)
    for i, (kind, elapsed) in outcomes.items():
        if i / 10 < 5:
            assert kind == "ok"
            assert elapsed == pytest.approx(i / 10, abs=1e-3)
        else:
            assert kind == "timeout"
            assert elapsed == pytest.approx(5, abs=1e-3)
    assert len(outcomes) == 100


@pytest.mark.virtual_time
async def test_async_with_shared_by_many_tasks(anyio_backend: Any) -> None:
    timeout = Timeout(3)
    results: list[str] = []

    async def worker(duration: float) -> None:
        try:
            async with timeout:
                await anyio.sleep(duration)
            results.append("ok")
        except DeadlineExceeded:
            results.append("timeout")

    async with anyio.create_task_group() as tg:
        for duration in (1, 2, 4, 5, 2.5, 10):
            tg.start_soon(worker, duration)
    assert sorted(results) == ["ok", "ok", "ok", "timeout", "timeout", "timeout"]


async def test_sweeper_heap_stays_bounded(backend_name: str) -> None:
    """Many fast calls leave a bounded heap behind (finished deadlines are compacted away)."""
    if backend_name == "trio":
        pytest.skip("the sweeper is asyncio's")

    async def noop() -> None:
        return None

    timeout = Timeout(60)
    for _ in range(20_000):
        await timeout.call(noop)
    sweeper = _sweeper()
    assert len(sweeper.heap) <= 4 * sweeper.COMPACT_MIN
    assert sweeper.live == 0


async def test_sweeper_drops_done_deadlines_at_once(backend_name: str) -> None:
    """Calls of one timeout end in deadline order here: each done entry leaves the heap when its
    call ends (entries die young), also with calls in flight that end out of order."""
    if backend_name == "trio":
        pytest.skip("the sweeper is asyncio's")
    sweeper = _sweeper()
    timeout = Timeout(60)
    before = len(sweeper.heap)

    async def noop() -> None:
        return None

    for _ in range(100):
        await timeout.call(noop)
    assert len(sweeper.heap) == before

    gates = [anyio.Event() for _ in range(8)]

    async def held(gate: anyio.Event) -> None:
        await timeout.call(gate.wait)

    async with anyio.create_task_group() as tg:
        for gate in gates:
            tg.start_soon(held, gate)
        await anyio.wait_all_tasks_blocked()
        assert len(sweeper.heap) == before + 8
        for gate in reversed(gates[1:]):  # the later deadlines end first: kept until the first
            gate.set()
            await anyio.wait_all_tasks_blocked()
        assert len(sweeper.heap) == before + 8
        gates[0].set()
    assert len(sweeper.heap) == before
    assert sweeper.live == 0


@pytest.mark.virtual_time
async def test_callee_swallowing_cancellation_returns_its_value(anyio_backend: Any) -> None:
    """A callee that swallows our cancellation returns normally (as with asyncio.timeout)."""

    async def stubborn() -> str:
        try:
            await anyio.sleep(10)
        except anyio.get_cancelled_exc_class():
            return "swallowed"
        return "slept"

    assert await Timeout(1).call(stubborn) == "swallowed"
    await anyio.lowlevel.checkpoint()  # nothing left pending


@pytest.mark.virtual_time
async def test_deadline_cancels_a_task_group_inside_the_callee(anyio_backend: Any) -> None:
    """Interop with anyio scopes inside the callee: children are cancelled, we raise ours."""
    cancelled: list[str] = []

    async def child(name: str) -> None:
        try:
            await anyio.sleep(100)
        except anyio.get_cancelled_exc_class():
            cancelled.append(name)
            raise

    async def callee() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(child, "a")
            tg.start_soon(child, "b")
            with anyio.fail_after(50):  # an inner anyio deadline that is not due yet
                await anyio.sleep(100)

    start = anyio.current_time()
    with pytest.raises(DeadlineExceeded):
        await Timeout(2).call(callee)
    assert anyio.current_time() - start == pytest.approx(2, abs=1e-3)
    assert sorted(cancelled) == ["a", "b"]


@pytest.mark.virtual_time
async def test_inner_anyio_deadline_first_is_not_ours(anyio_backend: Any) -> None:
    async def callee() -> str:
        with anyio.move_on_after(1):
            await anyio.sleep(100)
        return "inner scope handled it"

    assert await Timeout(5).call(callee) == "inner scope handled it"


def test_one_instance_across_loops_and_threads() -> None:
    """R47: built at import time, used by two asyncio.run() in turn and by another thread's loop."""
    import threading

    timeout = Timeout(0.05)

    async def use() -> str:
        assert await timeout.call(sleeper, 0, result="ok") == "ok"
        with pytest.raises(DeadlineExceeded):
            await timeout.call(sleeper, 5)
        return "done"

    assert asyncio.run(use()) == "done"
    assert asyncio.run(use()) == "done"
    results: list[str] = []
    worker = threading.Thread(target=lambda: results.append(asyncio.run(use())))
    worker.start()
    worker.join(10)
    assert results == ["done"]
    assert asyncio.run(use()) == "done"


async def test_a_cached_sweeper_of_another_loop_is_not_used(backend_name: str) -> None:
    """The cache holds one loop's sweeper (another thread's loop may have put its own there): a
    timeout on this loop takes this loop's sweeper and clock, never the cached one."""
    if backend_name == "trio":
        pytest.skip("the sweeper is asyncio's")
    other = asyncio.new_event_loop()
    try:
        other_sweeper = timeout_module.sweeper_of(_runtime._state_of(other))
        assert _runtime._last.loop is other
        with pytest.raises(DeadlineExceeded):
            await Timeout(0.05).call(anyio.sleep, 5)
        assert _runtime._last.loop is asyncio.get_running_loop()
        assert not other_sweeper.heap
    finally:
        other.close()


def test_loops_in_two_threads_keep_their_own_deadlines() -> None:
    """Two threads, each running its own loop, take turns in the one-sweeper cache: every
    deadline stays on its own loop (expiries where due, nothing cancelled across threads)."""
    import sys
    import threading

    from dwcp_resilience import ResilienceManager

    def worker(results: list[object]) -> None:
        async def main() -> None:
            rm = ResilienceManager("m")
            rm.register("op", Timeout(5.0, name="t"))

            async def op(ctx: OperationContext) -> int:
                await asyncio.sleep(0)
                return 1

            short = Timeout(0.001, name="short")
            ok = expired = 0
            for i in range(3000):
                ok += await rm.execute_with_all_protections("op", op)
                if i % 100 == 0:
                    try:
                        await short.call(asyncio.sleep, 1)
                    except DeadlineExceeded:
                        expired += 1
            sweeper = _sweeper()
            results.append((ok, expired, len(sweeper.heap), sweeper.live))

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by the assertion below
            results.append(exc)

    results: list[object] = []
    threads = [threading.Thread(target=worker, args=(results,)) for _ in range(2)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter lets us
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert results == [(3000, 30, 0, 0)] * 2
