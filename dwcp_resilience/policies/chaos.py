"""``Chaos``: fault injection as a policy (Polly's Simmy, in the shape of the Go ``ChaosMonkey``).

Place it **innermost**, right around the operation (the default protection order ends
``... -> attempt timeout -> chaos -> op``): an injected exception then reaches the breaker, the retry
and the budgets exactly as a real one would, and injected latency runs under the attempt timeout.

Each call draws once from a seeded ``random.Random``: with probability ``rate`` it injects one fault,
picked among ``faults`` by weight; otherwise the operation runs untouched. Faults:

- :class:`ErrorFault`: raise an exception instead of running the operation (default
  :class:`ChaosInjected`, an ordinary ``Exception``: breakers count it as a failure);
- :class:`LatencyFault`: sleep ``min..max`` seconds (cancellable), then run the operation;
- :class:`ResultFault`: return a value instead of running the operation.

``enabled`` may be a bool or a zero-argument callable (Simmy's ``EnabledGenerator``), read on every
call; :meth:`Chaos.disable` takes effect at once: later calls are not touched, and injected
latencies that are sleeping end immediately (the operation then runs).

Fixed from Go (``go-original.md`` section 1.10): a single injection rate (Go's ``ErrorFault`` had its
own rate that multiplied the monkey's probability); ``rng.random() < rate`` so rate 0 never injects
(Go tested ``<=``); latency is a cancellable sleep (Go: ``time.Sleep``); the statistics are read
consistently (Go read ``probability`` without its lock). Memory, CPU and disk faults are left out.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar, cast

import anyio
import anyio.lowlevel

from ..core.errors import ResilienceError, not_callable
from ..core.policy import PolicyBase
from ..core.validate import check_name, check_number

__all__ = (
    "Chaos",
    "ChaosInjected",
    "ChaosStatistics",
    "ErrorFault",
    "LatencyFault",
    "ResultFault",
)

P = ParamSpec("P")
T = TypeVar("T")


class ChaosInjected(ResilienceError):
    """The default exception of an :class:`ErrorFault` ("chaos monkey injected error")."""

    def __str__(self) -> str:
        return "chaos monkey injected error"


def _default_error() -> BaseException:
    return ChaosInjected()


@dataclass(frozen=True, slots=True)
class ErrorFault:
    """Raise ``error()`` (a fresh exception per injection) instead of running the operation."""

    error: Callable[[], BaseException] = _default_error
    weight: float = 1.0
    kind: str = field(default="exception", init=False)

    def __post_init__(self) -> None:
        if not callable(self.error):
            raise TypeError("error must be an exception class or a factory returning an exception")


@dataclass(frozen=True, slots=True)
class LatencyFault:
    """Sleep a uniform ``min..max`` seconds (``max=None``: exactly ``min``), then run the operation."""

    min: float
    max: float | None = None
    weight: float = 1.0
    kind: str = field(default="latency", init=False)

    def __post_init__(self) -> None:
        low = check_number(self.min, "min", min_value=0.0)
        if self.max is not None and check_number(self.max, "max", min_value=low) < low:
            raise ValueError("max must be >= min")


@dataclass(frozen=True, slots=True)
class ResultFault:
    """Return ``value`` instead of running the operation."""

    value: Any = None
    weight: float = 1.0
    kind: str = field(default="result", init=False)


Fault = ErrorFault | LatencyFault | ResultFault


@dataclass(frozen=True, slots=True)
class ChaosStatistics:
    """A snapshot: ``checks`` calls seen while enabled, ``injections`` faults injected, by kind."""

    name: str
    enabled: bool
    rate: float
    checks: int
    injections: int
    injections_by_type: dict[str, int]

    @property
    def injection_rate(self) -> float:
        """Injections per check (0.0 before any check)."""
        return self.injections / self.checks if self.checks else 0.0


class Chaos(PolicyBase):
    """Inject faults into a share ``rate`` of calls.

    Args:
        name: the policy's name (metrics, repr).
        rate: the injection rate in [0, 1].
        faults: the faults to pick from, by weight (default: one :class:`ErrorFault`).
        rng: a ``random.Random``, an int seed, or ``None`` (unseeded).
        enabled: a bool, or a zero-argument callable read on every call.

    Raises:
        ValueError, TypeError: for bad configuration, naming the field.
    """

    __slots__ = ("_by_kind", "_checks", "_enabled", "_faults", "_injections", "_name", "_random",
                 "_rate", "_total_weight", "_wake")  # fmt: skip

    def __init__(
        self,
        name: str,
        *,
        rate: float,
        faults: Iterable[Fault] = (ErrorFault(),),
        rng: random.Random | int | None = None,
        enabled: bool | Callable[[], bool] = True,
    ) -> None:
        self._name = check_name(name)
        self._rate = check_number(rate, "rate", min_value=0.0, max_value=1.0)
        self._faults = tuple(faults)
        if not self._faults:
            raise ValueError("faults must not be empty")
        for fault in self._faults:
            if not isinstance(fault, ErrorFault | LatencyFault | ResultFault):
                raise TypeError(f"{fault!r} is not a fault")
            check_number(fault.weight, "weight", min_value=0.0, allow_zero=False)
        self._total_weight = sum(f.weight for f in self._faults)
        if isinstance(rng, bool) or not (rng is None or isinstance(rng, int | random.Random)):
            raise TypeError("rng must be a random.Random, an int seed, or None")
        self._random = (rng if isinstance(rng, random.Random) else random.Random(rng)).random
        self._wake: tuple[object, anyio.Event] | None = None
        self._enabled: bool | Callable[[], bool] = True
        self.enabled = enabled
        self._checks = self._injections = 0
        self._by_kind = {"exception": 0, "latency": 0, "result": 0}

    @property
    def name(self) -> str:
        return self._name

    @property
    def rate(self) -> float:
        """The injection rate."""
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        self._rate = check_number(value, "rate", min_value=0.0, max_value=1.0)

    @property
    def enabled(self) -> bool:
        """Whether injection is on now (reads the callable, if one was given)."""
        flag = self._enabled
        return flag if isinstance(flag, bool) else bool(flag())

    @enabled.setter
    def enabled(self, value: bool | Callable[[], bool]) -> None:
        if not isinstance(value, bool) and not callable(value):
            raise TypeError("enabled must be a bool or a zero-argument callable")
        self._enabled = value
        if value is False:
            self._wake_sleepers()

    def enable(self) -> None:
        """Switch injection on."""
        self.enabled = True

    def disable(self) -> None:
        """Switch injection off, at once: sleeping injected latencies end now."""
        self.enabled = False

    def _wake_sleepers(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None:
            wake[1].set()

    def _pick(self) -> Fault:
        faults = self._faults
        if len(faults) == 1:
            return faults[0]
        point = self._random() * self._total_weight
        for fault in faults:
            point -= fault.weight
            if point < 0:
                return fault
        return faults[-1]

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)``, or inject a fault instead (or a latency before it)."""
        if not callable(fn):
            raise not_callable(fn)
        flag = self._enabled
        if flag is False or (flag is not True and not flag()):
            return await fn(*args, **kwargs)
        self._checks += 1
        if not self._random() < self._rate:
            return await fn(*args, **kwargs)
        fault = self._pick()
        self._injections += 1
        self._by_kind[fault.kind] += 1
        if isinstance(fault, ErrorFault):
            raise fault.error()
        if isinstance(fault, ResultFault):
            return cast(T, fault.value)
        delay = (
            fault.min if fault.max is None else fault.min + (fault.max - fault.min) * self._random()
        )
        # One event per loop wakes every sleeper when chaos is disabled.
        token = anyio.lowlevel.current_token()
        wake = self._wake
        if wake is None or wake[0] != token:
            wake = self._wake = (token, anyio.Event())
        with anyio.move_on_after(delay):
            await wake[1].wait()
        return await fn(*args, **kwargs)

    def statistics(self) -> ChaosStatistics:
        """A consistent snapshot."""
        return ChaosStatistics(
            self._name,
            self.enabled,
            self._rate,
            self._checks,
            self._injections,
            dict(self._by_kind),
        )

    def __repr__(self) -> str:
        state = "on" if self.enabled else "off"
        counts = f"{self._injections}/{self._checks}"
        return f"<Chaos {self._name!r} {state} rate={self._rate:g} injected={counts}>"
