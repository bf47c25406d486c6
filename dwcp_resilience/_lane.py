"""The manager's fast lane: the usual stack run in one frame, deciding nothing itself.

``bulkhead -> retry -> circuit breaker -> rate limiter -> attempt timeout -> op`` is what the DWCP
client runs on every message. Run as a chain, that is five frames between the task and ``op``, and
each frame is resumed on every suspension of ``op``. :class:`_LaneStack` runs a call's *first
attempt* in :meth:`run`'s own frame instead, when every admission can be had at once. It reaches
each policy only through the policy's declared internal interface, so every decision keeps its one
home: the admissions of :mod:`~dwcp_resilience.core._fused` (the bulkhead's ``enter``/``exit``,
the breaker's ``ready``/``enter``/``exit``, the limiter's ``take_at``, i.e. ``TokenBucket.take``)
and the timeout's :class:`~dwcp_resilience.policies.timeout.Sweeper` (``open``/``exit``):

- it first checks, without changing anything, that the breaker would admit at once
  (``ready``) and that the attempt timeout's deadline is still ahead, then takes the bulkhead's
  permit and the limiter's token, at one clock reading, if they are there at once; if any of
  these fails the call takes the compiled chain
  (:meth:`Stack.run <dwcp_resilience._stack._Stack.run>`) from the start, which waits, rejects or
  raises exactly as before, after giving back a permit it took;
- it then enters the operation's deadline scope (the call's deadline, or the registered total one
  if earlier, as :meth:`Stack.run` does), admits in the breaker, opens the attempt timeout, and
  awaits ``op``; on return one more clock reading serves both budgets;
- when the first attempt raises, every policy records the exception as its own ``call`` would
  (the timeout turns its own expiry into ``DeadlineExceeded``, the breaker classifies), and the
  retry goes on through :meth:`Retry._retry_loop` around the compiled chain of the inner
  policies, as ``Retry.call`` does after a failed first attempt.

It runs on asyncio and uvloop (trio takes the chain), and only when the manager and the limiter
read the loop's clock, every policy is fusable (the library's own classes, no subclass overriding
``call``, no per-breaker timeout) and there is no chaos, hedge, fallback, adaptive rate limiter,
adaptive throttle, adaptive concurrency limiter, retry budget or retry ``total_timeout``; any other
stack is the plain compiled chain (:func:`~dwcp_resilience._stack.compile_stack`, which runs every
component: the lane declines a stack, it never drops a part). The Hypothesis equivalence test of
the manager against hand-chained policies (``tests/test_fused.py``) covers both paths, deadlines
included.
"""

from __future__ import annotations

from asyncio import CancelledError
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

from ._stack import Components, Counts, Stack
from .core._fused import WAIT, admission_of, fuse
from .core._runtime import current_task, running
from .core.clock import Clock, loop_time
from .core.context import OperationContext, context_var, deadline_var
from .core.errors import DeadlineExceeded
from .policies.retry import Retry
from .policies.timeout import Timeout, sweeper_of

__all__ = ()

T = TypeVar("T")
Operation = Callable[[OperationContext], Awaitable[T]]

_INF = float("inf")
_ctx_set = context_var.set
_ctx_reset = context_var.reset
_deadline_get = deadline_var.get
_deadline_set = deadline_var.set
_deadline_reset = deadline_var.reset


def lane_for(operation: str, components: Components, counts: Counts, clock: Clock) -> Stack | None:
    """A :class:`_LaneStack` for ``components`` if the lane can run them, else ``None``."""
    c = components
    if clock is not loop_time or c.chaos is not None:
        return None
    if c.throttle is not None or c.concurrency is not None:
        return None  # no admission of theirs in the lane: the chain runs them
    if c.hedge is not None or c.fallback is not None:
        return None  # a hedge races attempts in a task group, a fallback encloses the deadline
    if c.bulkhead is not None and admission_of(c.bulkhead) is None:
        return None
    if c.retry is not None and (type(c.retry).call is not Retry.call or not c.retry._plain):
        return None
    if c.breaker is not None:
        admission = admission_of(c.breaker)
        if admission is None or admission.ready is None:
            return None
    if c.limiter is not None:
        admission = admission_of(c.limiter)
        if admission is None or admission.take_at is None:  # take_at: on the loop's clock only
            return None
    if c.timeout is not None and type(c.timeout).call is not Timeout.call:
        return None
    if (c.bulkhead, c.retry, c.breaker, c.limiter, c.timeout) == (None,) * 5:
        return None  # nothing to fuse: the plain run is as short
    return _LaneStack(operation, components, counts, clock)


