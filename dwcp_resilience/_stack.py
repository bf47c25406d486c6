"""One operation's compiled stack: what :class:`~dwcp_resilience.ResilienceManager` runs per call.

:class:`Components` holds at most one policy of each kind; :class:`Stack` compiles them once per
registration into an immutable runner (the manager swaps stacks whole, so a call in flight keeps the
stack it started with); :class:`Counts` are the operation's outcome counters, shared by the
stacks that replace each other. The manager builds the usual stack as a
:class:`~dwcp_resilience._lane._LaneStack`, which runs a call's first attempt in one frame and falls
back to :meth:`Stack.run` whenever an admission is not there at once; any other stack is
:func:`compile_stack`'s: a :class:`Stack`, or a :class:`FallbackStack` when a fallback is
registered (outermost, around everything :meth:`Stack.run` does, the deadline and the recording of
the outcome included: the budgets see the protected call's real outcome, the caller the answer).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar, cast

from .core._fused import WAIT, admission_of, fuse
from .core.clock import Clock
from .core.context import OperationContext, context_var, deadline_var
from .core.errors import NotCallable, Rejected
from .policies.adaptive import AdaptiveRateLimiter
from .policies.breaker import CircuitBreaker
from .policies.bulkhead import Bulkhead
from .policies.chaos import Chaos
from .policies.concurrency import AdaptiveConcurrencyLimiter
from .policies.fallback import Fallback
from .policies.hedge import Hedge
from .policies.ratelimit import RateLimiter
from .policies.retry import Retry
from .policies.throttle import AdaptiveThrottle
from .policies.timeout import Timeout
from .slo.error_budget import ErrorBudget
from .slo.latency_budget import LatencyBudget

__all__ = ()

T = TypeVar("T")
Operation = Callable[[OperationContext], Awaitable[T]]

_INF = math.inf
_ctx_set = context_var.set
_ctx_reset = context_var.reset
_deadline_get = deadline_var.get


@dataclass(frozen=True, slots=True)
class Components:
    fallback: Fallback[Any] | None = None
    bulkhead: Bulkhead | None = None
    retry: Retry | None = None
    hedge: Hedge | None = None
    breaker: CircuitBreaker | None = None
    throttle: AdaptiveThrottle | None = None
    concurrency: AdaptiveConcurrencyLimiter | None = None
    limiter: RateLimiter | AdaptiveRateLimiter | None = None
    timeout: Timeout | None = None
    chaos: Chaos | None = None
    deadline: float | None = None
    error_budget: ErrorBudget | None = None
    latency_budget: LatencyBudget | None = None
    budget_shares_clock: bool = False  # the error budget reads the manager's clock

    def layers(self) -> list[tuple[str, Any]]:
        """The registered policies by kind, outermost first (the fallback encloses the deadline,
        which :meth:`Stack.run` opens before the bulkhead; the others are the compiled chain)."""
        return [
            (kind, policy)
            for kind, policy in (
                ("fallback", self.fallback),
                ("bulkhead", self.bulkhead),
                ("retry", self.retry),
                ("hedge", self.hedge),
                ("circuit_breaker", self.breaker),
                ("adaptive_throttle", self.throttle),
                ("adaptive_concurrency", self.concurrency),
                ("rate_limiter", self.limiter),
                ("timeout", self.timeout),
                ("chaos", self.chaos),
            )
            if policy is not None
        ]


class Counts:
    __slots__ = ("calls", "cancelled", "failures", "rejected", "successes")

    def __init__(self) -> None:
        self.calls = self.successes = self.failures = self.rejected = self.cancelled = 0


class Stack:
    """One operation's compiled stack: immutable, swapped whole on registration.

    A breaker followed by a limiter runs fused in one frame
    (:mod:`~dwcp_resilience.core._fused`); the outermost policy's admission (the bulkhead) and the
    deadline scope (``Timeout._open``/``_close``) are entered in :meth:`run`'s own frame. Every frame
    between a task and its callee is resumed on each suspension of the callee, so each layer saved
    is saved on every await of ``op``.
    """

    __slots__ = (
        "_adaptive",
        "_budget",
        "_budget_shares_clock",
        "_chain",
        "_clock",
        "_counts",
        "_deadline",
        "_deadline_timeout",
        "_head",
        "_latency",
        "_measure",
        "_outer",
        "components",
        "operation",
    )

    def __init__(self, operation: str, components: Components, counts: Counts, clock: Clock):
        self.operation = operation
        self.components = components
        self._counts = counts
        self._clock = clock
        policies = [policy for kind, policy in components.layers() if kind != "fallback"]
        head = admission_of(policies[0]) if policies else None
        self._head = head
        calls = [policy.call for policy in fuse(policies[1:] if head is not None else policies)]
        self._outer: Callable[..., Awaitable[Any]] | None = calls[0] if calls else None
        self._chain = tuple(calls[1:])
        self._deadline = components.deadline
        self._deadline_timeout = Timeout(_INF, name=f"{operation}-deadline")
        self._budget = components.error_budget
        self._latency = components.latency_budget
        limiter = components.limiter
        self._adaptive = limiter if isinstance(limiter, AdaptiveRateLimiter) else None
        self._measure = self._latency is not None or self._adaptive is not None
        self._budget_shares_clock = components.budget_shares_clock

    async def run(self, ctx: OperationContext, op: Operation[T]) -> T:
        counts = self._counts
        counts.calls += 1
        deadline = ctx.deadline
        if self._deadline is not None:
            own = self._clock() + self._deadline
            if deadline is None or own < deadline:
                ctx = replace(ctx, deadline=own)
                deadline = own
        measure = self._measure
        start = self._clock() if measure else 0.0
        token = _ctx_set(ctx)
        try:
            scope = None
            if deadline is not None and deadline < _deadline_get():
                deadline_token = deadline_var.set(deadline)
                try:
                    scope = self._deadline_timeout._open()
                except BaseException:
                    deadline_var.reset(deadline_token)
                    raise
            try:
                head = self._head
                if head is not None:
                    enter, wait, head_exit = head.enter, head.wait, head.exit
                    ticket = enter()
                    if ticket is WAIT:
                        ticket = await wait()
                outer = self._outer
                try:
                    result = await (op(ctx) if outer is None else outer(*self._chain, op, ctx))
                except BaseException as exc:
                    if head is not None and head_exit is not None:
                        head_exit(ticket, exc, None)
                    raise
                if head is not None and head_exit is not None:
                    head_exit(ticket, None, result)
            except BaseException as exc:
                if scope is not None:
                    expired = self._deadline_timeout._close(scope, exc)
                    deadline_var.reset(deadline_token)
                    if expired is not None:
                        raise expired from exc
                raise
            if scope is not None:
                expired = self._deadline_timeout._close(scope, None)
                deadline_var.reset(deadline_token)
                if expired is not None:
                    raise expired  # noqa: TRY301 - raised in this frame on purpose (no extra frame)
        except BaseException as exc:
            self._failed(exc, start)
            raise
        finally:
            _ctx_reset(token)
        counts.successes += 1
        if measure or self._budget is not None:
            self._finish(True, start)
        return result

    def _failed(self, exc: BaseException, start: float) -> None:
        """Record a call that raised: a rejection (the error budget counts it as a failed request,
        latency budgets do not see it), a failure, or a cancellation (recorded nowhere else)."""
        counts = self._counts
        if isinstance(exc, Rejected):
            counts.rejected += 1
            if self._budget is not None:
                self._budget.record(False)
        elif not isinstance(exc, Exception):
            counts.cancelled += 1
        elif not isinstance(exc, NotCallable):  # a caller's bug: nothing ran, nothing to record
            counts.failures += 1
            self._finish(False, start)

    def _finish(self, ok: bool, start: float) -> None:
        """Record a completed call: one clock read serves the latency and the error budget."""
        budget = self._budget
        if not self._measure:
            if budget is not None:
                budget.record(ok)
            return
        end = self._clock()
        if budget is not None:
            budget.record(ok, end if self._budget_shares_clock else None)
        self._observe(end - start)

    def _observe(self, elapsed: float) -> None:
        if self._latency is not None:
            self._latency.record(elapsed)
        if self._adaptive is not None:
            self._adaptive.record_latency(elapsed)


class FallbackStack(Stack):
    """A compiled stack with a fallback around all of :meth:`Stack.run`."""

    __slots__ = ("_fallback",)

    def __init__(self, operation: str, components: Components, counts: Counts, clock: Clock):
        super().__init__(operation, components, counts, clock)
        assert components.fallback is not None
        self._fallback = components.fallback.call

    async def run(self, ctx: OperationContext, op: Operation[T]) -> T:
        return cast(T, await self._fallback(Stack.run, self, ctx, op))


def compile_stack(operation: str, components: Components, counts: Counts, clock: Clock) -> Stack:
    """The general stack for ``components``: a :class:`FallbackStack` when a fallback is
    registered, else a :class:`Stack`."""
    if components.fallback is not None:
        return FallbackStack(operation, components, counts, clock)
    return Stack(operation, components, counts, clock)
