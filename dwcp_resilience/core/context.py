"""``OperationContext``: what an operation is called, when it must be done, and its labels.

A context travels with the call through a :class:`contextvars.ContextVar`, so every policy below the
point where it was activated sees it without being passed it. Its ``deadline`` is absolute, on the
loop clock (:func:`~dwcp_resilience.core.clock.loop_time`).

Alongside it this module keeps the *effective deadline* of the running code: the earliest of every
deadline that encloses it (activated contexts and running :class:`~dwcp_resilience.Timeout` scopes).
Inner timeouts clamp themselves to it, and retries refuse to start an attempt past it, so nothing
nested ever outlives an outer deadline.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import MappingProxyType

from .clock import Clock, loop_time

__all__ = ("OperationContext", "current_context", "current_deadline")

_INF = math.inf
# The two context variables. Not in __all__: a declared internal interface. Users read them through
# current_context() and current_deadline(); the package's own frames (the timeout, the manager's
# stack and lane) set and reset them directly, since a function per set and reset would cost on
# every call.
context_var: ContextVar[OperationContext | None] = ContextVar(
    "dwcp_operation_context", default=None
)
deadline_var: ContextVar[float] = ContextVar("dwcp_effective_deadline", default=_INF)

#: Read the effective deadline (``inf`` when nothing encloses the caller). Bound method: no frame.
current_deadline = deadline_var.get


def current_context() -> OperationContext | None:
    """Return the active :class:`OperationContext`, or ``None``."""
    return context_var.get()


@dataclass(frozen=True, slots=True)
class OperationContext:
    """An operation's name, absolute deadline (loop clock, or ``None``) and labels.

    Args:
        operation: the operation name (the key under which a manager finds its policies).
        deadline: absolute loop-clock time by which the whole operation must be done, or ``None``.
        labels: free-form string labels (peer, tenant, ...), copied and frozen.

    Raises:
        TypeError: if ``operation`` is not a string or a label is not ``str -> str``.
        ValueError: if ``operation`` is empty or ``deadline`` is NaN.
    """

    operation: str
    deadline: float | None = field(default=None, kw_only=True)
    labels: Mapping[str, str] = field(default_factory=dict, kw_only=True)

    def __post_init__(self) -> None:
        if not isinstance(self.operation, str):
            raise TypeError("operation must be a str")
        if not self.operation:
            raise ValueError("operation must not be empty")
        if self.deadline is not None:
            if isinstance(self.deadline, bool) or not isinstance(self.deadline, int | float):
                raise TypeError("deadline must be a float (absolute loop time) or None")
            if math.isnan(self.deadline):
                raise ValueError("deadline must not be NaN")
            object.__setattr__(self, "deadline", float(self.deadline))
        labels = dict(self.labels or {})
        for key, value in labels.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError("labels must map str to str")
        object.__setattr__(self, "labels", MappingProxyType(labels))

    @classmethod
    def with_timeout(
        cls,
        operation: str,
        seconds: float,
        *,
        labels: Mapping[str, str] | None = None,
        clock: Clock = loop_time,
    ) -> OperationContext:
        """Build a context whose deadline is ``seconds`` from now on ``clock``.

        Raises:
            ValueError: if ``seconds`` is NaN.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise TypeError("seconds must be a number")
        if math.isnan(seconds):
            raise ValueError("seconds must not be NaN")
        return cls(operation, deadline=clock() + seconds, labels=labels or {})

    def remaining(self, now: float | None = None) -> float:
        """Seconds left before the deadline (never negative; ``inf`` without a deadline)."""
        if self.deadline is None:
            return _INF
        if now is None:
            now = loop_time()
        return max(0.0, self.deadline - now)

    def expired(self, now: float | None = None) -> bool:
        """True when the deadline has passed."""
        return self.deadline is not None and self.remaining(now) <= 0.0

    @contextmanager
    def activate(self) -> Iterator[OperationContext]:
        """Make this the current context (and clamp the effective deadline) inside the block."""
        token = context_var.set(self)
        outer = deadline_var.get()
        deadline_token = None
        if self.deadline is not None and self.deadline < outer:
            deadline_token = deadline_var.set(self.deadline)
        try:
            yield self
        finally:
            if deadline_token is not None:
                deadline_var.reset(deadline_token)
            context_var.reset(token)