class _LaneStack(Stack):
    """A compiled stack whose first attempt runs in one frame (see the module docstring)."""

    __slots__ = ("_attempt", "_breaker", "_inner", "_permit", "_take_token")

    def __init__(self, operation: str, components: Components, counts: Counts, clock: Clock):
        super().__init__(operation, components, counts, clock)
        c = components
        # Each policy through its admission (core/_fused.py): the lane decides nothing itself.
        self._permit = _enter_exit(c.bulkhead)
        breaker = None if c.breaker is None else admission_of(c.breaker)
        self._breaker: tuple[Callable[[], bool], Callable[[], object], _Exit] | None = None
        if breaker is not None and breaker.ready is not None and breaker.exit is not None:
            self._breaker = (breaker.ready, breaker.enter, breaker.exit)
        tokens = None if c.limiter is None else admission_of(c.limiter)
        self._take_token = None if tokens is None else tokens.take_at
        inner = [p for p in (c.breaker, c.limiter, c.timeout) if p is not None]
        calls = [policy.call for policy in fuse(inner)]
        # The later attempts' callee for Retry._retry_loop: the inner chain, as Retry.call sees it.
        self._attempt: Callable[..., Awaitable[Any]] | None = calls[0] if calls else None
        self._inner = tuple(calls[1:])

    async def run(self, ctx: OperationContext, op: Operation[T]) -> T:
        # -- the gate: asyncio or uvloop (the loop's sweeper and clock) ---------------------------
        state = running()
        if state is None:  # trio
            return await Stack.run(self, ctx, op)
        sweeper = state.deadlines or sweeper_of(state)
        clock = sweeper.time
        now = clock()
        # -- the operation's deadline: the call's, or the registered one if earlier --------------
        call = ctx
        limit = ctx.deadline
        if self._deadline is not None:
            own = now + self._deadline
            if limit is None or own < limit:
                ctx = replace(ctx, deadline=own)
                limit = own
        bound = _INF
        scoped = False
        if limit is not None:
            bound = limit
            scoped = bound < _deadline_get()
        c = self.components
        # -- can every admission be had at once? The checks first, then the takes ---------------
        breaker = self._breaker
        if breaker is not None and not breaker[0]():
            return await Stack.run(self, call, op)
        timeout = c.timeout
        deadline = _INF
        if timeout is not None:
            deadline = now + timeout.seconds
            outer = bound if scoped else _deadline_get()
            if outer < deadline:  # noqa: PLR1730 - min() costs a call on the hot path
                deadline = outer
            if deadline <= now:
                return await Stack.run(self, call, op)
        # The permit and the token: each check is its take. A permit taken before a missing
        # token is given back at once (nobody waits for it: it was free).
        permit = self._permit
        if permit is not None and permit[0]() is WAIT:
            return await Stack.run(self, call, op)
        take_token = self._take_token
        if take_token is not None and not take_token(now):
            if permit is not None:
                permit[1](None, None, None)
            return await Stack.run(self, call, op)
        # -- run ----------------------------------------------------------------------------------
        counts = self._counts
        counts.calls += 1
        token = _ctx_set(ctx)
        try:
            scope = None
            if scoped:  # as Stack.run: the operation's deadline encloses the whole run
                scope_token = _deadline_set(bound)
                try:
                    scope = self._deadline_timeout._open()
                except BaseException:
                    _deadline_reset(scope_token)
                    raise
            try:
                ticket = None if breaker is None else breaker[1]()  # ready(): admits, never raises
                retry = c.retry
                try:
                    # -- the first attempt -----------------------------------------------------
                    try:
                        if deadline == _INF:
                            result = await op(ctx)
                        else:
                            # never None: a coroutine runs in a task
                            task: Any = current_task(sweeper.loop)
                            entry = sweeper.open(task, deadline)
                            deadline_token = _deadline_set(deadline)
                            try:
                                result = await op(ctx)
                            except BaseException as exc:
                                _deadline_reset(deadline_token)
                                if sweeper.exit(entry, isinstance(exc, CancelledError)):
                                    assert timeout is not None
                                    raise DeadlineExceeded(timeout.name, timeout.seconds) from exc
                                raise
                            _deadline_reset(deadline_token)
                            sweeper.exit(entry, False)
                    except BaseException as exc:
                        if breaker is not None:
                            breaker[2](ticket, exc, None)
                        if retry is None or not isinstance(exc, Exception):
                            if retry is not None:
                                retry._first_interrupted += 1
                            raise
                        failure: Exception | None = exc
                    else:
                        failure = None
                        if breaker is not None:
                            breaker[2](ticket, None, result)
                        if retry is not None:
                            retry._first_ok += 1
                    # -- later attempts: Retry's own loop around the inner chain ----------------
                    if failure is not None:
                        assert retry is not None
                        attempt = self._attempt
                        if attempt is None:
                            args: tuple[Any, ...] = (ctx,)
                            attempt = op
                        else:
                            args = (*self._inner, op, ctx)
                        result = await retry._retry_loop(
                            attempt, args, {}, failure, None, None, _INF
                        )
                        failure = None
                finally:
                    if permit is not None:
                        permit[1](None, None, None)
            except BaseException as exc:
                if scope is not None:
                    expired = self._deadline_timeout._close(scope, exc)
                    _deadline_reset(scope_token)
                    if expired is not None:
                        raise expired from exc
                raise
            if scope is not None:
                expired = self._deadline_timeout._close(scope, None)
                _deadline_reset(scope_token)
                if expired is not None:
                    raise expired  # noqa: TRY301 - raised in this frame on purpose
        except BaseException as exc:
            self._failed(exc, now)
            raise
        finally:
            _ctx_reset(token)
        counts.successes += 1
        budget = self._budget
        if budget is not None or self._measure:
            end = clock()
            if budget is not None:
                budget.record(True, end if self._budget_shares_clock else None)
            latency = self._latency
            if latency is not None:
                latency.record(end - now)
        return result


_Exit = Callable[[object, BaseException | None, object], None]


def _enter_exit(policy: object) -> tuple[Callable[[], object], _Exit] | None:
    admission = None if policy is None else admission_of(policy)
    if admission is None or admission.exit is None:
        return None
    return admission.enter, admission.exit
