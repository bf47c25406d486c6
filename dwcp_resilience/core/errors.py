"""The exceptions every primitive raises.

One tree, rooted in :class:`ResilienceError`, so callers can catch all of our own errors at once and
still tell a rejection (the callee never ran) from a deadline (the callee ran too long)::

    ResilienceError                       (Exception)
    ├── Rejected                          the callee was not run; ``retry_after`` when known
    │   ├── CircuitOpen                   a breaker is open (or half-open with every probe slot taken)
    │   ├── RateLimited                   a rate limiter had no token in time
    │   ├── BulkheadFull                  a bulkhead had no permit: ``reason`` is "full" or "timeout"
    │   │   └── ConcurrencyLimited        an adaptive concurrency limiter had no permit
    │   ├── Throttled                     an adaptive throttle refused the call locally
    │   └── Degraded                      the degradation level said not to call (a ``Fallback``'s
    │                                     ``shed_at``): what its handler receives
    ├── DeadlineExceeded                  (also TimeoutError) our own deadline fired
    └── NotCallable                       (also TypeError) ``call(fn(x))`` instead of ``call(fn, x)``

Rejections never count as failures in any breaker and are not retried by default. A
:class:`NotCallable` is never counted as a failure and never retried (it is a bug in the caller). A
``DeadlineExceeded`` is raised only when *our* deadline fired; an outer cancellation stays a
cancellation.

Exceptions here build their message lazily (in ``__str__``), so raising one on a hot rejection path
costs an allocation and nothing else. Each raise creates a fresh instance: a shared instance would grow
its traceback on every raise.
"""

from __future__ import annotations

import inspect

__all__ = (
    "BulkheadFull",
    "CircuitOpen",
    "ConcurrencyLimited",
    "DeadlineExceeded",
    "Degraded",
    "NotCallable",
    "RateLimited",
    "Rejected",
    "ResilienceError",
    "Throttled",
)


class ResilienceError(Exception):
    """Root of every error that ``dwcp_resilience`` raises itself."""


class Rejected(ResilienceError):
    """A policy refused the call: the callee was never run.

    Args:
        name: the name of the policy that refused.
        retry_after: seconds after which a new call may be admitted, when known (else ``None``).

    The fields live in ``args`` and are read through properties, so an instance needs no ``__dict__``:
    a hot rejection path may build one with ``BaseException.__new__(cls, name, retry_after)``.
    """

    def __init__(self, name: str, retry_after: float | None = None) -> None:
        super().__init__(name, retry_after)

    @property
    def name(self) -> str:
        """The name of the policy that refused."""
        name: str = self.args[0]
        return name

    @property
    def retry_after(self) -> float | None:
        """Seconds after which a new call may be admitted, when known."""
        args = self.args
        value: float | None = args[1] if len(args) > 1 else None
        return value

    def _describe(self) -> str:
        return "rejected"

    def __str__(self) -> str:
        text = f"{self.name!r}: {self._describe()}"
        if self.retry_after is not None:
            text += f" (retry after {self.retry_after:.3f}s)"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, retry_after={self.retry_after!r})"


class CircuitOpen(Rejected):
    """The circuit breaker did not admit the call (open, or half-open with all probe slots taken)."""

    def _describe(self) -> str:
        return "circuit breaker is open"


class RateLimited(Rejected):
    """The rate limiter could not hand out the tokens in time."""

    def _describe(self) -> str:
        return "rate limit exceeded"


class BulkheadFull(Rejected):
    """The bulkhead had no permit: its queue was full (``reason="full"``) or the wait ran out
    (``reason="timeout"``)."""

    def __init__(self, name: str, retry_after: float | None = None, reason: str = "full") -> None:
        ResilienceError.__init__(self, name, retry_after, reason)

    @property
    def reason(self) -> str:
        """``"full"`` (queue full, or try-only) or ``"timeout"`` (``max_wait`` ran out)."""
        args = self.args
        reason: str = args[2] if len(args) > 2 else "full"
        return reason

    def _describe(self) -> str:
        return "bulkhead is full" if self.reason == "full" else "bulkhead wait timeout"

    def __repr__(self) -> str:
        return (
            f"BulkheadFull({self.name!r}, retry_after={self.retry_after!r}, reason={self.reason!r})"
        )


