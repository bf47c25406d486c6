"""``Fallback``: answer with a value, or a function of the error, when a call fails or is refused.

Two idioms over one engine::

    cached = Fallback("profile", value=DEFAULT_PROFILE)
    await cached.call(fetch_profile, user)          # a call
    @Fallback("profile", handler=from_cache)         # a decorator (same parameters)
    async def fetch_profile(user: str) -> Profile: ...

Semantics:

- A call that returns is returned unchanged (one ``try`` and one integer increment).
- A call that raises is answered by the fallback when the exception is
  - a **failure** by the classification the other policies use (:class:`~dwcp_resilience.core.
    outcome.Classifier`): matched by ``on`` (a type, a tuple of types or a predicate; default every
    ``Exception``) and not by ``ignore``; or
  - one of **our own rejections** with ``on_rejected=True`` (the default):
    :class:`~dwcp_resilience.Rejected` (``CircuitOpen``, ``RateLimited``, ``BulkheadFull``, ...) and
    :class:`~dwcp_resilience.DeadlineExceeded`. With ``on_rejected=False`` these propagate, even
    when ``on`` would match them.
  Anything else propagates unchanged, and so does a :class:`~dwcp_resilience.NotCallable` (a bug of
  the caller).
- **Degradation**: with ``degradation=`` (anything with a ``level``, e.g. a
  :class:`~dwcp_resilience.DegradationManager`) and ``shed_at=`` (a
  :class:`~dwcp_resilience.DegradationLevel`), a call made while the level is at or above
  ``shed_at`` is not run at all: the fallback answers at once, and a handler receives a
  :class:`~dwcp_resilience.Degraded` (carrying the level). ``DegradationManager.execute`` picks a
  *function* by level; this sheds a protected call to its fallback.
- The fallback is ``value=`` (returned as is) or ``handler=``: a plain or ``async`` function that
  receives the exception and returns the answer. A handler that raises propagates its own exception
  (chained to the original as ``__context__``) and is counted in ``handler_errors``.
- Cancellation, ``KeyboardInterrupt``, ``SystemExit`` and ``GeneratorExit`` are never answered:
  they propagate, and count as ``cancelled``.

The policy is generic in the fallback's type ``R``: ``call`` and the decorator return ``T | R``.
Put it outermost: ``await fallback.call(pipeline.call, fn)`` (the manager does). Every fallback
taken is counted by reason (``failure``, ``rejected``, ``degraded``) and emitted as
:class:`FallbackUsed` to listeners.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import (
    Any,
    Generic,
    Literal,
    ParamSpec,
    Protocol,
    TypedDict,
    TypeVar,
    Unpack,
    cast,
    overload,
)

from ..core.clock import Clock, loop_time
from ..core.errors import DeadlineExceeded, Degraded, NotCallable, Rejected, not_callable
from ..core.events import Event, Listeners
from ..core.outcome import Classifier, ExceptionMatcher, Outcome
from ..core.policy import check_decorated
from ..core.validate import check_int, check_name

__all__ = (
    "Fallback",
    "FallbackOptions",
    "FallbackReason",
    "FallbackStatistics",
    "FallbackUsed",
    "LevelSource",
)

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R")

FallbackReason = Literal["failure", "rejected", "degraded"]
"""Why a fallback answered: a failure, one of our rejections, or the degradation level."""

_REASONS: tuple[FallbackReason, ...] = ("failure", "rejected", "degraded")
_MISSING: Any = object()


class LevelSource(Protocol):
    """What ``degradation=`` takes: anything with an integer ``level`` (a
    :class:`~dwcp_resilience.DegradationManager`)."""

    @property
    def level(self) -> int:
        """The current level (``DegradationLevel`` is an ``IntEnum``)."""
        ...


@dataclass(frozen=True, slots=True)
class FallbackUsed(Event):
    """The fallback answered a call: ``reason`` says why, ``exception`` is the type of what it
    answered (``Degraded`` for a shed call)."""

    reason: FallbackReason
    exception: type[BaseException]


@dataclass(frozen=True, slots=True)
class FallbackStatistics:
    """A snapshot of a :class:`Fallback`'s counters.

    :ivar name: the policy's name.
    :ivar successes: calls that returned (the fallback was not needed).
    :ivar fallbacks: calls the fallback answered, by reason (``failure``, ``rejected``,
        ``degraded``).
    :ivar unhandled: calls whose exception was not the fallback's to answer (it propagated).
    :ivar handler_errors: fallbacks whose handler raised (counted in ``fallbacks`` too).
    :ivar cancelled: calls cancelled or interrupted (never answered).
    """

    name: str
    successes: int
    fallbacks: tuple[tuple[FallbackReason, int], ...]
    unhandled: int
    handler_errors: int
    cancelled: int

    @property
    def total_fallbacks(self) -> int:
        return sum(count for _, count in self.fallbacks)

    @property
    def calls(self) -> int:
        return self.successes + self.total_fallbacks + self.unhandled + self.cancelled

    def fallbacks_by_reason(self) -> dict[FallbackReason, int]:
        return dict(self.fallbacks)


class FallbackOptions(TypedDict, total=False):
    """The keyword options of :class:`Fallback` beyond the fallback itself: what
    :meth:`~dwcp_resilience.ResilienceManager.register_fallback` passes on, typed."""

    on: ExceptionMatcher
    ignore: ExceptionMatcher | None
    on_rejected: bool
    shed_at: int | None
    listeners: Iterable[Callable[[FallbackUsed], None]]


class _Options(FallbackOptions, total=False):
    degradation: LevelSource | None
    clock: Clock | None


class Fallback(Generic[R]):
    """Answer failed or refused calls with a value or a handler's result (module docstring).

    Args:
        name: the policy's name (events, metrics).
        value: the answer (give exactly one of ``value`` and ``handler``).
        handler: ``(exception) -> answer``, a plain or ``async`` function.
        on: which exceptions are failures to answer (default every ``Exception``).
        ignore: exceptions never answered, even when ``on`` matches them.
        on_rejected: answer our own rejections and ``DeadlineExceeded`` too (default True).
        degradation: a level source (a ``DegradationManager``), with ``shed_at``.
        shed_at: at this level or above, calls are not run and the fallback answers at once.
        clock: the clock events are stamped with (default: the running loop's).
        listeners: callables receiving :class:`FallbackUsed` events.

    Raises:
        TypeError, ValueError: invalid configuration (the message names the field): neither or
            both of ``value`` and ``handler``, ``shed_at`` without ``degradation`` or the reverse.
    """

    __slots__ = (
        "_cancelled",
        "_classifier",
        "_clock",
        "_degradation",
        "_handler",
        "_handler_errors",
        "_listeners",
        "_name",
        "_ok",
        "_on_rejected",
        "_shed_at",
        "_unhandled",
        "_used",
        "_value",
    )

    @overload
    def __init__(self, name: str, *, value: R, **options: Unpack[_Options]) -> None: ...
    @overload
    def __init__(
        self,
        name: str,
        *,
        handler: Callable[[Exception], Awaitable[R]],
        **options: Unpack[_Options],
    ) -> None: ...
    @overload
    def __init__(
        self, name: str, *, handler: Callable[[Exception], R], **options: Unpack[_Options]
    ) -> None: ...

    def __init__(
        self,
        name: str,
        *,
        value: Any = _MISSING,
        handler: Callable[[Exception], Any] | None = None,
        on: ExceptionMatcher = Exception,
        ignore: ExceptionMatcher | None = None,
        on_rejected: bool = True,
        degradation: LevelSource | None = None,
        shed_at: int | None = None,
        clock: Clock | None = None,
        listeners: Iterable[Callable[[FallbackUsed], None]] = (),
    ) -> None:
        self._name = check_name(name)
        if (value is _MISSING) == (handler is None):
            raise TypeError("give exactly one of value= and handler=")
        if handler is not None and not callable(handler):
            raise TypeError("handler must be a function (exception) -> answer, plain or async")
        self._value = None if value is _MISSING else value
        self._handler = handler
        self._classifier = Classifier(on, ignore=ignore)
        if not isinstance(on_rejected, bool):
            raise TypeError("on_rejected must be a bool")
        self._on_rejected = on_rejected
        if (degradation is None) != (shed_at is None):
            raise ValueError("shed_at and degradation go together: give both or neither")
        if degradation is not None:
            check_int(shed_at, "shed_at", min_value=0)
            if isinstance(getattr(degradation, "level", None), bool) or not isinstance(
                getattr(degradation, "level", None), int
            ):
                raise TypeError("degradation must have an int level (e.g. a DegradationManager)")
        self._degradation = degradation
        self._shed_at = 0 if shed_at is None else int(shed_at)
        if clock is not None and not callable(clock):
            raise TypeError("clock must be a zero-argument callable returning seconds")
        self._clock: Clock = loop_time if clock is None else clock
        self._listeners: Listeners[FallbackUsed] = Listeners(listeners)
        self._ok = self._unhandled = self._handler_errors = self._cancelled = 0
        self._used: dict[FallbackReason, int] = dict.fromkeys(_REASONS, 0)

    # --- introspection --------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def shed_at(self) -> int | None:
        """The degradation level from which calls are shed (``None``: never)."""
        return None if self._degradation is None else self._shed_at

    def statistics(self) -> FallbackStatistics:
        """A frozen snapshot of the counters."""
        return FallbackStatistics(
            name=self._name,
            successes=self._ok,
            fallbacks=tuple(self._used.items()),
            unhandled=self._unhandled,
            handler_errors=self._handler_errors,
            cancelled=self._cancelled,
        )

    def add_listener(self, listener: Callable[[FallbackUsed], None]) -> None:
        """Register a listener for :class:`FallbackUsed` events."""
        self._listeners.add(listener)

    def remove_listener(self, listener: Callable[[FallbackUsed], None]) -> None:
        """Unregister a listener (``ValueError`` if it was not registered)."""
        self._listeners.remove(listener)

    def __repr__(self) -> str:
        used = sum(self._used.values())
        return f"<Fallback {self._name!r} [successes={self._ok}, fallbacks={used}]>"

    # --- the engine -----------------------------------------------------------------------------

    def reason(self, exc: BaseException) -> FallbackReason | None:
        """Why the fallback answers ``exc``, or ``None`` when it does not (it propagates)."""
        if not isinstance(exc, Exception) or isinstance(exc, NotCallable):
            return None
        if isinstance(exc, Rejected | DeadlineExceeded):
            return "rejected" if self._on_rejected else None
        return "failure" if self._classifier.of_exception(exc) is Outcome.FAILURE else None

    def _taken(self, exc: Exception, reason: FallbackReason) -> None:
        self._used[reason] += 1
        if self._listeners:
            self._listeners.emit(FallbackUsed(self._name, self._clock(), reason, type(exc)))

    async def _answer(self, exc: Exception) -> R:
        handler = self._handler
        if handler is None:
            return cast(R, self._value)
        try:
            answer = handler(exc)
            if inspect.isawaitable(answer):
                answer = await answer
        except Exception:
            self._handler_errors += 1
            raise
        return cast(R, answer)

    async def _shed(self, level: int) -> R:
        """The degradation level is at or above ``shed_at``: answer without running the callee."""
        shed = Degraded(self._name, level)
        self._taken(shed, "degraded")
        return await self._answer(shed)

    async def _recover(self, exc: Exception) -> R:
        """The callee raised ``exc``: answer it, or re-raise it when it is not ours to answer.
        (Called from the ``except`` clause of :meth:`call` and of the decorator, so a handler's
        own exception is chained to ``exc``.)"""
        why = self.reason(exc)
        if why is None:
            self._unhandled += 1
            raise exc
        self._taken(exc, why)
        return await self._answer(exc)

    async def call(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T | R:
        """Run ``fn(*args, **kwargs)``; answer with the fallback if it fails as configured.

        Raises:
            BaseException: what ``fn`` raised when the fallback does not answer it, or what the
                handler raised.
        """
        if not callable(fn):
            raise not_callable(fn)
        degradation = self._degradation
        if degradation is not None and degradation.level >= self._shed_at:
            return await self._shed(degradation.level)
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            return await self._recover(exc)
        except BaseException:
            self._cancelled += 1
            raise
        self._ok += 1
        return result

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T | R]]:
        """Decorate an ``async def`` so every call is answered by the fallback when it fails (the
        success path runs in the wrapper's own frame, as ``call`` would run it).

        Raises:
            TypeError: if ``fn`` is a plain (synchronous) function.
        """
        check_decorated(fn, type(self).__name__)
        fallback = self
        recover = self._recover

        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T | R:
            degradation = fallback._degradation
            if degradation is not None and degradation.level >= fallback._shed_at:
                return await fallback._shed(degradation.level)
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                return await recover(exc)
            except BaseException:
                fallback._cancelled += 1
                raise
            fallback._ok += 1
            return result

        return wrapper
