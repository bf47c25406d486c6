"""Graceful degradation: levels per component, the overall level, and what runs at each level.

Kept from the Go package (``go-original.md`` section 1.8):

- four levels, ``NORMAL=0 < DEGRADED=1 < SEVERELY_DEGRADED=2 < EMERGENCY=3``; the overall level is the
  **maximum** over components; an unknown component is ``NORMAL``;
- :meth:`DegradationManager.execute` ``(normal, degraded=None, emergency=None)``: at ``NORMAL`` **and
  at** ``DEGRADED`` it runs ``normal``; at ``SEVERELY_DEGRADED`` it runs ``degraded``, or ``normal``
  when there is none; at ``EMERGENCY`` it runs ``emergency``, or raises :class:`EmergencyMode`;
- :meth:`DegradationManager.execute_with_fallback` runs the function registered for the current
  level, else the nearest one registered for a **more severe** level (never a less severe one: an
  emergency must not run the normal path), else raises :class:`EmergencyMode`. (Go's code walks this
  way too; its comment said "lower".)
- Go's static rule :func:`level_for_ratio`: a value above 1x, 1.5x, 2x its threshold gives
  ``DEGRADED``, ``SEVERELY_DEGRADED``, ``EMERGENCY``.

Added:

- Automatic degradation with hysteresis: :meth:`DegradationManager.observe` moves a component *up*
  as soon as its worst ratio (error rate or latency over its threshold) crosses a multiplier, but
  *down* only once the ratio is below ``recover_ratio`` times the multiplier, and (optionally) after
  the level was held ``min_hold`` seconds. So a value hovering at a threshold does not flap.
- Levels driven by other primitives through their listeners: :meth:`~DegradationManager.watch_error_budget`,
  :meth:`~DegradationManager.watch_latency_budget`, :meth:`~DegradationManager.watch_health` and
  :meth:`~DegradationManager.watch_breaker`.
- Level-change listeners are called inline, in order (Go: one goroutine each, order unspecified).

Feature flags and load shedding live in :mod:`.shedding`.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from ..core.clock import Clock, loop_time
from ..core.errors import ResilienceError
from ..core.events import Event, Listeners
from ..core.validate import check_name, check_number
from .error_budget import ErrorBudget, ErrorBudgetEvent, ErrorBudgetExhausted
from .health import HealthChanged, HealthMonitor
from .latency_budget import LatencyBudget, LatencyBudgetEvent, LatencyBudgetExhausted

__all__ = (
    "DegradationLevel",
    "DegradationManager",
    "DegradationStatistics",
    "DegradationThresholds",
    "EmergencyMode",
    "LevelChanged",
    "level_for_ratio",
)

T = TypeVar("T")


class DegradationLevel(enum.IntEnum):
    """How degraded a component (or the system) is; the values are the Go gauge values."""

    NORMAL = 0
    DEGRADED = 1
    SEVERELY_DEGRADED = 2
    EMERGENCY = 3

    def __str__(self) -> str:
        return self.name.lower()


class EmergencyMode(ResilienceError):
    """The system is in emergency mode and no emergency function was given."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"{self.name!r}: system in emergency mode"


@dataclass(frozen=True, slots=True)
class LevelChanged(Event):
    """The overall level changed (``component`` is the component whose change caused it)."""

    old: DegradationLevel
    new: DegradationLevel
    component: str


_LEVELS = (
    DegradationLevel.DEGRADED,
    DegradationLevel.SEVERELY_DEGRADED,
    DegradationLevel.EMERGENCY,
)


def level_for_ratio(
    ratio: float, multipliers: tuple[float, float, float] = (1.0, 1.5, 2.0)
) -> DegradationLevel:
    """Go's ``ShouldDegrade``: the highest level whose multiplier ``ratio`` strictly exceeds."""
    level = DegradationLevel.NORMAL
    for candidate, multiplier in zip(_LEVELS, multipliers, strict=True):
        if ratio > multiplier:
            level = candidate
    return level


