"""A small demo of a breaker, a retry and a timeout at work against a flaky service.

``python -m dwcp_resilience demo --basic`` runs it. The service answers in 20 ms, but for a while it
fails most calls and sometimes hangs; the client wraps each call in
``Pipeline(Retry, CircuitBreaker, Timeout)``. Each line shows what one call saw: its result or
error, how many attempts it took, and the breaker's state.
"""

from __future__ import annotations

import random

import anyio

from .core.errors import CircuitOpen, DeadlineExceeded
from .core.policy import Pipeline
from .policies.backoff import ExponentialBackoff
from .policies.breaker import CircuitBreaker
from .policies.retry import Retry
from .policies.timeout import Timeout

__all__ = ("run_basic_demo",)


class FlakyService:
    """Healthy, then broken (fails or hangs), then healthy again, on a fixed schedule."""

    def __init__(self, seed: int, broken_from: float, broken_until: float) -> None:
        self._rng = random.Random(seed)
        self._start = anyio.current_time()
        self._broken = (broken_from, broken_until)
        self.calls = 0

    async def fetch(self, key: str) -> str:
        self.calls += 1
        elapsed = anyio.current_time() - self._start
        await anyio.sleep(0.02)
        if self._broken[0] <= elapsed < self._broken[1]:
            roll = self._rng.random()
            if roll < 0.15:
                await anyio.sleep(10)  # hangs: the timeout cuts it short
            if roll < 0.85:
                raise ConnectionError("service unavailable")
        return f"value-of-{key}"


async def run_basic_demo(
    duration: float = 8.0, *, seed: int = 7, out: object = print
) -> dict[str, int]:
    """Run the demo for ``duration`` seconds; returns the outcome counts."""
    emit = out if callable(out) else print
    service = FlakyService(seed, broken_from=duration * 0.25, broken_until=duration * 0.6)
    breaker = CircuitBreaker(
        "service", max_failures=3, reset_timeout=duration * 0.1, half_open_successes=2
    )
    retry = Retry(
        "service",
        max_retries=2,
        backoff=ExponentialBackoff(initial_delay=0.05, max_delay=0.2, multiplier=2.0),
        retry_on=(ConnectionError, DeadlineExceeded),
    )
    timeout = Timeout(0.25, name="service-call")
    pipeline = Pipeline(retry, breaker, timeout, name="client")
    counts = {"ok": 0, "failed": 0, "rejected": 0, "timed_out": 0}
    start = anyio.current_time()
    index = 0
    while anyio.current_time() - start < duration:
        index += 1
        before = service.calls
        try:
            value = await pipeline.call(service.fetch, f"k{index}")
            outcome = f"ok       {value}"
            counts["ok"] += 1
        except CircuitOpen as exc:
            outcome = f"REJECTED circuit open, retry after {exc.retry_after or 0:.2f}s"
            counts["rejected"] += 1
        except DeadlineExceeded:
            outcome = "TIMEOUT  every attempt ran out of time"
            counts["timed_out"] += 1
        except ConnectionError as exc:
            outcome = f"FAILED   {exc}"
            counts["failed"] += 1
        attempts = service.calls - before
        emit(
            f"{anyio.current_time() - start:5.2f}s call {index:3d}  attempts={attempts}  "
            f"breaker={breaker.state.name:<9}  {outcome}"
        )
        await anyio.sleep(0.05)
    stats = breaker.statistics()
    emit("")
    emit(f"calls: {index}  {counts}")
    emit(f"breaker: {stats!r}")
    return counts
