"""The adaptive limit against a backend with a concurrency knee, in virtual time.

The backend (:class:`~dwcp_resilience.testing.KneeBackend`) serves ``KNEE`` = 20 calls at once in
``BASE`` = 0.2 s each; with ``n`` calls in flight above the knee each takes ``BASE * n / KNEE``.
``clients`` tasks call it back to back through the policy for ``SECONDS`` = 40 s of virtual time;
the figures are read over the second half (t >= 20 s), once the limit has settled. The latency is
the backend's (each admitted call's time in the backend); callers beyond the limit wait in the
limiter's queue.

What is asserted, with defaults (``Gradient2()``: tolerance 1.5, queue_size 4):

- the limit settles within ``[KNEE, 2 * KNEE]`` (measured: 35 to 40) whatever the offered
  concurrency above the knee: Gradient2 lets latency rise to ``tolerance`` times its baseline before
  it shrinks the limit (1.5 * KNEE), plus ``queue_size`` (4), plus the slow rise of the averaged
  baseline between two probes (a probe every 60 to 69 s resets it);
- p99 at 3x and 10x the knee is at most 2.1x the p99 below the knee (measured: 2.0x); for
  ``AIMD(latency_threshold=1.5 * BASE)`` the limit settles within ``[KNEE, 1.6 * KNEE]`` (28 to 31)
  and p99 within 1.7x (1.55x);
- a fixed ``Bulkhead(max_concurrent=1000)`` (set too high) lets p99 grow with the offered load:
  at least ``0.9 * BASE * clients / KNEE`` for 50, 100 and 200 clients, 2.5x to 10x above the
  adaptive limit's.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import looptime
import pytest
import trio.testing

from dwcp_resilience import AIMD, AdaptiveConcurrencyLimiter, Bulkhead
from dwcp_resilience.testing import KneeBackend

KNEE = 20
BASE = 0.2
SECONDS = 40.0
SETTLED = SECONDS / 2

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("backend", ["asyncio", "trio"])]


def run_virtual(fn: Callable[[], Awaitable[Any]], backend: str) -> Any:
    """Virtual time; looptime fast-forwards after one idle cycle (its default of 42 costs 40x)."""
    if backend == "trio":
        options: dict[str, Any] = {"clock": trio.testing.MockClock(autojump_threshold=0)}
    else:
        options = {"loop_factory": functools.partial(looptime.new_event_loop, noop_cycles=1)}
    return anyio.run(fn, backend=backend, backend_options=options)


class Run:
    """One scenario's results: the backend's p99 and the limit over the settled half."""

    def __init__(self, policy: Any, clients: int, backend: str) -> None:
        self.service = KneeBackend(KNEE, BASE, jitter=0.05, rng=random.Random(7))
        self.limits: list[int] = []

        async def client() -> None:
            while anyio.current_time() < SECONDS:
                await policy.call(self.service)

        async def sample() -> None:
            while anyio.current_time() < SECONDS:
                if anyio.current_time() >= SETTLED and isinstance(
                    policy, AdaptiveConcurrencyLimiter
                ):
                    self.limits.append(policy.limit)
                await anyio.sleep(0.5)

        async def main() -> None:
            async with anyio.create_task_group() as tg:
                for _ in range(clients):
                    tg.start_soon(client)
                tg.start_soon(sample)

        run_virtual(main, backend)
        self.p99 = self.service.p99(since=SETTLED)


def gradient(clients: int) -> AdaptiveConcurrencyLimiter:
    return AdaptiveConcurrencyLimiter("g2", max_queue=clients, rng=random.Random(1))


def aimd(clients: int) -> AdaptiveConcurrencyLimiter:
    algorithm = AIMD(latency_threshold=1.5 * BASE)
    return AdaptiveConcurrencyLimiter("aimd", algorithm=algorithm, max_queue=clients)


@pytest.mark.parametrize(
    ("make", "limits", "p99_factor"),
    [(gradient, (KNEE, 2 * KNEE), 2.1), (aimd, (KNEE, 1.6 * KNEE), 1.7)],
    ids=["gradient2", "aimd"],
)
def test_the_limit_settles_near_the_knee_and_p99_stays_bounded(
    make: Callable[[int], AdaptiveConcurrencyLimiter],
    limits: tuple[float, float],
    p99_factor: float,
    backend: str,
) -> None:
    below = Run(make(10), 10, backend)
    assert below.p99 <= BASE * 1.05  # jitter only: 10 clients never pass the knee
    for clients in (60, 200):  # 3x and 10x the knee
        over = Run(make(clients), clients, backend)
        low, high = limits
        assert low <= min(over.limits) and max(over.limits) <= high, over.limits
        assert over.p99 <= p99_factor * below.p99, (clients, over.p99, below.p99)
        assert over.service.peak <= max(over.limits) + 10  # only the limit's worth in flight


def test_a_fixed_bulkhead_set_too_high_lets_p99_grow_with_the_load(backend: str) -> None:
    adaptive = Run(gradient(200), 200, backend)
    previous = 0.0
    for clients in (50, 100, 200):
        fixed = Run(Bulkhead("fixed", max_concurrent=1000, max_queue=clients), clients, backend)
        assert fixed.p99 >= 0.9 * BASE * clients / KNEE, (clients, fixed.p99)
        assert fixed.p99 > 1.8 * previous  # doubles with the offered load
        previous = fixed.p99
    assert previous >= 4 * adaptive.p99