@dataclass(frozen=True, slots=True)
class DegradationThresholds:
    """Thresholds for automatic degradation (``None`` leaves a signal out).

    Args:
        error_rate: the error rate (0-1) that means ``DEGRADED`` when exceeded.
        latency: the latency (seconds) that means ``DEGRADED`` when exceeded.
        multipliers: the ratios to the thresholds for the three levels (Go: 1, 1.5, 2).
        recover_ratio: a level is left only when the ratio falls below ``recover_ratio`` times its
            multiplier (in (0, 1]; 1.0 means no hysteresis).
        min_hold: seconds a component stays at a level before it may step *down*.
    """

    error_rate: float | None = None
    latency: float | None = None
    multipliers: tuple[float, float, float] = (1.0, 1.5, 2.0)
    recover_ratio: float = 0.8
    min_hold: float = 0.0

    def __post_init__(self) -> None:
        if self.error_rate is None and self.latency is None:
            raise ValueError("give at least one of error_rate and latency")
        for field in ("error_rate", "latency"):
            value = getattr(self, field)
            if value is not None:
                check_number(value, field, min_value=0.0, allow_zero=False)
        low = 0.0
        for m in self.multipliers:
            if check_number(m, "multipliers", min_value=0.0, allow_zero=False) <= low:
                raise ValueError("multipliers must be positive and increasing")
            low = m
        check_number(
            self.recover_ratio, "recover_ratio", min_value=0.0, allow_zero=False, max_value=1.0
        )
        check_number(self.min_hold, "min_hold", min_value=0.0)

    def ratio(self, error_rate: float, latency: float) -> float:
        """The worst of ``error_rate / self.error_rate`` and ``latency / self.latency``."""
        worst = 0.0
        if self.error_rate is not None:
            worst = max(worst, error_rate / self.error_rate)
        if self.latency is not None:
            worst = max(worst, latency / self.latency)
        return worst

    def next_level(self, current: DegradationLevel, ratio: float, held: float) -> DegradationLevel:
        """The pure hysteresis rule: up at once, down only past ``recover_ratio`` and ``min_hold``."""
        up = level_for_ratio(ratio, self.multipliers)
        if up > current:
            return up
        scaled = (self.multipliers[0] * self.recover_ratio, self.multipliers[1] * self.recover_ratio,
                  self.multipliers[2] * self.recover_ratio)  # fmt: skip
        down = level_for_ratio(ratio, scaled)
        if down < current and held >= self.min_hold:
            return down
        return current


@dataclass(frozen=True, slots=True)
class DegradationStatistics:
    """A snapshot of a :class:`DegradationManager`.

    :ivar time_in_degraded: seconds spent with the overall level above ``NORMAL`` (up to now).
    :ivar time_in_current_level: seconds since the overall level last changed, 0.0 before the
        first change (Go added ``time_in_degraded`` to it).
    """

    name: str
    level: DegradationLevel
    component_levels: Mapping[str, DegradationLevel]
    level_changes: int
    time_in_degraded: float
    time_in_current_level: float
    last_level_change: float | None


_BREAKER_LEVELS = {
    0: DegradationLevel.NORMAL,
    1: DegradationLevel.DEGRADED,
    2: DegradationLevel.SEVERELY_DEGRADED,
}


