"""Feature flags and load shedding: the Go package's two degradation helpers, without their races.

:class:`FeatureFlags` (Go ``FeatureFlagManager``):

- **Unknown flags raise** ``KeyError``: Go reported every unknown flag as *enabled*, so a misspelt
  flag silently switched a feature on. Declare flags first (constructor or :meth:`FeatureFlags.define`).
- A flag may be tied to a :class:`~dwcp_resilience.slo.degradation.DegradationManager`: with
  ``disable_at=level`` it reads as disabled whenever the manager's overall level is at least
  ``level``, and comes back by itself when the level drops.

:class:`LoadShedder` (Go ``LoadSheddingManager``):

- ``update_load(load)`` sets the shedding probability to ``min(max_probability, (load - max_load) /
  max_load)`` above ``max_load``, else 0 (Go's rule, with its 0.9 cap as the default);
- ``should_shed()`` draws from a seeded ``random.Random`` and counts; nothing awaits between reading
  and writing the counters, so concurrent tasks see exact counts (Go mutated them under a read lock).
- As a policy, ``call(fn)`` raises :class:`LoadShed` (a :class:`~dwcp_resilience.Rejected`) without
  running ``fn`` when the call is shed.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from ..core.errors import Rejected, not_callable
from ..core.policy import PolicyBase
from ..core.validate import check_name, check_number
from .degradation import DegradationLevel, DegradationManager

__all__ = ("FeatureFlags", "LoadShed", "LoadShedder", "LoadShedderStatistics")

P = ParamSpec("P")
T = TypeVar("T")


class FeatureFlags:
    """Named on/off switches, optionally switched off by a degradation level.

    Args:
        flags: initial flags, ``name -> enabled``.
        manager: the degradation manager that ``disable_at`` levels refer to.
    """

    __slots__ = ("_disable_at", "_flags", "_manager")

    def __init__(
        self, flags: Mapping[str, bool] | None = None, *, manager: DegradationManager | None = None
    ) -> None:
        self._flags: dict[str, bool] = {}
        self._disable_at: dict[str, DegradationLevel] = {}
        self._manager = manager
        for name, enabled in (flags or {}).items():
            self.define(name, enabled)

    def define(
        self, name: str, enabled: bool = True, *, disable_at: DegradationLevel | None = None
    ) -> None:
        """Declare (or redeclare) a flag.

        Raises:
            ValueError: if ``disable_at`` is given without a manager.
        """
        check_name(name)
        if not isinstance(enabled, bool):
            raise TypeError("enabled must be a bool")
        self._flags[name] = enabled
        if disable_at is None:
            self._disable_at.pop(name, None)
        else:
            if self._manager is None:
                raise ValueError("disable_at needs FeatureFlags(manager=...)")
            self._disable_at[name] = DegradationLevel(disable_at)

    def set_flag(self, name: str, enabled: bool) -> None:
        """Switch a declared flag; ``KeyError`` if unknown."""
        if name not in self._flags:
            raise KeyError(f"unknown feature flag {name!r}; define() it first")
        if not isinstance(enabled, bool):
            raise TypeError("enabled must be a bool")
        self._flags[name] = enabled

    def enable(self, name: str) -> None:
        """Switch a declared flag on."""
        self.set_flag(name, True)

    def disable(self, name: str) -> None:
        """Switch a declared flag off."""
        self.set_flag(name, False)

    def is_enabled(self, name: str) -> bool:
        """Whether a flag is on now (its switch, and its ``disable_at`` level if any).

        Raises:
            KeyError: for an unknown flag (Go said "enabled").
        """
        try:
            enabled = self._flags[name]
        except KeyError:
            raise KeyError(f"unknown feature flag {name!r}; define() it first") from None
        limit = self._disable_at.get(name)
        if enabled and limit is not None and self._manager is not None:
            return self._manager.level < limit
        return enabled

    def all_flags(self) -> dict[str, bool]:
        """Every flag's current effective value."""
        return {name: self.is_enabled(name) for name in self._flags}

    def __contains__(self, name: object) -> bool:
        return name in self._flags

    def __repr__(self) -> str:
        on = sum(self.all_flags().values())
        return f"<FeatureFlags {on}/{len(self._flags)} enabled>"


class LoadShed(Rejected):
    """The load shedder dropped the call (the callee was not run)."""

    def _describe(self) -> str:
        return "load shed"


@dataclass(frozen=True, slots=True)
class LoadShedderStatistics:
    """A snapshot of a :class:`LoadShedder`."""

    name: str
    enabled: bool
    max_load: float
    load: float
    probability: float
    checks: int
    shed: int


class LoadShedder(PolicyBase):
    """Drop a share of calls when the load is above ``max_load``.

    Args:
        name: the shedder's name (errors, metrics).
        max_load: the load above which calls are shed (> 0).
        max_probability: the cap on the shedding probability (default 0.9, as in Go).
        rng: a ``random.Random``, or an int seed, or ``None`` (unseeded).
        enabled: start enabled (Go started disabled).

    Raises:
        ValueError, TypeError: for bad configuration, naming the field.
    """

    __slots__ = (
        "_checks",
        "_load",
        "_p",
        "_random",
        "_shed",
        "enabled",
        "max_load",
        "max_probability",
        "name",
    )

    def __init__(
        self,
        name: str,
        *,
        max_load: float,
        max_probability: float = 0.9,
        rng: random.Random | int | None = None,
        enabled: bool = True,
    ) -> None:
        self.name = check_name(name)
        self.max_load = check_number(max_load, "max_load", min_value=0.0, allow_zero=False)
        self.max_probability = check_number(
            max_probability, "max_probability", min_value=0.0, max_value=1.0
        )
        if isinstance(rng, bool) or not (rng is None or isinstance(rng, int | random.Random)):
            raise TypeError("rng must be a random.Random, an int seed, or None")
        generator = rng if isinstance(rng, random.Random) else random.Random(rng)
        self._random = generator.random
        if not isinstance(enabled, bool):
            raise TypeError("enabled must be a bool")
        self.enabled = enabled
        self._load = 0.0
        self._p = 0.0
        self._checks = self._shed = 0

    def update_load(self, load: float) -> None:
        """Report the current load; recomputes the shedding probability."""
        load = check_number(load, "load", min_value=0.0, allow_inf=True)
        self._load = load
        over = (load - self.max_load) / self.max_load
        self._p = min(self.max_probability, over) if over > 0 else 0.0

    @property
    def probability(self) -> float:
        """The current shedding probability."""
        return self._p

    def should_shed(self) -> bool:
        """Decide for one call (and count it)."""
        self._checks += 1
        if not self.enabled or self._p <= 0.0:
            return False
        if self._random() < self._p:
            self._shed += 1
            return True
        return False

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` unless the call is shed.

        Raises:
            LoadShed: when the call is shed.
        """
        if not callable(fn):
            raise not_callable(fn)
        if self.should_shed():
            raise LoadShed(self.name)
        return await fn(*args, **kwargs)

    def statistics(self) -> LoadShedderStatistics:
        """A snapshot."""
        return LoadShedderStatistics(
            self.name, self.enabled, self.max_load, self._load, self._p, self._checks, self._shed
        )

    def __repr__(self) -> str:
        return f"<LoadShedder {self.name!r} load={self._load:g}/{self.max_load:g} p={self._p:.2f}>"
