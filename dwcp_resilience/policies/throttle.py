"""``AdaptiveThrottle``: client-side throttling (Google SRE book, "Handling Overload").

When the backend refuses much of what it is sent (overloaded, out of quota), sending more only costs
it the work of refusing. The throttle counts, over a sliding ``window`` (2 minutes by default, as in
the book), the requests the application attempted and those the backend accepted, and refuses a new
call locally, before it is sent, with probability ``max(0, (requests - k * accepts) /
(requests + 1))`` (see :mod:`~dwcp_resilience.policies.throttle_core`). A local refusal raises
:class:`~dwcp_resilience.Throttled`; it counts as a request, so the backend is sent about ``k``
times what it accepts. A call let through counts once its outcome is known (one still in flight
counts as nothing yet, so a burst into an empty window is not refused because of itself). While the
backend accepts everything, nothing is refused and no random number is drawn.

**What counts as accepted** is the outcome under ``failure=`` / ``failure_result=`` (the shared
classification, :mod:`~dwcp_resilience.core.outcome`): a success is an accept; a failure (by default
any exception) is a request the backend did not accept; a neutral outcome counts as no request at all:
a cancelled call, an exception ``ignore=`` names, and our own rejections from an inner policy (a
:class:`~dwcp_resilience.ConcurrencyLimited` or :class:`~dwcp_resilience.RateLimited` raised inside the
throttle never reached the backend, so it tells nothing of it, and counting it would throttle twice
for the same local limit). Pass ``failure=`` the backend's "overloaded" errors (a 503, a 429, a
timeout) so that ordinary answers such as "not found" count as accepts.

Idioms: ``await throttle.call(fn, ...)``, ``@throttle``, ``async with throttle:``, and
``permit = throttle.acquire()`` (no await: the throttle never waits) then ``permit.record(accepted)``
or ``permit.release()`` (neutral), for code that cannot be wrapped.

Cost per call: one clock read and the core's ``try_admit`` (a division and a comparison);
``record`` is up to four integer updates.
"""

from __future__ import annotations

import random as _random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import ParamSpec, TypedDict, TypeVar

from ..core.clock import Clock, loop_time
from ..core.errors import Throttled, not_callable
from ..core.events import Event, Listeners
from ..core.outcome import Classifier, ExceptionMatcher, Outcome, ResultPredicate
from ..core.policy import PolicyBase, TaskLocalStack
from ..core.validate import check_name
from .throttle_core import REFUSED, ThrottleCore

__all__ = (
    "AdaptiveThrottle",
    "ThrottleOptions",
    "ThrottlePermit",
    "ThrottleRejected",
    "ThrottleStatistics",
)

P = ParamSpec("P")
T = TypeVar("T")

_SUCCESS = Outcome.SUCCESS
_FAILURE = Outcome.FAILURE
_NEUTRAL = Outcome.NEUTRAL


class ThrottleOptions(TypedDict, total=False):
    """The keyword options of :class:`AdaptiveThrottle` but ``k``, ``window`` and ``clock``: what
    :meth:`~dwcp_resilience.ResilienceManager.register_adaptive_throttle` passes on."""

    buckets: int
    failure: ExceptionMatcher
    ignore: ExceptionMatcher | None
    failure_result: ResultPredicate | None
    rng: _random.Random | None
    listeners: Iterable[Callable[[Event], None]]


@dataclass(frozen=True, slots=True)
class ThrottleRejected(Event):
    """A call was refused locally with :class:`~dwcp_resilience.Throttled`, at ``probability``."""

    probability: float


@dataclass(frozen=True, slots=True)
class ThrottleStatistics:
    """A snapshot of an adaptive throttle.

    :ivar name: the throttle's name.
    :ivar k: the multiplier K.
    :ivar window: the window, in seconds.
    :ivar requests: requests in the window: local refusals, and the calls let through whose outcome
        was an accept or a refusal (calls in flight and neutral outcomes are not counted).
    :ivar accepts: accepts in the window.
    :ivar probability: the probability that a call made now is refused locally.
    :ivar admitted: calls let through (``adaptive_throttle_allowed_total``).
    :ivar rejected: calls refused locally (``adaptive_throttle_rejected_total``).
    :ivar accepted: admitted calls the backend accepted.
    :ivar refused: admitted calls the backend did not accept (failures).
    :ivar neutral: admitted calls that counted as no request (cancelled, ignored, inner rejections).
    """

    name: str
    k: float
    window: float
    requests: int
    accepts: int
    probability: float
    admitted: int
    rejected: int
    accepted: int
    refused: int
    neutral: int


class ThrottlePermit:
    """One admitted call, from :meth:`AdaptiveThrottle.acquire`: end it exactly once with
    :meth:`record` or :meth:`release` (later calls do nothing)."""

    __slots__ = ("_core", "_ticket")

    def __init__(self, core: ThrottleCore, ticket: int) -> None:
        self._core: ThrottleCore | None = core
        self._ticket = ticket

    def record(self, accepted: bool) -> None:
        """The backend accepted the call (``True``) or refused it (``False``)."""
        core, self._core = self._core, None
        if core is not None:
            core.record(self._ticket, _SUCCESS if accepted else _FAILURE)

    def release(self) -> None:
        """The call says nothing of the backend (cancelled, refused by us): no request."""
        core, self._core = self._core, None
        if core is not None:
            core.record(self._ticket, _NEUTRAL)