class DegradationManager:
    """Component levels, the overall level, and level-dependent execution.

    Args:
        name: the manager's name (events, metrics, :class:`EmergencyMode`).
        clock: the monotonic clock (default: the running loop's).
        listeners: called inline with every :class:`LevelChanged`.
    """

    def __init__(
        self,
        name: str,
        *,
        clock: Clock | None = None,
        listeners: Iterable[Callable[[LevelChanged], None]] = (),
    ) -> None:
        self.name = check_name(name)
        self._clock = loop_time if clock is None else clock
        self._listeners: Listeners[LevelChanged] = Listeners(listeners)
        self._levels: dict[str, DegradationLevel] = {}
        self._since: dict[str, float] = {}
        self._thresholds: dict[str, DegradationThresholds] = {}
        self._level = DegradationLevel.NORMAL
        self._changes = 0
        self._last_change: float | None = None
        self._degraded_time = 0.0

    def add_listener(self, listener: Callable[[LevelChanged], None]) -> None:
        """Call ``listener`` inline on every change of the overall level."""
        self._listeners.add(listener)

    def remove_listener(self, listener: Callable[[LevelChanged], None]) -> None:
        """Unregister a listener (``ValueError`` if it was not registered)."""
        self._listeners.remove(listener)

    # --- levels --------------------------------------------------------------------------------

    @property
    def level(self) -> DegradationLevel:
        """The overall level: the maximum over components (``NORMAL`` with none)."""
        return self._level

    def component_level(self, component: str) -> DegradationLevel:
        """A component's level (``NORMAL`` when unknown)."""
        return self._levels.get(component, DegradationLevel.NORMAL)

    def component_levels(self) -> dict[str, DegradationLevel]:
        """Every known component's level."""
        return dict(self._levels)

    def set_component_level(self, component: str, level: DegradationLevel | int) -> None:
        """Set a component's level and update the overall level (listeners fire if it changes).

        Raises:
            ValueError: if ``level`` is not a level.
        """
        check_name(component, "component")
        new = DegradationLevel(level)
        now = self._clock()
        if self._levels.get(component, DegradationLevel.NORMAL) != new:
            self._since[component] = now
        self._levels[component] = new
        overall = max(self._levels.values(), default=DegradationLevel.NORMAL)
        old = self._level
        if overall != old:
            if old > DegradationLevel.NORMAL and self._last_change is not None:
                self._degraded_time += now - self._last_change
            self._level = overall
            self._changes += 1
            self._last_change = now
            if self._listeners:
                self._listeners.emit(LevelChanged(self.name, now, old, overall, component))

    def recover(self, component: str) -> None:
        """Set a component back to ``NORMAL``."""
        self.set_component_level(component, DegradationLevel.NORMAL)

    def recover_all(self) -> None:
        """Set every component back to ``NORMAL``."""
        for component in list(self._levels):
            self.recover(component)

    # --- automatic degradation ------------------------------------------------------------------

    def set_thresholds(self, component: str, thresholds: DegradationThresholds) -> None:
        """Configure automatic degradation of ``component`` (see :meth:`observe`)."""
        if not isinstance(thresholds, DegradationThresholds):
            raise TypeError("thresholds must be a DegradationThresholds")
        self._thresholds[check_name(component, "component")] = thresholds

    def observe(
        self, component: str, *, error_rate: float = 0.0, latency: float = 0.0
    ) -> DegradationLevel:
        """Feed a component's current error rate and latency; apply the hysteresis rule.

        Raises:
            KeyError: if no thresholds were set for ``component``.
        """
        thresholds = self._thresholds[component]
        current = self.component_level(component)
        held = self._clock() - self._since.get(component, -float("inf"))
        new = thresholds.next_level(current, thresholds.ratio(error_rate, latency), held)
        if new != current:
            self.set_component_level(component, new)
        return new

    def should_degrade(
        self, error_rate: float, latency: float, error_threshold: float, latency_threshold: float
    ) -> DegradationLevel:
        """Go's stateless rule (no hysteresis): the level the values call for."""
        ratio = max(error_rate / error_threshold, latency / latency_threshold)
        return level_for_ratio(ratio)

    # --- driven by other primitives ----------------------------------------------------------

    def watch_error_budget(
        self,
        component: str,
        budget: ErrorBudget,
        level: DegradationLevel = DegradationLevel.DEGRADED,
    ) -> None:
        """``component`` goes to ``level`` while ``budget`` is exhausted, back to NORMAL after."""

        def listener(event: ErrorBudgetEvent) -> None:
            exhausted = isinstance(event, ErrorBudgetExhausted)
            self.set_component_level(component, level if exhausted else DegradationLevel.NORMAL)

        budget.add_listener(listener)

    def watch_latency_budget(
        self,
        component: str,
        budget: LatencyBudget,
        level: DegradationLevel = DegradationLevel.DEGRADED,
    ) -> None:
        """``component`` goes to ``level`` while ``budget`` is exhausted, back to NORMAL after."""

        def listener(event: LatencyBudgetEvent) -> None:
            exhausted = isinstance(event, LatencyBudgetExhausted)
            self.set_component_level(component, level if exhausted else DegradationLevel.NORMAL)

        budget.add_listener(listener)

    def watch_health(
        self,
        component: str,
        monitor: HealthMonitor,
        level: DegradationLevel = DegradationLevel.SEVERELY_DEGRADED,
    ) -> None:
        """``component`` goes to ``level`` while ``monitor`` as a whole is unhealthy (read on each
        of its events, so a check's first failure counts even though the monitor, with that check
        still unknown, was never healthy)."""

        def listener(event: HealthChanged) -> None:
            healthy = monitor.healthy
            self.set_component_level(component, DegradationLevel.NORMAL if healthy else level)

        monitor.add_listener(listener)

    def set_breaker_state(self, component: str, state: int) -> None:
        """Map a breaker state (0 closed, 1 half-open, 2 open) to NORMAL, DEGRADED, SEVERELY_DEGRADED."""
        self.set_component_level(component, _BREAKER_LEVELS[int(state)])

    def watch_breaker(self, component: str, breaker: Any) -> None:
        """Follow a circuit breaker: on each of its state changes, map ``breaker.state`` as in
        :meth:`set_breaker_state`. Needs ``breaker.add_listener`` and ``breaker.state``."""
        add = getattr(breaker, "add_listener", None)
        if not callable(add):
            raise TypeError("breaker must have add_listener(listener) and a state property")
        try:
            from ..policies.breaker import BreakerStateChanged  # noqa: PLC0415 - optional seam

            kinds: tuple[type, ...] = (BreakerStateChanged,)
        except ImportError:  # pragma: no cover - any breaker-like object: react to every event
            kinds = (object,)

        def listener(event: object) -> None:
            if isinstance(event, kinds):
                self.set_breaker_state(component, breaker.state)

        add(listener)
        self.set_breaker_state(component, breaker.state)

    # --- execution ---------------------------------------------------------------------------

    async def execute(
        self,
        normal: Callable[[], Awaitable[T]],
        degraded: Callable[[], Awaitable[T]] | None = None,
        emergency: Callable[[], Awaitable[T]] | None = None,
    ) -> T:
        """Run the function for the current level (Go semantics, see the module docstring).

        Raises:
            EmergencyMode: at ``EMERGENCY`` when ``emergency`` is ``None``.
        """
        level = self._level
        if level <= DegradationLevel.DEGRADED:
            return await normal()
        if level == DegradationLevel.SEVERELY_DEGRADED:
            return await (normal if degraded is None else degraded)()
        if emergency is None:
            raise EmergencyMode(self.name)
        return await emergency()

    async def execute_with_fallback(
        self, fallbacks: Mapping[DegradationLevel, Callable[[], Awaitable[T]]]
    ) -> T:
        """Run ``fallbacks[level]``, else the nearest more severe level's function.

        Raises:
            EmergencyMode: if no function is registered at or above the current level.
        """
        for level in range(self._level, DegradationLevel.EMERGENCY + 1):
            fn = fallbacks.get(DegradationLevel(level))
            if fn is not None:
                return await fn()
        raise EmergencyMode(self.name)

    # --- reads -------------------------------------------------------------------------------

    def statistics(self) -> DegradationStatistics:
        """A snapshot for metrics."""
        now = self._clock()
        current = 0.0 if self._last_change is None else now - self._last_change
        degraded = self._degraded_time + (current if self._level > DegradationLevel.NORMAL else 0.0)
        return DegradationStatistics(
            self.name, self._level, dict(self._levels), self._changes, degraded, current,
            self._last_change,
        )  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"<DegradationManager {self.name!r} level={self._level} components={len(self._levels)}>"
        )
