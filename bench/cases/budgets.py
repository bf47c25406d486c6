"""Recording outcomes into the error budget and the latency budget, per call; and chaos off/idle.

What ``execute_with_all_protections`` adds after the call: one outcome into an
:class:`~dwcp_resilience.slo.error_budget.ErrorBudget` (sliding window, burn-rate windows on) and one
latency into a :class:`~dwcp_resilience.slo.latency_budget.LatencyBudget` (1000-sample window). Both
are O(1) per call; Go bubble-sorted 1000 samples on every read of its latency budget instead.
"""

from __future__ import annotations

import asyncio
from typing import Any

from dwcp_resilience.policies.chaos import Chaos, ChaosInjected
from dwcp_resilience.slo.error_budget import ErrorBudget
from dwcp_resilience.slo.latency_budget import LatencyBudget

from ..harness import Call, Case, Contender, Op


def _budgets() -> tuple[ErrorBudget, LatencyBudget]:
    return (
        ErrorBudget("bench", slo=0.999, window=3600.0),
        LatencyBudget("bench", target=0.1, percentile=95.0, max_samples=1000),
    )


async def both_make(op: Op) -> Call:
    errors, latencies = _budgets()
    record_outcome, record_latency = errors.record, latencies.record
    time = asyncio.get_running_loop().time

    async def run() -> Any:
        start = time()
        try:
            result = await op()
        except Exception:
            record_outcome(False)
            raise
        end = time()
        record_outcome(True, end)  # the end time doubles as the outcome's timestamp
        record_latency(end - start)
        return result

    return run


async def both_verify() -> None:
    errors = ErrorBudget("v", slo=0.9, window=3600.0, min_requests=10)
    latencies = LatencyBudget("v", target=0.001, percentile=50.0, max_samples=1000)
    for i in range(1000):
        errors.record(i % 5 != 0)  # 20 % failures
        latencies.record(0.002 if i % 2 else 0.0)
    assert errors.counts() == (1000, 200), errors.counts()
    assert errors.exhausted
    assert latencies.samples == 1000
    assert latencies.violations == 500
    assert latencies.p99 == 0.002
    assert latencies.exhausted  # p50 = sorted[500] = 0.002 > 1 ms


async def error_only_make(op: Op) -> Call:
    errors, _ = _budgets()
    record = errors.record

    async def run() -> Any:
        result = await op()
        record(True)
        return result

    return run


async def latency_only_make(op: Op) -> Call:
    _, latencies = _budgets()
    record = latencies.record
    time = asyncio.get_running_loop().time

    async def run() -> Any:
        start = time()
        result = await op()
        record(time() - start)
        return result

    return run


async def chaos_disabled_make(op: Op) -> Call:
    chaos = Chaos("bench", rate=0.3, enabled=False)
    call = chaos.call

    async def run() -> Any:
        return await call(op)

    return run


async def chaos_rate_zero_make(op: Op) -> Call:
    chaos = Chaos("bench", rate=0.0, rng=1)
    call = chaos.call

    async def run() -> Any:
        return await call(op)

    return run


async def chaos_verify() -> None:
    async def noop() -> None:
        return None

    chaos = Chaos("v", rate=0.3, rng=1)
    hits = 0
    for _ in range(10_000):
        try:
            await chaos.call(noop)
        except ChaosInjected:
            hits += 1
    assert 2800 < hits < 3200, hits
    chaos.disable()
    await chaos.call(noop)
    assert chaos.statistics().checks == 10_000


CASES = [
    Case(
        key="budgets",
        title="error budget + latency budget recording, per call (no-op callee)",
        contenders=[
            Contender(
                "dwcp_resilience ErrorBudget.record + LatencyBudget.record",
                both_make,
                both_verify,
                ours=True,
            ),
            Contender("dwcp_resilience ErrorBudget.record only", error_only_make, ours=True),
            Contender(
                "dwcp_resilience LatencyBudget.record (+ 2 loop.time reads) only",
                latency_only_make,
                ours=True,
            ),
        ],
        note="Ours only: none of the peers has SLO budgets. Each call reads the loop clock.",
    ),
    Case(
        key="chaos",
        title="chaos policy that injects nothing (no-op callee)",
        contenders=[
            Contender(
                "dwcp_resilience Chaos.call, disabled", chaos_disabled_make, chaos_verify, ours=True
            ),
            Contender(
                "dwcp_resilience Chaos.call, enabled, rate 0", chaos_rate_zero_make, ours=True
            ),
        ],
    ),
]