class ConcurrencyLimited(BulkheadFull):
    """An :class:`~dwcp_resilience.AdaptiveConcurrencyLimiter` had no permit within its current
    limit: its queue was full (``reason="full"``) or the wait ran out (``reason="timeout"``).

    A :class:`BulkheadFull` (the limiter is a bulkhead whose size follows latency), so code that
    handles a full bulkhead handles it too. ``retry_after`` is an estimate: the time the calls in
    flight take to free a permit for every waiter ahead and this call, from the latency measured in
    the last window (``None`` before the first window).
    """

    def _describe(self) -> str:
        return "concurrency limit reached" if self.reason == "full" else "concurrency wait timeout"

    def __repr__(self) -> str:
        return (
            f"ConcurrencyLimited({self.name!r}, retry_after={self.retry_after!r}, "
            f"reason={self.reason!r})"
        )


class Throttled(Rejected):
    """An :class:`~dwcp_resilience.AdaptiveThrottle` refused the call locally: the backend has
    accepted too few of the recent requests (client-side throttling, Google SRE book).

    Not a :class:`RateLimited`: nothing here is a rate with a known refill. The refusal is a draw
    against the current rejection probability, so the very next call may pass, and ``retry_after``
    is ``None``.
    """

    def _describe(self) -> str:
        return "throttled: the backend accepts too few requests"


class Degraded(Rejected):
    """The degradation level was at or above a :class:`~dwcp_resilience.Fallback`'s ``shed_at``,
    so the callee was not run and the fallback answered: this is the exception its handler
    receives.

    Args:
        name: the fallback's name.
        level: the degradation level seen (an ``int``; a ``DegradationLevel``).
    """

    def __init__(self, name: str, level: int) -> None:
        ResilienceError.__init__(self, name, None, level)

    @property
    def level(self) -> int:
        """The degradation level that shed the call."""
        level: int = self.args[2]
        return level

    def _describe(self) -> str:
        return f"shed at degradation level {self.level}"

    def __repr__(self) -> str:
        return f"Degraded({self.name!r}, level={self.level!r})"


class DeadlineExceeded(ResilienceError, TimeoutError):
    """Our own deadline fired while the callee ran (or before it could start).

    Args:
        name: the policy (or operation) whose deadline fired.
        timeout: the budget in seconds that was exceeded, when known.
    """

    def __init__(self, name: str, timeout: float | None = None) -> None:
        super().__init__(name, timeout)
        self.name = name
        self.timeout = timeout

    def __str__(self) -> str:
        if self.timeout is None:
            return f"{self.name!r}: deadline exceeded"
        return f"{self.name!r}: deadline of {self.timeout:g}s exceeded"

    def __repr__(self) -> str:
        return f"DeadlineExceeded({self.name!r}, timeout={self.timeout!r})"


class NotCallable(ResilienceError, TypeError):
    """A policy was handed an object where it needs an async function, most often a coroutine
    object: ``await policy.call(fetch(url))`` instead of ``await policy.call(fetch, url)``.

    Nothing ran: the policy refused before admitting, counting or retrying anything, and a
    coroutine object was closed (so Python does not also warn that it was never awaited). Never
    counted as a failure by any breaker or budget, never retried.

    Args:
        obj: what was passed instead of a function.
    """

    def __init__(self, obj: object) -> None:
        super().__init__(type(obj).__name__)

    def __str__(self) -> str:
        kind = self.args[0]
        if kind == "coroutine":
            return (
                "expected an async function and its arguments, got a coroutine object "
                "(it was closed, not run): write call(fn, *args), not call(fn(*args))"
            )
        return f"expected an async function and its arguments, got a {kind} object"


def not_callable(obj: object) -> NotCallable:
    """The error for ``obj`` passed where a function belongs; a coroutine object is closed first.

    Every policy's ``call`` (and decorator) raises it when its ``fn`` is not callable, before it
    admits or counts anything: ``if not callable(fn): raise not_callable(fn)``.
    """
    if inspect.iscoroutine(obj):
        obj.close()
    return NotCallable(obj)
