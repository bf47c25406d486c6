"""Health checks: what the :class:`~dwcp_resilience.slo.health.HealthMonitor` runs.

A check is a :class:`HealthCheck` (``name`` plus ``async def check()``). It is **healthy only when it
returns** ``True`` (or a :class:`CheckResult` saying so). :func:`evaluate` turns every other ending
into an unhealthy result with a reason: raised (``"raised KeyError: 'x'"``), ran past its time limit
(``"timed out after 5s"``), returned ``False``, or returned anything else (``None``, ``"ok"``, ``1``:
``"returned garbage: 'ok'"``), because a check that forgets to return must not pass silently.

- :class:`PingCheck`: calls a function (sync or async) that must return ``True``;
- :class:`ThresholdCheck`: a value within ``[min, max]`` (Go's messages: "value 0.50 below minimum
  threshold 1.00"); a value that is not a real number is unhealthy;
- :class:`CompositeCheck`: every sub-check must pass; they run concurrently and the reason lists every
  failing one (Go ran them in sequence and stopped at the first failure).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio

from ..core.validate import check_name, check_number

__all__ = (
    "CheckResult",
    "CompositeCheck",
    "HealthCheck",
    "PingCheck",
    "ThresholdCheck",
    "evaluate",
)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What a check returns: healthy or not, and why not."""

    healthy: bool
    reason: str | None = None


_OK = CheckResult(True)


class HealthCheck:
    """Base of every check: a ``name`` and ``async def check()`` returning ``True``/``False`` or a
    :class:`CheckResult` (anything else, an exception or a timeout is unhealthy)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = check_name(name)

    async def check(self) -> object:
        """Run the check once."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


async def _maybe_await(value: object) -> object:
    if inspect.isawaitable(value):
        return await value
    return value


class PingCheck(HealthCheck):
    """Healthy when ``fn()`` (sync or async) returns ``True``."""

    __slots__ = ("_fn",)

    def __init__(self, name: str, fn: Callable[[], Awaitable[object] | object]) -> None:
        super().__init__(name)
        if not callable(fn):
            raise TypeError("fn must be callable")
        self._fn = fn

    async def check(self) -> object:
        return await _maybe_await(self._fn())


class ThresholdCheck(HealthCheck):
    """Healthy when ``value_fn()`` (sync or async) returns a number in ``[min, max]`` (inclusive).

    ``None`` for a bound means unbounded. A value that is not a real number (``None``, a string, a
    bool, NaN) is unhealthy.
    """

    __slots__ = ("_fn", "max", "min")

    def __init__(
        self,
        name: str,
        value_fn: Callable[[], Awaitable[float] | float],
        min: float | None = None,
        max: float | None = None,
    ) -> None:
        super().__init__(name)
        if not callable(value_fn):
            raise TypeError("value_fn must be callable")
        self._fn = value_fn
        low = -math.inf if min is None else check_number(min, "min", allow_inf=True)
        high = math.inf if max is None else check_number(max, "max", allow_inf=True)
        if low > high:
            raise ValueError(f"min ({low:g}) must be <= max ({high:g})")
        self.min = low
        self.max = high

    async def check(self) -> object:
        value = await _maybe_await(self._fn())
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            return CheckResult(False, f"value is not a number: {value!r:.80}")
        if value < self.min:
            return CheckResult(False, f"value {value:.2f} below minimum threshold {self.min:.2f}")
        if value > self.max:
            return CheckResult(False, f"value {value:.2f} exceeds maximum threshold {self.max:.2f}")
        return _OK


class CompositeCheck(HealthCheck):
    """Healthy when every sub-check is; the sub-checks run concurrently and the reason lists every
    failing one (Go ran them in sequence and reported the first failure only)."""

    __slots__ = ("checks",)

    def __init__(self, name: str, *checks: HealthCheck) -> None:
        super().__init__(name)
        if not checks:
            raise ValueError("CompositeCheck needs at least one check")
        for sub in checks:
            if not isinstance(sub, HealthCheck):
                raise TypeError(f"{sub!r} is not a HealthCheck")
        self.checks = checks

    async def check(self) -> object:
        results: list[CheckResult] = [_OK] * len(self.checks)

        async def one(i: int, sub: HealthCheck) -> None:
            results[i] = await evaluate(sub)

        async with anyio.create_task_group() as tg:
            for i, sub in enumerate(self.checks):
                tg.start_soon(one, i, sub)
        failed = [
            f"{sub.name} failed: {r.reason}"
            for sub, r in zip(self.checks, results, strict=True)
            if not r.healthy
        ]
        return CheckResult(False, "; ".join(failed)) if failed else _OK


def normalise(raw: object) -> CheckResult:
    """Turn what a check returned into a :class:`CheckResult` (garbage is unhealthy)."""
    if raw is True:
        return _OK
    if raw is False:
        return CheckResult(False, "returned False")
    if isinstance(raw, CheckResult):
        return raw
    return CheckResult(
        False, f"returned garbage: {raw!r:.80} (expected True, False or a CheckResult)"
    )


async def evaluate(check: HealthCheck, time_limit: float = math.inf) -> CheckResult:
    """Run ``check`` once within ``time_limit`` seconds; never raises (cancellation from outside
    excepted)."""
    try:
        with anyio.move_on_after(time_limit) as scope:
            raw = await check.check()
        if scope.cancel_called:
            return CheckResult(False, f"timed out after {time_limit:g}s")
    except Exception as exc:
        return CheckResult(False, f"raised {type(exc).__name__}: {exc}"[:200])
    return normalise(raw)
