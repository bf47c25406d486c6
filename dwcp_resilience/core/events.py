"""Events and listeners.

Events are frozen dataclasses (one class per kind, defined next to the primitive that emits it);
listeners are plain synchronous callables, called inline, in registration order, when the event
happens. A listener that raises is logged and the call's outcome does not change; the next listener
is still called. ``async def`` listeners are refused at registration: an un-awaited coroutine would
silently do nothing.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ("Event", "Listener", "Listeners")

_log = logging.getLogger("dwcp_resilience")


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every event: ``policy`` is the emitting policy's name, ``time`` its clock reading."""

    policy: str
    time: float


E = TypeVar("E", bound=Event)
E_contra = TypeVar("E_contra", bound=Event, contravariant=True)

Listener = Callable[[E], None]


def check_listener(listener: object) -> None:
    """Raise ``TypeError`` unless ``listener`` is a synchronous callable."""
    if not callable(listener):
        raise TypeError(f"listener must be callable, got {type(listener).__name__}")
    if inspect.iscoroutinefunction(listener) or inspect.iscoroutinefunction(
        getattr(listener, "__call__", None)  # noqa: B004 - we want the bound __call__ itself
    ):
        raise TypeError("listeners are called inline and must be plain functions, not async def")


class Listeners(Generic[E]):
    """An ordered set of listeners for one event type, safe to emit to from any task.

    ``bool(listeners)`` is false when empty, so hot paths build an event only when someone listens.
    """

    __slots__ = ("_items",)

    def __init__(self, listeners: Iterable[Callable[[E], None]] = ()) -> None:
        items = tuple(listeners)
        for listener in items:
            check_listener(listener)
        self._items: tuple[Callable[[E], None], ...] = items

    def add(self, listener: Callable[[E], None]) -> None:
        """Register a listener (called after those already registered)."""
        check_listener(listener)
        self._items = (*self._items, listener)

    def remove(self, listener: Callable[[E], None]) -> None:
        """Unregister a listener; ``ValueError`` if it was not registered."""
        items = list(self._items)
        items.remove(listener)
        self._items = tuple(items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def emit(self, event: E) -> None:
        """Call every listener with ``event``; log (never raise) what they raise."""
        for listener in self._items:
            try:
                listener(event)
            except Exception:
                _log.exception("listener %r raised on %s; ignored", listener, type(event).__name__)
