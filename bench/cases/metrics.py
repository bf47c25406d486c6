"""Metrics: the cost of one scrape with 1000 tracked primitives, and the hot path with metrics on.

``metrics-scrape`` times one scrape (``collect()`` of every family plus ``generate_latest``) of a
registry whose collector tracks 1000 primitives, next to the exposition of the same series kept as
native ``prometheus_client`` metrics (what a push-style instrumentation would have to serialise too).

``metrics-hotpath`` times a breaker call and a retry call untracked, then tracked by a collector
registered in a registry (the rows must not move: tracking touches nothing on the call path; a
scrape's cost is the other case, paid once per scrape interval), and, for reference, the same
breaker call with push-style ``prometheus_client`` updates (a counter and a histogram per call).
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from dwcp_resilience.policies.breaker import CircuitBreaker
from dwcp_resilience.policies.bulkhead import Bulkhead
from dwcp_resilience.policies.chaos import Chaos
from dwcp_resilience.policies.ratelimit import RateLimiter
from dwcp_resilience.policies.retry import Retry
from dwcp_resilience.policies.retry_budget import RetryBudget
from dwcp_resilience.prometheus import ResilienceCollector
from dwcp_resilience.slo.degradation import DegradationManager
from dwcp_resilience.slo.error_budget import ErrorBudget
from dwcp_resilience.slo.latency_budget import LatencyBudget

from ..harness import Call, Case, Contender, Op

PRIMITIVES = 1000
SCRAPES = 5


def _clock() -> float:
    return 0.0


def _mixed(collector: ResilienceCollector, n: int) -> None:
    """``n`` primitives, round-robin over nine kinds (each with a little state)."""
    makers: list[Any] = [
        lambda i: CircuitBreaker(f"breaker-{i}", clock=_clock),
        lambda i: Retry(f"retry-{i}"),
        lambda i: RetryBudget(name=f"retry-budget-{i}", clock=_clock),
        lambda i: RateLimiter(f"limiter-{i}", rate=100.0, burst=10, clock=_clock),
        lambda i: Bulkhead(f"bulkhead-{i}", max_concurrent=10, max_queue=10),
        lambda i: ErrorBudget(f"error-budget-{i}", slo=0.999, clock=_clock),
        lambda i: LatencyBudget(f"latency-budget-{i}", target=0.1),
        lambda i: DegradationManager(f"degradation-{i}", clock=_clock),
        lambda i: Chaos(f"chaos-{i}", rate=0.0),
    ]
    for i in range(n):
        primitive = collector.track(makers[i % len(makers)](i))
        if isinstance(primitive, ErrorBudget):
            for k in range(20):
                primitive.record(k % 7 != 0)
        elif isinstance(primitive, LatencyBudget):
            for k in range(20):
                primitive.record(0.01 * k)


def _ours_registry(mixed: bool) -> CollectorRegistry:
    registry = CollectorRegistry()
    collector = ResilienceCollector(registry=registry, max_label_values=PRIMITIVES)
    if mixed:
        _mixed(collector, PRIMITIVES)
    else:
        for i in range(PRIMITIVES):
            collector.track(CircuitBreaker(f"breaker-{i}", clock=_clock))
    return registry


def _native_registry() -> CollectorRegistry:
    """The series of 1000 breakers as native prometheus_client metrics (pushed, not pulled)."""
    registry = CollectorRegistry()
    state = Gauge("dwcp_circuit_breaker_state", "s", ["name"], registry=registry)
    requests = Counter("dwcp_circuit_breaker_requests", "r", ["name", "result"], registry=registry)
    failures = Counter("dwcp_circuit_breaker_failures", "f", ["name"], registry=registry)
    duration = Histogram(
        "dwcp_circuit_breaker_request_duration_seconds", "d", ["name"], registry=registry
    )
    rate = Gauge("dwcp_circuit_breaker_failure_rate", "r", ["name"], registry=registry)
    slow = Gauge("dwcp_circuit_breaker_slow_call_rate", "r", ["name"], registry=registry)
    for i in range(PRIMITIVES):
        name = f"breaker-{i}"
        state.labels(name).set(0)
        for result in ("success", "failure", "rejected"):
            requests.labels(name, result).inc(0)
        failures.labels(name).inc(0)
        duration.labels(name)
        rate.labels(name).set(0)
        slow.labels(name).set(0)
    return registry


async def _measure_scrape(call: Call) -> float:
    start = time.perf_counter()
    for _ in range(SCRAPES):
        await call()
    return (time.perf_counter() - start) / SCRAPES


def _scrape_maker(build: Any) -> Any:
    async def make(op: Op) -> Call:
        registry = build()

        async def scrape() -> Any:
            return generate_latest(registry)

        return scrape

    return make


def _scrape_verifier(build: Any, family: str, expected: int) -> Any:
    async def verify() -> None:
        text = generate_latest(build()).decode()
        count = sum(1 for line in text.splitlines() if line.startswith(family + "{"))
        assert count == expected, (family, count)

    return verify


async def _verify_mixed_all_kinds() -> None:
    text = generate_latest(_ours_registry(mixed=True)).decode()
    for family in ("circuit_breaker_state", "retry_success_total", "retry_budget_remaining",
                   "rate_limiter_current_rate", "bulkhead_concurrent", "error_budget_remaining",
                   "latency_budget_p95_seconds", "degradation_level", "chaos_enabled"):  # fmt: skip
        assert f"\ndwcp_{family}{{" in text, family


# --- the hot path -------------------------------------------------------------------------------

_KEEP: list[CollectorRegistry] = []  # the registries of tracked rows stay alive while timed


def _tracked(primitive: Any) -> tuple[Any, CollectorRegistry]:
    registry = CollectorRegistry()
    ResilienceCollector(registry=registry).track(primitive)
    return primitive, registry


async def breaker_make(op: Op) -> Call:
    call = CircuitBreaker("hot").call

    async def run() -> Any:
        return await call(op)

    return run


async def breaker_tracked_make(op: Op) -> Call:
    breaker, registry = _tracked(CircuitBreaker("hot"))
    _KEEP.append(registry)
    call = breaker.call

    async def run() -> Any:
        return await call(op)

    return run


async def breaker_tracked_verify() -> None:
    breaker, registry = _tracked(CircuitBreaker("hot"))
    for _ in range(3):
        await breaker.call(_noop)
    value = registry.get_sample_value(
        "dwcp_circuit_breaker_requests_total", {"name": "hot", "result": "success"}
    )
    assert value == 3, value


async def breaker_push_make(op: Op) -> Call:
    registry = CollectorRegistry()
    requests = Counter("requests", "r", ["name", "result"], registry=registry)
    duration = Histogram("duration_seconds", "d", ["name"], registry=registry)
    success = requests.labels("hot", "success")
    observe = duration.labels("hot").observe
    call = CircuitBreaker("hot").call
    perf = time.perf_counter

    async def run() -> Any:
        start = perf()
        result = await call(op)
        success.inc()
        observe(perf() - start)
        return result

    return run


async def retry_make(op: Op) -> Call:
    call = Retry("hot").call

    async def run() -> Any:
        return await call(op)

    return run


async def retry_tracked_make(op: Op) -> Call:
    retry, registry = _tracked(Retry("hot"))
    _KEEP.append(registry)
    call = retry.call

    async def run() -> Any:
        return await call(op)

    return run


async def retry_tracked_verify() -> None:
    retry, registry = _tracked(Retry("hot"))
    for _ in range(4):
        await retry.call(_noop)
    value = registry.get_sample_value("dwcp_retry_success_total", {"policy": "hot"})
    assert value == 4, value


async def _noop() -> None:
    pass


CASES = [
    Case(
        key="metrics-scrape",
        title=f"one scrape (collect + generate_latest) with {PRIMITIVES} tracked primitives",
        note=(
            "Rows are ns per scrape; the ratio is to the first row. The native row holds the same "
            "breaker series as prometheus_client metrics, which a push-style design would update on "
            "every call."
        ),
        include_baseline=False,
        measure=_measure_scrape,
        contenders=[
            Contender(
                f"dwcp_resilience collector, {PRIMITIVES} breakers",
                _scrape_maker(lambda: _ours_registry(mixed=False)),
                _scrape_verifier(
                    lambda: _ours_registry(mixed=False), "dwcp_circuit_breaker_state", PRIMITIVES
                ),
                ours=True,
            ),
            Contender(
                f"dwcp_resilience collector, {PRIMITIVES} mixed primitives (9 kinds)",
                _scrape_maker(lambda: _ours_registry(mixed=True)),
                _verify_mixed_all_kinds,
                ours=True,
            ),
            Contender(
                f"prometheus_client native metrics, same {PRIMITIVES}-breaker series",
                _scrape_maker(_native_registry),
                _scrape_verifier(_native_registry, "dwcp_circuit_breaker_state", PRIMITIVES),
            ),
        ],
    ),
    Case(
        key="metrics-hotpath",
        title="hot path with metrics on: breaker and retry calls, untracked vs tracked",
        note=(
            "Tracked rows: the primitive is tracked by a collector registered in a registry (the "
            "verify scrapes it); the push-style row updates a prometheus_client counter and "
            "histogram per call."
        ),
        contenders=[
            Contender("dwcp_resilience CircuitBreaker.call, untracked", breaker_make, ours=True),
            Contender(
                "dwcp_resilience CircuitBreaker.call, tracked",
                breaker_tracked_make,
                breaker_tracked_verify,
                ours=True,
            ),
            Contender(
                "CircuitBreaker.call + push-style Counter.inc/Histogram.observe", breaker_push_make
            ),
            Contender("dwcp_resilience Retry.call, untracked", retry_make, ours=True),
            Contender(
                "dwcp_resilience Retry.call, tracked",
                retry_tracked_make,
                retry_tracked_verify,
                ours=True,
            ),
        ],
    ),
]
