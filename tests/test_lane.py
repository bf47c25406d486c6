"""Which stacks the manager runs in its fast lane (``dwcp_resilience._lane``), and which it leaves
to the compiled chain. That the lane behaves as the chain is ``tests/test_fused.py``'s oracle."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from conftest import LaneFallbacks

from dwcp_resilience import (
    AdaptiveConcurrencyLimiter,
    AdaptiveRateLimiter,
    AdaptiveThrottle,
    BreakerState,
    Bulkhead,
    Chaos,
    CircuitBreaker,
    CircuitOpen,
    DeadlineExceeded,
    Fallback,
    Hedge,
    OperationContext,
    RateLimiter,
    ResilienceManager,
    Retry,
    Timeout,
    current_deadline,
    hedge_attempt,
)
from dwcp_resilience._lane import _LaneStack
from dwcp_resilience._stack import FallbackStack
from dwcp_resilience.dwcp import SEND, DWCPPeer, DWCPResilienceConfig, DWCPResilientClient
from dwcp_resilience.slo.error_budget import ErrorBudget
from dwcp_resilience.slo.latency_budget import LatencyBudget
from dwcp_resilience.testing import FakeClock


class _OwnCall(Bulkhead):
    async def call(self, fn: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any) -> Any:
        return await super().call(fn, *args, **kwargs)


def _usual() -> list[object]:
    return [
        Bulkhead("h", max_concurrent=4),
        Retry("r", max_retries=2),
        CircuitBreaker("b", record_latency=True),
        RateLimiter("l", rate=100.0, burst=10),
        Timeout(5.0, name="t"),
        ErrorBudget("e", slo=0.99),
        LatencyBudget("lat", target=0.1),
    ]


def _stack_of(*policies: object) -> object:
    rm = ResilienceManager("m")
    rm.register("op", *policies)
    return rm._stacks["op"]


def test_the_usual_stack_and_each_part_of_it_take_the_lane() -> None:
    assert isinstance(_stack_of(*_usual()), _LaneStack)
    for policy in _usual()[:5]:
        assert isinstance(_stack_of(policy), _LaneStack), policy


def test_the_dwcp_clients_send_takes_the_lane() -> None:
    client = DWCPResilientClient(DWCPResilienceConfig(node_id="a", peers=("127.0.0.1:1",)))
    assert isinstance(client.manager._stacks[SEND], _LaneStack)


@pytest.mark.parametrize(
    "policy",
    [
        Chaos("c", rate=0.0),
        _OwnCall("h", max_concurrent=1),
        CircuitBreaker("b", timeout=1.0),
        RateLimiter("l", rate=1.0, burst=1, clock=FakeClock()),
        AdaptiveRateLimiter(
            "a", initial_rate=10.0, min_rate=1.0, max_rate=100.0, target_latency=0.1
        ),
        Retry("r", total_timeout=5.0),
        Retry("r", retry_on_result=lambda result: result is None),
        AdaptiveThrottle("at"),
        AdaptiveConcurrencyLimiter("ac"),
    ],
    ids=repr,
)
def test_a_stack_the_lane_cannot_run_as_written_takes_the_chain(policy: object) -> None:
    """Chaos, a subclass with its own ``call``, a per-breaker timeout, a limiter on an injected
    clock, an adaptive rate limiter, a retry with a deadline of its own, an adaptive throttle or
    concurrency limiter: the plain compiled chain, which keeps every component."""
    stack = _stack_of(*_usual(), policy)
    assert not isinstance(stack, _LaneStack)
    assert policy in [p for _, p in stack.components.layers()]  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", [AdaptiveThrottle, AdaptiveConcurrencyLimiter])
async def test_a_stack_with_an_adaptive_policy_runs_it_on_every_call(
    kind: type[Any], backend_name: str
) -> None:
    """The lane declines the stack rather than drop the component: every call goes through it."""
    policy = kind("adaptive")
    rm = ResilienceManager("m")
    rm.register("op", *_usual(), policy)

    async def op(ctx: OperationContext) -> str:
        return "ok"

    for _ in range(3):
        assert await rm.execute_with_all_protections("op", op) == "ok"
    stats = policy.statistics()
    assert (stats.accepted if kind is AdaptiveThrottle else stats.samples) == 3


@pytest.mark.parametrize(
    "breaker",
    [
        CircuitBreaker("b", clock=FakeClock()),
        CircuitBreaker("b", failure_result=lambda result: result is None),
        CircuitBreaker("b", record_latency=True),
    ],
    ids=repr,
)
def test_the_lane_runs_any_fusable_breaker_through_its_admission(breaker: object) -> None:
    """The lane admits and records through the breaker's own admission (its clock, its result
    predicate, its histogram), so a breaker need only be fusable."""
    assert isinstance(_stack_of(*_usual()[:2], breaker), _LaneStack)


@pytest.mark.parametrize(
    "policy",
    [Hedge("hd", delay=1.0), Fallback("f", value=0)],
    ids=["hedge", "fallback"],
)
def test_a_hedge_or_a_fallback_takes_the_general_stack_and_is_kept(policy: object) -> None:
    """The lane cannot race attempts nor enclose its own deadline scope: it declines, and the
    general stack keeps the component (nothing dropped)."""
    rm = ResilienceManager("m")
    rm.register("op", *_usual()[:5], policy)
    stack = rm._stacks["op"]
    assert not isinstance(stack, _LaneStack)
    assert isinstance(stack, FallbackStack) == isinstance(policy, Fallback)
    kind = "hedge" if isinstance(policy, Hedge) else "fallback"
    assert rm.components("op")[kind] is policy
    assert kind in rm.describe("op").layers


@pytest.mark.anyio
async def test_a_hedge_and_a_fallback_act_in_the_general_stack(backend_name: str) -> None:
    rm = ResilienceManager("m")
    rm.register("op", *_usual()[:5])
    hedge = rm.register_hedge("op", delay=0.01)
    fallback = rm.register_fallback("op", value="fallback")

    async def op(ctx: OperationContext) -> str:
        if hedge_attempt() == 1:
            await anyio.sleep(10)
        return "hedged"

    assert await rm.execute_with_all_protections("op", op) == "hedged"
    assert hedge.statistics().hedge_wins == 1

    async def bug(ctx: OperationContext) -> str:
        raise KeyError("bug")

    assert await rm.execute_with_all_protections("op", bug) == "fallback"
    assert fallback.statistics().fallbacks_by_reason()["failure"] == 1


def test_nothing_to_run_takes_no_lane() -> None:
    assert not isinstance(_stack_of(ErrorBudget("e", slo=0.99)), _LaneStack)


@pytest.mark.anyio
async def test_calls_with_deadlines_take_the_lane_and_the_deadline_holds(
    backend_name: str, lane_fallbacks: LaneFallbacks
) -> None:
    """The lane enters the operation's deadline scope itself (the call's, or a registered total
    deadline): such calls take no detour through the chain on asyncio and uvloop, op sees the
    deadline, and an expired one ends the call with ``DeadlineExceeded``."""
    rm = ResilienceManager("m")
    rm.register("op", *_usual())
    rm.register_deadline("op", 30.0)

    async def op(ctx: OperationContext) -> tuple[float | None, float]:
        await anyio.lowlevel.checkpoint()
        return ctx.deadline, current_deadline()

    deadline = anyio.current_time() + 10.0
    call = OperationContext("op", deadline=deadline)
    seen, effective = await rm.execute_with_all_protections(call, op)
    assert seen == deadline  # the call's, earlier than the registered 30 s
    assert effective < deadline  # the attempt timeout (5 s) is tighter still
    seen, effective = await rm.execute_with_all_protections("op", op)  # the registered 30 s
    assert seen is not None and seen - anyio.current_time() > 29.0
    assert effective - anyio.current_time() <= 5.0  # the attempt timeout (5 s) is tighter

    async def slow(ctx: OperationContext) -> None:
        await anyio.sleep(5)

    soon = OperationContext("op", deadline=anyio.current_time() + 0.05)
    with pytest.raises(DeadlineExceeded):
        await rm.execute_with_all_protections(soon, slow)
    assert lane_fallbacks.count == (3 if backend_name == "trio" else 0)
    stats = rm.statistics("op")
    assert (stats.successes, stats.failures) == (2, 1)


@pytest.mark.anyio
@pytest.mark.real_time
async def test_send_message_sends_nothing_until_awaited(backend_name: str) -> None:
    """``send_message`` is a plain function returning the manager's coroutine (one frame fewer per
    socket suspension): a bad peer raises when it is called; nothing is sent until it is awaited."""
    async with DWCPPeer("p") as peer:
        client = DWCPResilientClient(
            DWCPResilienceConfig(node_id="a", peers=(f"127.0.0.1:{peer.port}",))
        )
        try:
            with pytest.raises(ValueError, match="host:port"):
                client.send_message("bob", b"hi", peer="nonsense")  # type: ignore[unused-coroutine]
            pending = client.send_message("bob", b"hi")
            await anyio.sleep(0.01)
            assert (client.sent, peer.statistics().messages_stored) == (0, 0)
            assert client.manager.statistics(SEND).calls == 0
            assert len(await pending) == 16
            assert (client.sent, peer.statistics().messages_stored) == (1, 1)
        finally:
            await client.aclose()


@pytest.mark.anyio
async def test_a_breaker_on_an_injected_clock_decides_by_that_clock_in_the_lane(
    backend_name: str,
) -> None:
    """The lane admits and records through the breaker's admission, so the breaker's own clock
    times the open period: it stays open while the fake clock stands still, whatever loop time
    passes, and lets a probe through once the fake clock has moved past ``reset_timeout``."""
    clock = FakeClock(100.0)
    breaker = CircuitBreaker(
        "b", max_failures=2, reset_timeout=5.0, half_open_successes=1, clock=clock
    )
    rm = ResilienceManager("m")
    rm.register("op", Bulkhead("h", max_concurrent=4), breaker)
    if backend_name != "trio":
        assert isinstance(rm._stacks["op"], _LaneStack)

    async def boom(ctx: OperationContext) -> None:
        raise ConnectionError("down")

    async def ok(ctx: OperationContext) -> str:
        return "ok"

    for _ in range(2):
        with pytest.raises(ConnectionError):
            await rm.execute_with_all_protections(OperationContext("op"), boom)
    with pytest.raises(CircuitOpen) as refused:
        await rm.execute_with_all_protections(OperationContext("op"), ok)
    assert refused.value.retry_after == pytest.approx(5.0, abs=1e-3)
    await anyio.sleep(0.05)  # loop time passes; the breaker's clock does not
    with pytest.raises(CircuitOpen):
        await rm.execute_with_all_protections(OperationContext("op"), ok)
    clock.advance(5.0)
    assert await rm.execute_with_all_protections(OperationContext("op"), ok) == "ok"
    assert breaker.state is BreakerState.CLOSED
