"""``ResilienceManager``: named policies wired into one stack per operation.

The manager holds no policy logic. It keeps, per operation name, at most one policy of each kind and
runs ``await rm.execute_with_all_protections(ctx, op)`` through them in this order, outermost first::

    fallback -> [deadline] -> bulkhead -> retry -> hedge -> circuit breaker -> adaptive throttle
             -> adaptive concurrency -> rate limiter -> attempt timeout -> chaos -> op

then records the outcome to the operation's error budget and its latency to its latency budget.

- ``fallback`` encloses everything, the deadline and the recording included: when the protected call
  fails or is refused (or the degradation level sheds it), the caller gets the fallback's answer,
  while the error and latency budgets and the operation's counts record what really happened.

- ``[deadline]`` is the earlier of the :class:`~dwcp_resilience.OperationContext`'s deadline and the
  operation's registered total deadline (:meth:`ResilienceManager.register_deadline`). It encloses
  the whole run, bulkhead queueing included, so no wait, attempt or backoff outlives it; when it
  fires the caller gets :class:`~dwcp_resilience.DeadlineExceeded`. (DESIGN.md draws the deadline
  inside the bulkhead; a caller's deadline that a queue wait could overrun would not bound "the whole
  run", so the scope starts first. The bulkhead still comes before any attempt.)
- ``hedge`` races the attempts of one retry attempt: each hedged attempt passes the breaker, the
  adaptive policies, spends a token and gets its own timeout, as a retry does; a loser cancelled by
  the winner is neutral to the breaker.
- Every attempt passes the breaker (so it sees each one), then the adaptive throttle (an attempt the
  breaker refused never counts as a request to the backend, and a local throttling is no breaker
  failure), then the adaptive concurrency limiter (its samples are single attempts, timed without
  the throttle's or breaker's decisions), then spends a token (only attempts that may reach the wire
  do), then gets its own timeout; chaos is innermost, so injected faults flow through the breaker,
  the adaptive policies and retry like real ones. A stack with an adaptive throttle or concurrency
  limiter runs the policies' own ``call`` chain (not the fast lane).
- A missing component means no protection of that kind, never "skip the call".
- The real result, or the real exception, always reaches the caller.
- Outcomes recorded per operation: ``success``, ``failure``, ``rejected`` (one of our
  :class:`~dwcp_resilience.Rejected`: the caller was refused service, so the error budget counts it
  as a failed request, but latency budgets do not see it) and ``cancelled`` (recorded nowhere but
  the counter: cancellation is not an outcome of the operation).

Registration is safe while operations run: each registration builds a new immutable stack for its
operation and swaps it in; a call in flight keeps the stack it started with.

This module is over 450 lines because it is mostly one class, :class:`ResilienceManager`, whose
registration and execution methods share its per-operation state; the dataclasses above it are its
results.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType, TracebackType
from typing import Any, TypeVar, Unpack

from ._lane import lane_for
from ._stack import Components, Counts, Stack, compile_stack
from .core.clock import Clock, loop_time
from .core.context import OperationContext
from .core.errors import not_callable
from .core.validate import check_name, check_number
from .policies.adaptive import AdaptiveRateLimiter
from .policies.backoff import ExponentialBackoff
from .policies.breaker import BreakerOptions, CircuitBreaker
from .policies.bulkhead import Bulkhead
from .policies.chaos import Chaos
from .policies.concurrency import AdaptiveConcurrencyLimiter, ConcurrencyLimiterOptions
from .policies.fallback import Fallback, FallbackOptions
from .policies.hedge import Hedge, HedgeOptions, Percentile
from .policies.ratelimit import RateLimiter
from .policies.retry import Retry, RetryOptions
from .policies.throttle import AdaptiveThrottle, ThrottleOptions
from .policies.timeout import Timeout
from .slo.degradation import DegradationManager
from .slo.error_budget import ErrorBudget, ErrorBudgetOptions
from .slo.health import HealthCheck, HealthMonitor
from .slo.latency_budget import LatencyBudget

__all__ = (
    "OperationStatistics",
    "PipelineConfigError",
    "PipelineWarning",
    "ResilienceManager",
    "ResilienceSnapshot",
    "StackReport",
)

T = TypeVar("T")
Operation = Callable[[OperationContext], Awaitable[T]]

_INF = math.inf
_NO_VALUE: Any = object()  # register_fallback without value= (None is a value)


class PipelineWarning(UserWarning):
    """A registration made a combination the anchors call a foot-gun (see :class:`StackReport`)."""


class PipelineConfigError(ValueError):
    """A registration made a foot-gun combination and the manager is ``strict``."""


@dataclass(frozen=True, slots=True)
class StackReport:
    """What an operation's stack does, in the worst case.

    Attributes:
        operation: the operation name.
        layers: the names of the registered layers, outermost first.
        worst_case_attempts: how many times ``op`` can run for one call.
        worst_case_latency: the longest one call can take in seconds (``inf`` when nothing bounds
            it: no deadline and no attempt timeout).
        problems: the foot-guns found (empty when none).
    """

    operation: str
    layers: tuple[str, ...]
    worst_case_attempts: int
    worst_case_latency: float
    problems: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class OperationStatistics:
    """Per-operation outcome counts and the statistics of each registered policy."""

    operation: str
    calls: int
    successes: int
    failures: int
    rejected: int
    cancelled: int
    policies: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class ResilienceSnapshot:
    """A frozen snapshot of everything the manager holds (``get_all_metrics()``)."""

    name: str
    operations: Mapping[str, OperationStatistics]
    healthy: bool
    health: object
    degradation: object


class ResilienceManager:
    """Named policies per operation, composed by :meth:`execute_with_all_protections`.

    Args:
        name: the manager's name (prefix of its health monitor and degradation manager).
        clock: the monotonic clock for deadlines and latency (default: the running loop's).
        health_interval: seconds between health rounds (Go: 10 s).
        health_timeout: per-check timeout (Go: 5 s).
        max_attempts: retries beyond this many attempts per call are a foot-gun (default 10).
        strict: raise :class:`PipelineConfigError` on a foot-gun instead of warning.

    Use it as an async context manager to run health monitoring for its lifetime.
    """

    def __init__(
        self,
        name: str,
        *,
        clock: Clock | None = None,
        health_interval: float = 10.0,
        health_timeout: float = 5.0,
        max_attempts: int = 10,
        strict: bool = False,
    ) -> None:
        self.name = check_name(name)
        self._clock: Clock = loop_time if clock is None else clock
        self._max_attempts = max_attempts
        self._strict = bool(strict)
        self._lock = threading.Lock()  # registration only; never taken on the call path
        self._components: dict[str, Components] = {}
        self._counts: dict[str, Counts] = {}
        self._stacks: dict[str, Stack] = {}
        self._contexts: dict[str, OperationContext] = {}
        self.health = HealthMonitor(
            f"{name}-health", interval=health_interval, timeout=health_timeout
        )
        self.degradation = DegradationManager(f"{name}-degradation")
        self._health_cm: Any = None

    def __repr__(self) -> str:
        return f"<ResilienceManager {self.name!r}: {len(self._components)} operations>"

    # --- registration ---------------------------------------------------------------------------

    def _update(self, operation: str, **changes: Any) -> None:
        check_name(operation, "operation")
        with self._lock:
            old = self._components.get(operation, Components())
            new = replace(old, **changes)
            report = self._report(operation, new)
            if report.problems:
                message = f"{operation!r}: " + "; ".join(report.problems)
                if self._strict:
                    raise PipelineConfigError(message)
                warnings.warn(message, PipelineWarning, stacklevel=3)
            counts = self._counts.setdefault(operation, Counts())
            self._components[operation] = new
            self._stacks[operation] = lane_for(
                operation, new, counts, self._clock
            ) or compile_stack(operation, new, counts, self._clock)

    def register(self, operation: str, *policies: object) -> None:
        """Register built policy objects (of any kind below) for ``operation``.

        Raises:
            TypeError: for an object that is not one of the supported policy types.
        """
        changes: dict[str, Any] = {}
        for policy in policies:
            if isinstance(policy, Bulkhead):
                changes["bulkhead"] = policy
            elif isinstance(policy, Retry):
                changes["retry"] = policy
            elif isinstance(policy, CircuitBreaker):
                changes["breaker"] = policy
            elif isinstance(policy, AdaptiveThrottle):
                changes["throttle"] = policy
            elif isinstance(policy, AdaptiveConcurrencyLimiter):
                changes["concurrency"] = policy
            elif isinstance(policy, RateLimiter | AdaptiveRateLimiter):
                changes["limiter"] = policy
            elif isinstance(policy, Timeout):
                changes["timeout"] = policy
            elif isinstance(policy, Chaos):
                changes["chaos"] = policy
            elif isinstance(policy, Hedge):
                changes["hedge"] = policy
            elif isinstance(policy, Fallback):
                changes["fallback"] = policy
            elif isinstance(policy, ErrorBudget):
                changes["error_budget"] = policy
                changes["budget_shares_clock"] = False
            elif isinstance(policy, LatencyBudget):
                changes["latency_budget"] = policy
            else:
                raise TypeError(f"cannot register {type(policy).__name__} for {operation!r}")
        self._update(operation, **changes)

    def register_circuit_breaker(
        self,
        name: str,
        max_failures: int = 5,
        timeout: float | None = None,
        reset_timeout: float = 60.0,
        **options: Unpack[BreakerOptions],
    ) -> CircuitBreaker:
        """Register a breaker for operation ``name`` (Go: ``RegisterCircuitBreaker``).

        ``timeout`` is the Go breaker's per-call timeout: when given, it becomes the operation's
        attempt timeout unless one is registered already (the default ``None`` adds no timeout;
        the Go package's was 30 s). ``options`` go to :class:`~dwcp_resilience.CircuitBreaker`.
        """
        breaker = CircuitBreaker(
            name,
            max_failures=max_failures,
            reset_timeout=reset_timeout,
            clock=self._clock,
            **options,
        )
        changes: dict[str, Any] = {"breaker": breaker}
        current = self._components.get(name)
        if timeout is not None and (current is None or current.timeout is None):
            changes["timeout"] = Timeout(timeout, name=f"{name}-timeout")
        self._update(name, **changes)
        return breaker

    def register_retry_policy(  # noqa: PLR0917 - the Go RegisterRetryPolicy order
        self,
        name: str,
        max_retries: int = 3,
        initial_delay: float = 0.1,
        max_delay: float = 10.0,
        multiplier: float = 2.0,
        jitter: bool = True,
        **options: Unpack[RetryOptions],
    ) -> Retry:
        """Register a retry policy with exponential backoff for ``name`` (Go: ``RegisterRetryPolicy``)."""
        retry = Retry(
            name,
            max_retries=max_retries,
            backoff=ExponentialBackoff(
                initial_delay=initial_delay,
                max_delay=max_delay,
                multiplier=multiplier,
                jitter=jitter,
            ),
            **options,
        )
        self._update(name, retry=retry)
        return retry

    def register_rate_limiter(
        self, name: str, rate: float, burst: int, *, max_wait: float | None = None
    ) -> RateLimiter:
        """Register a token bucket of ``rate`` tokens/s and ``burst`` for ``name`` (arguments as
        :class:`~dwcp_resilience.RateLimiter`'s)."""
        limiter = RateLimiter(name, rate=rate, burst=burst, max_wait=max_wait, clock=self._clock)
        self._update(name, limiter=limiter)
        return limiter

    def register_adaptive_rate_limiter(  # noqa: PLR0917 - the Go order
        self,
        name: str,
        initial_rate: float,
        min_rate: float,
        max_rate: float,
        target_latency: float,
        window_size: int = 100,
    ) -> AdaptiveRateLimiter:
        """Register a latency-driven adaptive limiter for ``name``; it sees that operation's latency."""
        limiter = AdaptiveRateLimiter(
            name,
            initial_rate=initial_rate,
            min_rate=min_rate,
            max_rate=max_rate,
            target_latency=target_latency,
            window_size=window_size,
            clock=self._clock,
        )
        self._update(name, limiter=limiter)
        return limiter

    def register_adaptive_throttle(
        self, name: str, k: float = 2.0, window: float = 120.0, **options: Unpack[ThrottleOptions]
    ) -> AdaptiveThrottle:
        """Register client-side throttling for ``name`` (arguments as
        :class:`~dwcp_resilience.AdaptiveThrottle`'s; it reads the manager's clock)."""
        throttle = AdaptiveThrottle(name, k=k, window=window, clock=self._clock, **options)
        self._update(name, throttle=throttle)
        return throttle

    def register_adaptive_concurrency_limiter(
        self, name: str, **options: Unpack[ConcurrencyLimiterOptions]
    ) -> AdaptiveConcurrencyLimiter:
        """Register an adaptive concurrency limit for ``name`` (arguments as
        :class:`~dwcp_resilience.AdaptiveConcurrencyLimiter`'s; it reads the manager's clock)."""
        limiter = AdaptiveConcurrencyLimiter(name, clock=self._clock, **options)
        self._update(name, concurrency=limiter)
        return limiter

    def register_bulkhead(
        self, name: str, max_concurrent: int, max_queue: int = 0, max_wait: float | None = None
    ) -> Bulkhead:
        """Register a bulkhead for ``name`` (Go: ``RegisterBulkhead``)."""
        bulkhead = Bulkhead(
            name, max_concurrent=max_concurrent, max_queue=max_queue, max_wait=max_wait
        )
        self._update(name, bulkhead=bulkhead)
        return bulkhead

    def register_timeout(self, name: str, seconds: float) -> Timeout:
        """Register the per-attempt timeout of ``name``."""
        timeout = Timeout(seconds, name=f"{name}-timeout")
        self._update(name, timeout=timeout)
        return timeout

    def register_deadline(self, name: str, seconds: float) -> None:
        """Bound every call of ``name`` to ``seconds`` in total (attempts, backoff and queueing)."""
        self._update(
            name, deadline=check_number(seconds, "seconds", min_value=0.0, allow_zero=False)
        )

    def register_chaos(self, name: str, chaos: Chaos) -> Chaos:
        """Inject ``chaos`` innermost in ``name``'s stack."""
        self._update(name, chaos=chaos)
        return chaos

    def register_hedge(
        self,
        name: str,
        delay: float | Percentile = 2.0,
        max_hedged_attempts: int = 1,
        **options: Unpack[HedgeOptions],
    ) -> Hedge:
        """Hedge every attempt of ``name``: after ``delay`` (seconds, or a
        :class:`~dwcp_resilience.Percentile` of recent latencies) start another, up to
        ``max_hedged_attempts`` more; the first success wins. ``options`` go to
        :class:`~dwcp_resilience.Hedge` (its own budget by default: 10 % of calls)."""
        hedge = Hedge(
            name,
            delay=delay,
            max_hedged_attempts=max_hedged_attempts,
            clock=self._clock,
            **options,
        )
        self._update(name, hedge=hedge)
        return hedge

    def register_fallback(
        self,
        name: str,
        *,
        value: object = _NO_VALUE,
        handler: Callable[[Exception], object] | None = None,
        **options: Unpack[FallbackOptions],
    ) -> Fallback[Any]:
        """Answer failed or refused calls of ``name`` with ``value`` or ``handler(exception)``
        (outermost: the deadline's ``DeadlineExceeded`` is answered too). With ``shed_at``
        (a :class:`~dwcp_resilience.DegradationLevel`), calls made while this manager's
        degradation level is at or above it are not run: the fallback answers at once.
        ``options`` go to :class:`~dwcp_resilience.Fallback`."""
        degradation = self.degradation if options.get("shed_at") is not None else None
        fallback: Fallback[Any]
        if handler is not None and value is _NO_VALUE:
            fallback = Fallback(
                name, handler=handler, degradation=degradation, clock=self._clock, **options
            )
        elif handler is None and value is not _NO_VALUE:
            fallback = Fallback(
                name, value=value, degradation=degradation, clock=self._clock, **options
            )
        else:
            raise TypeError("give exactly one of value= and handler=")
        self._update(name, fallback=fallback)
        return fallback

    def register_error_budget(
        self, name: str, slo: float, window: float = 3600.0, **options: Unpack[ErrorBudgetOptions]
    ) -> ErrorBudget:
        """Register the error budget every call of ``name`` is recorded to."""
        budget = ErrorBudget(name, slo=slo, window=window, clock=self._clock, **options)
        self._update(name, error_budget=budget, budget_shares_clock=True)
        return budget

    def register_latency_budget(
        self, name: str, target: float, percentile: float = 95.0, max_samples: int = 1000
    ) -> LatencyBudget:
        """Register the latency budget every completed call of ``name`` is recorded to."""
        budget = LatencyBudget(name, target=target, percentile=percentile, max_samples=max_samples)
        self._update(name, latency_budget=budget)
        return budget

    def register_health_check(self, check: HealthCheck) -> None:
        """Add a check to the manager's health monitor."""
        self.health.add_check(check)

    # --- lookup ---------------------------------------------------------------------------------

    def operations(self) -> tuple[str, ...]:
        """The registered operation names."""
        return tuple(self._components)

    def circuit_breaker(self, operation: str) -> CircuitBreaker | None:
        components = self._components.get(operation)
        return None if components is None else components.breaker

    def components(self, operation: str) -> Mapping[str, object]:
        """The policies registered for ``operation``, by kind."""
        components = self._components.get(operation, Components())
        found: dict[str, object] = dict(components.layers())
        if components.error_budget is not None:
            found["error_budget"] = components.error_budget
        if components.latency_budget is not None:
            found["latency_budget"] = components.latency_budget
        return MappingProxyType(found)

    # --- execution ------------------------------------------------------------------------------

    def execute_with_all_protections(
        self, ctx: OperationContext | str, op: Operation[T]
    ) -> Coroutine[Any, Any, T]:
        """Run ``op(ctx)`` through the operation's stack and return its result (``await`` it).

        This is a plain function returning the stack's coroutine, so it adds no coroutine frame of
        its own; nothing runs until the coroutine is awaited.

        ``ctx`` is an :class:`~dwcp_resilience.OperationContext` or an operation name. An operation
        with nothing registered runs unprotected (and is still counted).

        Raises:
            whatever ``op`` raised (unchanged, after retries), a :class:`~dwcp_resilience.Rejected`
            when a policy refused the call, or :class:`~dwcp_resilience.DeadlineExceeded`.
        """
        if not callable(op):
            raise not_callable(op)
        if isinstance(ctx, str):
            context = self._contexts.get(ctx)
            if context is None:
                context = self._contexts[ctx] = OperationContext(ctx)
            ctx = context
        stack = self._stacks.get(ctx.operation)
        if stack is None:
            with self._lock:
                stack = self._stacks.get(ctx.operation)
                if stack is None:
                    counts = self._counts.setdefault(ctx.operation, Counts())
                    stack = Stack(ctx.operation, Components(), counts, self._clock)
                    self._stacks[ctx.operation] = stack
        return stack.run(ctx, op)

    async def execute_with_degradation(
        self,
        normal: Callable[[], Awaitable[T]],
        degraded: Callable[[], Awaitable[T]] | None = None,
        emergency: Callable[[], Awaitable[T]] | None = None,
    ) -> T:
        """Run the branch the current degradation level picks (see ``DegradationManager.execute``)."""
        return await self.degradation.execute(normal, degraded, emergency)

    # --- the pipeline check ---------------------------------------------------------------------

    def describe(self, operation: str) -> StackReport:
        """The worst case of ``operation``'s stack (attempts, latency) and its foot-guns."""
        return self._report(operation, self._components.get(operation, Components()))

    def _report(self, operation: str, c: Components) -> StackReport:
        problems: list[str] = []
        attempts = 1 if c.retry is None else c.retry.max_retries + 1
        hedged = 1 if c.hedge is None else c.hedge.max_hedged_attempts + 1
        attempt_timeout = _INF if c.timeout is None else c.timeout.seconds
        deadline = _INF if c.deadline is None else c.deadline
        # A budgeted hedge adds at most its budget's share of attempts on average: only an
        # unbudgeted one multiplies the load (worst_case_attempts counts hedges either way).
        multiplied = attempts * (hedged if c.hedge is not None and c.hedge.budget is None else 1)
        if multiplied > self._max_attempts:
            what = "retries" if multiplied == attempts else "retries and unbudgeted hedges"
            problems.append(
                f"{what} multiply each call into {multiplied} attempts (limit {self._max_attempts})"
            )
        hedge_delay = _INF
        if c.hedge is not None:
            percentile = c.hedge.percentile
            hedge_delay = c.hedge.delay() if percentile is None else percentile.fallback
            if percentile is None and math.isfinite(hedge_delay) and hedge_delay >= attempt_timeout:
                problems.append(
                    f"hedge delay {hedge_delay:g}s >= attempt timeout {attempt_timeout:g}s: no "
                    "hedge starts while an attempt is slow, only after it failed"
                )
        if c.retry is not None and math.isfinite(deadline) and attempt_timeout >= deadline:
            problems.append(
                f"attempt timeout {attempt_timeout:g}s >= total deadline {deadline:g}s: "
                "no retry can ever run"
            )
        window = getattr(c.breaker, "window_duration", None) if c.breaker is not None else None
        if window is not None and math.isfinite(attempt_timeout) and window < 2 * attempt_timeout:
            problems.append(
                f"breaker window {window:g}s is shorter than twice the attempt timeout "
                f"{attempt_timeout:g}s: slow failures fall out of the window before they count"
            )
        backoff_total = 0.0
        if c.retry is not None:
            backoff_total = c.retry.max_retries * c.retry.backoff.max_delay
        wait = 0.0
        if c.bulkhead is not None and c.bulkhead.max_queue > 0:
            wait = c.bulkhead.max_wait  # inf when unbounded
        queue_wait = 0.0  # per attempt: the adaptive limiter sits inside the retry
        if c.concurrency is not None and c.concurrency.max_queue > 0:
            queue_wait = c.concurrency.max_wait
        # A hedged round ends at most one attempt timeout after its last attempt started; a
        # percentile delay is bounded by the attempt timeout (it samples attempts that finished).
        if c.hedge is not None and hedged > 1:
            bound = hedge_delay if c.hedge.percentile is None else max(hedge_delay, attempt_timeout)
            attempt_timeout = attempt_timeout + (hedged - 1) * bound
        latency = wait + attempts * (queue_wait + attempt_timeout) + backoff_total
        latency = min(latency, deadline)
        layers = tuple(kind for kind, _ in c.layers() if kind != "fallback")
        if c.deadline is not None:
            layers = ("deadline", *layers)
        if c.fallback is not None:
            layers = ("fallback", *layers)
        return StackReport(operation, layers, attempts * hedged, latency, tuple(problems))

    # --- health, snapshot, lifetime ---------------------------------------------------------------

    def is_healthy(self) -> bool:
        return self.health.healthy

    def statistics(self, operation: str) -> OperationStatistics:
        counts = self._counts.get(operation, Counts())
        policies = {
            kind: policy.statistics()
            for kind, policy in self.components(operation).items()
            if hasattr(policy, "statistics")
        }
        return OperationStatistics(
            operation,
            counts.calls,
            counts.successes,
            counts.failures,
            counts.rejected,
            counts.cancelled,
            MappingProxyType(policies),
        )

    def get_all_metrics(self) -> ResilienceSnapshot:
        """A frozen snapshot of every operation's counts and policy statistics, health and level."""
        names = set(self._components) | set(self._counts)
        operations = {name: self.statistics(name) for name in sorted(names)}
        return ResilienceSnapshot(
            self.name,
            MappingProxyType(operations),
            self.health.healthy,
            self.health.statistics(),
            self.degradation.statistics(),
        )

    async def __aenter__(self) -> ResilienceManager:
        self._health_cm = self.health
        await self.health.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.health.__aexit__(exc_type, exc, tb)