class AdaptiveThrottle(PolicyBase):
    """Refuse calls locally, at random, in proportion to what the backend has been refusing.

    Args:
        name: the name used in errors, events, statistics and metrics.
        k: the multiplier K (>= 1; the book's default 2): the backend is sent about ``k`` times what
            it accepts. Lower is more aggressive (1.1: one refused request per ten accepted).
        window: the sliding window in seconds (default 120, as in the book; finite, > 0).
        buckets: how many buckets the window is cut into (default 120; 1 to 10,000).
        failure: which exceptions mean "not accepted by the backend" (default: every exception):
            an exception type, a tuple of them, or a predicate; other exceptions are accepts.
        ignore: which exceptions count as no request at all (beyond cancellation and our own
            rejections, always neutral).
        failure_result: a predicate over results marking a refusal (an HTTP 503 response, say).
        clock: the monotonic clock of the window (default: the running loop's).
        rng: the random source of the local refusals (default: a fresh ``random.Random()``).
        listeners: callables receiving :class:`ThrottleRejected`.

    Raises:
        ValueError: ``k`` < 1, a window or bucket count out of range, NaN.
        TypeError: an argument of the wrong type (``True`` as a number included).
    """

    __slots__ = (
        "_classifier",
        "_clock",
        "_core",
        "_listeners",
        "_name",
        "_random",
        "_result_check",
        "_stack",
    )

    def __init__(
        self,
        name: str,
        *,
        k: float = 2.0,
        window: float = 120.0,
        buckets: int = 120,
        failure: ExceptionMatcher = Exception,
        ignore: ExceptionMatcher | None = None,
        failure_result: ResultPredicate | None = None,
        clock: Clock | None = None,
        rng: _random.Random | None = None,
        listeners: Iterable[Callable[[Event], None]] = (),
    ) -> None:
        self._name = check_name(name)
        self._core = ThrottleCore(k, window, buckets)
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a zero-argument callable, got {type(clock).__name__}")
        if rng is not None and not isinstance(rng, _random.Random):
            raise TypeError(f"rng must be a random.Random, got {type(rng).__name__}")
        self._clock: Clock = loop_time if clock is None else clock
        self._random = (_random.Random() if rng is None else rng).random
        self._classifier = Classifier(failure, ignore=ignore, failure_result=failure_result)
        self._result_check = self._classifier.has_result_predicate
        self._listeners: Listeners[Event] = Listeners(listeners)
        self._stack: TaskLocalStack[int] = TaskLocalStack(f"throttle-{name}")

    @property
    def name(self) -> str:
        return self._name

    @property
    def k(self) -> float:
        return self._core.k

    @property
    def window(self) -> float:
        return self._core.window

    def probability(self) -> float:
        """The probability that a call made now is refused locally."""
        return self._core.probability(self._clock())

    def reset(self) -> None:
        """Forget the window: nothing is refused until the backend refuses again (the lifetime
        counters stay). For tests, and after the backend was replaced."""
        self._core.clear()

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        """Register a listener for :class:`ThrottleRejected`."""
        self._listeners.add(listener)

    def remove_listener(self, listener: Callable[[Event], None]) -> None:
        """Unregister a listener (``ValueError`` if it was not registered)."""
        self._listeners.remove(listener)

    def __repr__(self) -> str:
        core = self._core
        return (
            f"<AdaptiveThrottle {self._name!r} k={core.k:g} window={core.window:g}s "
            f"requests={core.requests} accepts={core.accepts}>"
        )

    def statistics(self) -> ThrottleStatistics:
        """A snapshot of the window, the probability now and the lifetime counters."""
        core = self._core
        probability = core.probability(self._clock())
        return ThrottleStatistics(
            name=self._name,
            k=core.k,
            window=core.window,
            requests=core.requests,
            accepts=core.accepts,
            probability=probability,
            admitted=core.admitted,
            rejected=core.rejected,
            accepted=core.accepted,
            refused=core.refused,
            neutral=core.neutral,
        )

    # -- admission ---------------------------------------------------------------------------------

    def _admit(self) -> int:
        """Count the request and decide (raises :class:`~dwcp_resilience.Throttled`)."""
        now = self._clock()
        ticket = self._core.try_admit(now, self._random)
        if ticket == REFUSED:
            raise self._refused(now)
        return ticket

    def _refused(self, now: float) -> Throttled:
        if self._listeners:
            core = self._core
            requests = core.requests - 1  # the window the refusal was drawn against
            p = (requests - core.k * core.accepts) / (requests + 1)
            self._listeners.emit(ThrottleRejected(self._name, now, p))
        return Throttled(self._name, None)

    # -- the idioms --------------------------------------------------------------------------------

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` unless refused locally; its outcome feeds the window.

        Raises:
            Throttled: refused locally; ``fn`` is not run.
        """
        if not callable(fn):
            raise not_callable(fn)
        core = self._core
        ticket = core.try_admit(self._clock(), self._random)  # as _admit, without its frame
        if ticket == REFUSED:
            raise self._refused(self._clock())
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            core.record(ticket, self._classifier.of_exception(exc))
            raise
        if self._result_check:
            core.record(ticket, self._classifier.of_result(result))
        else:
            core.accept(ticket)
        return result

    def acquire(self) -> ThrottlePermit:
        """Admit one call now (it never waits) and return its permit; end it exactly once.

        Raises:
            Throttled: refused locally.
        """
        return ThrottlePermit(self._core, self._admit())

    async def __aenter__(self) -> AdaptiveThrottle:
        self._stack.push(self._admit())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        ticket = self._stack.pop()
        if exc is None:
            self._core.accept(ticket)
        else:
            self._core.record(ticket, self._classifier.of_exception(exc))
