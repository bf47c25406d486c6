"""Outcome classification: is a call's result a success, a failure, or neither?

Every primitive that counts outcomes (breaker windows, retry decisions, budgets) asks a
:class:`Classifier`. The rules, in order:

1. A ``BaseException`` that is not an ``Exception`` (cancellation on asyncio and trio,
   ``KeyboardInterrupt``, ``SystemExit``, ``GeneratorExit``, and exception groups that hold only such
   exceptions) is **neutral**: never a failure, never retried, never swallowed.
2. Our own rejections (:class:`~dwcp_resilience.Rejected`) and a
   :class:`~dwcp_resilience.NotCallable` (``call(fn(x))`` for ``call(fn, x)``) are **neutral**: the
   callee never ran.
3. An exception matched by ``ignore`` is **neutral**.
4. An exception matched by ``failure`` is a **failure**; any other exception is a **success** (the
   callee answered, for example "not found"), as resilience4j counts unrecorded exceptions.
5. A returned value is a **failure** when ``failure_result(value)`` is true, else a **success**.

A matcher is an exception type, a tuple of types, or a predicate ``(BaseException) -> bool``. Type
matchers look inside exception groups (a group matches when any leaf matches). A predicate that
raises is logged and the outcome counts as a failure, so a buggy predicate can never leak a probe
slot or a permit.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import Any, TypeAlias

from .errors import NotCallable, Rejected

__all__ = ("Classifier", "ExceptionMatcher", "Outcome", "ResultPredicate")

_log = logging.getLogger("dwcp_resilience")

ExceptionMatcher: TypeAlias = (
    type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
)
"""What may be passed as ``failure=``, ``ignore=`` or ``retry_on=``."""

ResultPredicate: TypeAlias = Callable[[Any], bool]


class Outcome(enum.IntEnum):
    """The three outcomes every primitive distinguishes."""

    SUCCESS = 0
    FAILURE = 1
    NEUTRAL = 2


def _types_predicate(types: tuple[type[BaseException], ...]) -> Callable[[BaseException], bool]:
    def matches(exc: BaseException) -> bool:
        if isinstance(exc, types):
            return True
        if isinstance(exc, BaseExceptionGroup):
            return exc.subgroup(types) is not None
        return False

    return matches


def as_exception_predicate(
    matcher: ExceptionMatcher, *, field: str = "failure"
) -> Callable[[BaseException], bool]:
    """Turn a matcher (a type, a tuple of types, or a predicate) into a predicate.

    Raises:
        TypeError: if ``matcher`` is none of these (the message names ``field``).
    """
    if isinstance(matcher, type):
        if not issubclass(matcher, BaseException):
            raise TypeError(f"{field} must be an exception type, a tuple of them, or a predicate")
        return _types_predicate((matcher,))
    if isinstance(matcher, tuple):
        if not matcher or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in matcher
        ):
            raise TypeError(f"{field} must be a non-empty tuple of exception types")
        return _types_predicate(matcher)
    if callable(matcher):
        return matcher
    raise TypeError(f"{field} must be an exception type, a tuple of them, or a predicate")


class Classifier:
    """Classify exceptions and results as :class:`Outcome` values (rules in the module docstring).

    Args:
        failure: which exceptions are failures (default: every ``Exception``).
        ignore: which exceptions are neutral (default: none beyond the built-in rules).
        failure_result: a predicate over returned values that marks a failure (default: none).
    """

    __slots__ = ("_failure", "_failure_result", "_ignore", "_plain_failure")

    def __init__(
        self,
        failure: ExceptionMatcher = Exception,
        *,
        ignore: ExceptionMatcher | None = None,
        failure_result: ResultPredicate | None = None,
    ) -> None:
        self._failure = as_exception_predicate(failure, field="failure")
        self._ignore = None if ignore is None else as_exception_predicate(ignore, field="ignore")
        if failure_result is not None and not callable(failure_result):
            raise TypeError("failure_result must be a predicate over results")
        self._failure_result = failure_result
        # The default (every Exception is a failure, nothing ignored) needs no predicate call.
        self._plain_failure = failure is Exception and ignore is None

    @property
    def has_result_predicate(self) -> bool:
        """True when results can be failures (callers may skip :meth:`of_result` otherwise)."""
        return self._failure_result is not None

    def of_exception(self, exc: BaseException) -> Outcome:
        """Classify a raised exception."""
        if not isinstance(exc, Exception) or isinstance(exc, (Rejected, NotCallable)):
            return Outcome.NEUTRAL
        if self._plain_failure:
            return Outcome.FAILURE
        try:
            if self._ignore is not None and self._ignore(exc):
                return Outcome.NEUTRAL
            return Outcome.FAILURE if self._failure(exc) else Outcome.SUCCESS
        except Exception:
            _log.exception("failure predicate raised on %r; counting a failure", type(exc))
            return Outcome.FAILURE

    def of_result(self, result: object) -> Outcome:
        """Classify a returned value."""
        predicate = self._failure_result
        if predicate is None:
            return Outcome.SUCCESS
        try:
            return Outcome.FAILURE if predicate(result) else Outcome.SUCCESS
        except Exception:
            _log.exception("result predicate raised; counting a failure")
            return Outcome.FAILURE
