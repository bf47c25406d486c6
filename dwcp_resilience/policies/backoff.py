"""Backoff schedules: how long a retry waits after a failed attempt.

Every schedule is a small immutable object with one pure method,
``delay(attempt, rng=None, prev=None) -> float``:

- ``attempt`` is the number of the attempt that just failed (1 for the wait after the first
  attempt); values below 1 count as 1.
- ``rng`` is the jitter source: anything with a ``random() -> float in [0, 1)`` method, such as a
  seeded :class:`random.Random` (deterministic tests); ``None`` uses the module-level generator.
- ``prev`` is the previous delay, used only by decorrelated jitter (``None`` on the first retry).

The result is always a finite float in ``[0, max_delay]``: the schedule is capped before jitter, and
no jitter mode can push it past ``max_delay`` (the Go package added 0-10% *after* the cap). No input
raises: attempt 10**6 or 10**100, multiplier 0 or 1e300 all give a finite delay (powers are never
computed past the attempt at which the cap is reached, so no ``OverflowError``).

The schedules (``d(k)`` before jitter, capped at ``max_delay``):

- :class:`ExponentialBackoff`: ``initial_delay * multiplier ** (k - 1)`` (the Go ``RetryPolicy``;
  multiplier 0 gives ``initial_delay`` then 0).
- :class:`LinearBackoff`: ``initial_delay + (k - 1) * increment``.
- :class:`FibonacciBackoff`: ``initial_delay * fib(k)`` with fib = 1, 1, 2, 3, 5, ...
- :class:`ConstantBackoff`: ``delay``.

Jitter modes (``jitter=``), with ``r`` uniform in ``[0, 1)``:

- ``"none"`` (or ``False``): ``d``.
- ``"full"`` (or ``True``, the default of :class:`ExponentialBackoff`): ``d * r``, AWS's "full
  jitter". It spreads a crowd of clients that failed together over the whole interval.
- ``"equal"``: ``d / 2 + d / 2 * r``: at least half the schedule, never more.
- ``"decorrelated"``: ``min(max_delay, lo + (hi - lo) * r)`` with ``lo = initial_delay`` and
  ``hi = 3 * prev`` (AWS's "decorrelated jitter"; ``prev`` defaults to ``initial_delay``). It ignores
  the schedule's shape and grows from the previous delay.
- ``"proportional"``: ``min(max_delay, d * (1 + 0.1 * r))``, the Go package's additive 0-10%,
  now capped.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction
from typing import Literal, Protocol

from ..core.validate import check_number

__all__ = (
    "Backoff",
    "ConstantBackoff",
    "ExponentialBackoff",
    "FibonacciBackoff",
    "Jitter",
    "LinearBackoff",
    "RandomSource",
)

Jitter = Literal["none", "full", "equal", "decorrelated", "proportional"]
_JITTERS: dict[object, int] = {
    False: 0,
    "none": 0,
    True: 1,
    "full": 1,
    "equal": 2,
    "decorrelated": 3,
    "proportional": 4,
}
_JITTER_NAMES = ("none", "full", "equal", "decorrelated", "proportional")
_default_random = random.random
_MAX_EXP = 10**300


class RandomSource(Protocol):
    """A source of uniform floats in ``[0, 1)`` (``random.Random`` qualifies)."""

    def random(self) -> float: ...


def _jitter_mode(jitter: object) -> int:
    # bool is checked by identity: ``1 == True`` must not select a mode by accident.
    if jitter is True or jitter is False:
        return _JITTERS[jitter]
    if isinstance(jitter, str) and jitter in _JITTERS:
        return _JITTERS[jitter]
    raise ValueError(
        f"jitter must be a bool or one of {', '.join(map(repr, _JITTER_NAMES))}, got {jitter!r}"
    )


class Backoff:
    """Base of the schedules: validation, the cap and the jitter modes.

    Subclasses implement :meth:`_schedule` (the capped, jitter-free delay of an attempt >= 1).
    """

    __slots__ = ("_initial", "_jitter", "_max")

    def __init__(self, initial_delay: float, max_delay: float, jitter: bool | Jitter) -> None:
        self._initial = check_number(initial_delay, "initial_delay", min_value=0.0)
        self._max = check_number(max_delay, "max_delay", min_value=0.0)
        if self._initial > self._max:
            raise ValueError(
                f"initial_delay ({self._initial!r}) must not exceed max_delay ({self._max!r})"
            )
        self._jitter = _jitter_mode(jitter)

    @property
    def initial_delay(self) -> float:
        return self._initial

    @property
    def max_delay(self) -> float:
        """No delay is ever larger than this."""
        return self._max

    @property
    def jitter(self) -> Jitter:
        name: Jitter = _JITTER_NAMES[self._jitter]  # type: ignore[assignment]
        return name

    def _schedule(self, attempt: int) -> float:
        raise NotImplementedError

    def delay(
        self, attempt: int, rng: RandomSource | None = None, prev: float | None = None
    ) -> float:
        """The wait after failed attempt number ``attempt``: finite, in ``[0, max_delay]``."""
        attempt = max(attempt, 1)
        mode = self._jitter
        if mode == 0:
            return self._schedule(attempt)
        r = _default_random() if rng is None else rng.random()
        # A misbehaving source must not break the bounds: clamp r into [0, 1].
        if not 0.0 <= r <= 1.0:
            r = 0.0 if not r >= 0.0 else 1.0  # NaN and negatives -> 0, above 1 -> 1
        cap = self._max
        if mode == 3:  # decorrelated
            lo = self._initial
            hi = 3.0 * (lo if prev is None or not prev >= lo else min(prev, cap))
            value = lo + (hi - lo) * r
        else:
            d = self._schedule(attempt)
            if mode == 1:
                value = d * r
            elif mode == 2:
                half = d / 2.0
                value = half + half * r
            else:
                value = d * (1.0 + 0.1 * r)
        return value if value <= cap else cap

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, s) == getattr(other, s) for s in _all_slots(type(self)))

    def __hash__(self) -> int:
        return hash((type(self), *(getattr(self, s) for s in _all_slots(type(self)))))


def _all_slots(cls: type) -> tuple[str, ...]:
    names: list[str] = []
    for klass in reversed(cls.__mro__):
        names.extend(getattr(klass, "__slots__", ()))
    return tuple(names)


def _grow(initial: float, multiplier: float, exp: int) -> float:
    """``initial * multiplier ** exp`` that never raises (log space when the power overflows)."""
    if initial == 0.0 or multiplier == 0.0:
        return initial if exp == 0 else 0.0
    try:
        return initial * multiplier**exp
    except OverflowError:  # e.g. 5e-324 * 1.0000001 ** 7e9: the power alone is out of range
        return math.exp(min(math.log(initial) + exp * math.log(multiplier), 709.0))


class ExponentialBackoff(Backoff):
    """``initial_delay * multiplier ** (attempt - 1)``, capped at ``max_delay``, then jittered.

    Args:
        initial_delay: the first delay (seconds, >= 0).
        max_delay: the cap (seconds, finite, >= initial_delay).
        multiplier: the growth factor (finite, >= 0; 1 is constant, 0 gives one initial delay and
            then 0).
        jitter: a jitter mode (module docstring); ``True`` is ``"full"``.

    Raises:
        ValueError: NaN, negative or infinite values, ``initial_delay > max_delay``, or an unknown
            jitter mode.
        TypeError: a value that is not a number (``True`` included).
    """

    __slots__ = ("_cap_exp", "_multiplier")

    def __init__(
        self,
        initial_delay: float = 0.1,
        max_delay: float = 10.0,
        multiplier: float = 2.0,
        jitter: bool | Jitter = True,
    ) -> None:
        super().__init__(initial_delay, max_delay, jitter)
        self._multiplier = check_number(multiplier, "multiplier", min_value=0.0)
        # The first exponent whose delay reaches the cap: past it no power is computed, so a
        # huge attempt number can never overflow.
        self._cap_exp = -1  # multiplier <= 1 (or initial 0): the delay never grows
        m, initial, cap = self._multiplier, self._initial, self._max
        if m > 1.0 and initial > 0.0:
            k = max(0, math.ceil((math.log(cap) - math.log(initial)) / math.log(m)))
            while k > 0 and _grow(initial, m, k - 1) >= cap:
                k -= 1
            while _grow(initial, m, k) < cap:
                k += 1
            self._cap_exp = k

    @property
    def multiplier(self) -> float:
        return self._multiplier

    def _schedule(self, attempt: int) -> float:
        exp = attempt - 1
        cap_exp = self._cap_exp
        if cap_exp >= 0 and exp >= cap_exp:
            return self._max
        m = self._multiplier
        if exp == 0 or m == 1.0:
            return self._initial
        # m > 1 below the cap exponent (finite), or m < 1: decays and underflows to 0.0 (the
        # exponent is bounded so an absurd attempt number never overflows the int->float step).
        value = _grow(self._initial, m, min(exp, _MAX_EXP))
        return value if value <= self._max else self._max

    def __repr__(self) -> str:
        return (
            f"ExponentialBackoff(initial_delay={self._initial!r}, max_delay={self._max!r}, "
            f"multiplier={self._multiplier!r}, jitter={self.jitter!r})"
        )


class LinearBackoff(Backoff):
    """``initial_delay + (attempt - 1) * increment``, capped at ``max_delay``, then jittered.

    Args:
        initial_delay: the first delay (seconds, >= 0).
        increment: added per attempt (seconds, finite, >= 0).
        max_delay: the cap (seconds, finite, >= initial_delay).
        jitter: a jitter mode (module docstring); default none, as in the Go constructor's usual use.

    Raises:
        ValueError, TypeError: as :class:`ExponentialBackoff`.
    """

    __slots__ = ("_increment",)

    def __init__(
        self,
        initial_delay: float = 0.1,
        increment: float = 0.1,
        max_delay: float = 10.0,
        jitter: bool | Jitter = False,
    ) -> None:
        super().__init__(initial_delay, max_delay, jitter)
        self._increment = check_number(increment, "increment", min_value=0.0)

    @property
    def increment(self) -> float:
        return self._increment

    def _schedule(self, attempt: int) -> float:
        inc = self._increment
        if inc == 0.0:
            return self._initial
        room = self._max - self._initial
        steps = attempt - 1
        # Compare in steps first so a huge attempt never becomes a huge float product.
        if steps > room / inc:
            return self._max
        try:
            value = self._initial + steps * inc
        except OverflowError:  # an absurd attempt number beyond float range: multiply exactly
            value = self._initial + float(min(Fraction(steps) * Fraction(inc), Fraction(room)))
        return value if value <= self._max else self._max

    def __repr__(self) -> str:
        return (
            f"LinearBackoff(initial_delay={self._initial!r}, increment={self._increment!r}, "
            f"max_delay={self._max!r}, jitter={self.jitter!r})"
        )


class FibonacciBackoff(Backoff):
    """``initial_delay * fib(attempt)`` (1, 1, 2, 3, 5, ...), capped at ``max_delay``, jittered.

    The capped delays are precomputed up to the cap (at most a few thousand entries).

    Args:
        initial_delay: the unit delay (seconds, >= 0).
        max_delay: the cap (seconds, finite, >= initial_delay).
        jitter: a jitter mode (module docstring).

    Raises:
        ValueError, TypeError: as :class:`ExponentialBackoff`.
    """

    __slots__ = ("_table",)

    def __init__(
        self, initial_delay: float = 0.1, max_delay: float = 10.0, jitter: bool | Jitter = False
    ) -> None:
        super().__init__(initial_delay, max_delay, jitter)
        table: list[float] = []
        a, b = 1.0, 1.0  # floats: past 1e308 they become inf (>= the cap) instead of raising
        if self._initial > 0.0:
            while True:
                value = self._initial * a
                if value >= self._max:
                    break
                table.append(value)
                a, b = b, a + b
        self._table = tuple(table)

    def _schedule(self, attempt: int) -> float:
        if self._initial == 0.0:
            return 0.0
        table = self._table
        return table[attempt - 1] if attempt <= len(table) else self._max

    def __repr__(self) -> str:
        return (
            f"FibonacciBackoff(initial_delay={self._initial!r}, max_delay={self._max!r}, "
            f"jitter={self.jitter!r})"
        )


class ConstantBackoff(Backoff):
    """The same ``delay`` after every attempt (jitter optional; ``max_delay`` is ``delay``).

    Args:
        delay: seconds (finite, >= 0).
        jitter: a jitter mode (module docstring).

    Raises:
        ValueError, TypeError: as :class:`ExponentialBackoff`.
    """

    __slots__ = ()

    def __init__(self, delay: float = 1.0, jitter: bool | Jitter = False) -> None:
        super().__init__(delay, delay, jitter)

    def _schedule(self, attempt: int) -> float:
        return self._initial

    def __repr__(self) -> str:
        return f"ConstantBackoff(delay={self._initial!r}, jitter={self.jitter!r})"
